"""``python -m benchmarks.suites.newcomer``: real ``compress --help`` runs timed into rows that say which CPU they
ran on and whether they meet a target set for that kind of CPU; ``--merge`` keeps earlier rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.suites import newcomer


def _rows(out: Path) -> list[dict]:
    return json.loads(Path(f"{out}.json").read_text())["rows"]


def test_help_rows_are_timed_described_and_merged(tmp_path: Path) -> None:
    out = tmp_path / "n"
    newcomer.main(["--only", "help", "--runs", "2", "--out", str(out)])
    (row,) = _rows(out)
    assert row["task"] == "help" and row["rc"] == 0 and row["runs"] == 2
    assert 0 < row["seconds"] <= row["max_seconds"]
    assert row["tail"] == ["Usage: compress [OPTIONS] COMMAND [ARGS]..."]
    assert row["cpu_kind"] in ("avx512", "avx2", "cpu") and row["cores"] >= 1 and row["cpu_model"]
    assert row["meets"] is (row["seconds"] <= 1.0)  # the --help target holds on any CPU
    assert "| `compress --help` |" in Path(f"{out}.md").read_text()

    newcomer.main(["--only", "help", "--runs", "1", "--out", str(out), "--merge"])
    assert [r["runs"] for r in _rows(out)] == [2, 1]
    newcomer.main(["--only", "help", "--runs", "1", "--out", str(out)])
    assert [r["runs"] for r in _rows(out)] == [1]


@pytest.mark.parametrize(
    ("task", "kind", "seconds", "rc", "want"),
    [
        ("demo", "avx2", 299.0, 0, True),
        ("demo", "avx2", 301.0, 0, False),
        ("test", "avx2", 100.0, 1, False),  # a failed suite meets nothing
        ("test", "avx512", 100.0, 0, None),  # the target is set for AVX2 boxes
        ("help", "cpu", 0.5, 0, True),
        ("help", "avx512", 1.5, 0, False),
    ],
)
def test_a_target_is_judged_only_on_the_cpu_it_is_set_for(task, kind, seconds, rc, want) -> None:
    assert newcomer.meets(task, kind, seconds, rc) is want


def test_the_table_says_where_a_target_does_not_apply() -> None:
    row = {"task": "test", "command": "make test", "seconds": 200.0, "cpu_model": "AMD EPYC", "cpu_kind": "avx512",
           "cores": 2, "load_at_start": 0.1, "date": "2026-12-07", "commit": "abc1234", "rc": 0,
           "summary": "1111 passed, 3 skipped in 190.00s", "target_on": "avx2", "meets": None}  # fmt: skip
    line = newcomer.markdown([row]).splitlines()[-1]
    assert line.endswith("| exit 0; 1111 passed, 3 skipped in 190.00s | (set for avx2) |"), line


def test_bad_runs_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        newcomer.main(["--only", "help", "--runs", "0"])
    assert exc.value.code == 2 and "--runs must be >= 1" in capsys.readouterr().err

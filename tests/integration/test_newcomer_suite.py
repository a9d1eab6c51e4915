"""``python -m benchmarks.suites.newcomer``: real ``compress --help`` runs timed into rows that say which CPU they
ran on and whether they meet a target set for that kind of CPU; ``--merge`` keeps earlier rows."""

from __future__ import annotations

import json
import os
import threading
import time
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
    assert row["cpu_kind"] in ("avx512", "avx2", "cpu") and row["cores"] >= 1 and row["cpu_model"]
    assert row["meets"] is (row["seconds"] <= 1.0)  # the --help target holds on any CPU
    assert "| `compress --help` |" in Path(f"{out}.md").read_text()

    newcomer.main(["--only", "help", "--runs", "1", "--out", str(out), "--merge"])
    assert [r["runs"] for r in _rows(out)] == [2, 1]
    newcomer.main(["--only", "help", "--runs", "1", "--out", str(out)])
    assert [r["runs"] for r in _rows(out)] == [1]


@pytest.mark.parametrize(
    ("task", "kind", "cores", "seconds", "rc", "want"),
    [
        ("demo", "avx2", 2, 299.0, 0, True),
        ("demo", "avx2", 2, 301.0, 0, False),
        ("test", "avx2", 2, 100.0, 1, False),  # a failed suite meets nothing
        ("test", "avx512", 2, 100.0, 0, None),  # the target is set for 2-core AVX2 boxes
        ("test", "avx2", 8, 100.0, 0, None),
        ("help", "cpu", 16, 0.5, 0, True),  # --help: any machine
        ("help", "avx512", 2, 1.5, 0, False),
    ],
)
def test_a_target_is_judged_only_on_the_machine_it_is_set_for(task: str, kind: str, cores: int, seconds: float,
                                                               rc: int, want: bool | None) -> None:  # fmt: skip
    assert newcomer.meets(task, kind, cores, seconds, rc) is want


def test_the_table_says_where_a_target_does_not_apply() -> None:
    row = {"task": "test", "command": "make test", "seconds": 200.0, "cpu_model": "AMD EPYC", "cpu_kind": "avx512",
           "cores": 2, "busy_before": 0.02, "date": "2026-12-07", "commit": "abc1234", "rc": 0,
           "summary": "1111 passed, 3 skipped in 190.00s", "target": {"seconds": 600.0, "on": "2-core avx2"},
           "meets": None}  # fmt: skip
    line = newcomer.markdown([row]).splitlines()[-1]
    assert line.endswith("| 2% | 2026-12-07 | abc1234 | exit 0; 1111 passed, 3 skipped in 190.00s | "
                         "(set for 2-core avx2) |"), line  # fmt: skip


def _spin(until: float) -> None:
    while time.monotonic() < until:
        pass


def test_busy_share_sees_a_busy_cpu() -> None:
    if newcomer.busy_share(0.01) is None:
        pytest.skip("no /proc/stat")
    spin = threading.Thread(target=_spin, args=(time.monotonic() + 0.5,))
    spin.start()
    busy = newcomer.busy_share(0.4)
    spin.join()
    assert busy is not None and busy > 0.5 / (os.cpu_count() or 1), busy  # one core of all of them kept busy


def test_bad_runs_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        newcomer.main(["--only", "help", "--runs", "0"])
    assert exc.value.code == 2 and "--runs must be >= 1" in capsys.readouterr().err


def test_the_newest_demo_table_is_shown() -> None:
    base = {"task": "demo", "command": "make demo", "cpu_model": "AMD EPYC", "cpu_kind": "avx2", "cores": 2,
            "busy_before": 0.0, "commit": "abc1234", "rc": 0, "summary": None,
            "target": {"seconds": 300.0, "on": "2-core avx2"}, "meets": True}  # fmt: skip
    rows = [{**base, "seconds": 170.0, "date": "2026-12-01", "tail": ["│ FLOPs drop │ 49% │"]},
            {**base, "seconds": 160.0, "date": "2026-12-07", "tail": ["│ FLOPs drop │ 50% │"]}]  # fmt: skip
    md = newcomer.markdown(rows)
    assert "newest run (2026-12-07, AMD EPYC, avx2)" in md and "│ FLOPs drop │ 50% │" in md and "49%" not in md

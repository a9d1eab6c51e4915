"""How long a newcomer waits: ``compress --help``, ``make demo`` and ``make test``, timed on this machine.

    python -m benchmarks.suites.newcomer --merge                 # all three (~5 min on 2 AVX-512 cores)
    python -m benchmarks.suites.newcomer --merge --only help demo

Each runs as a user runs it, from the repository root, after the one-time set-up (``make .venv/.installed``,
not timed). The targets: ``compress --help`` within 1 s anywhere; ``make demo`` within 5 min and ``make test``
within 10 min on a 2-core AVX2 box. AVX-512 boxes train 2-4x faster (and ``make test`` uses up to 4 cores),
so a row is judged only on the machine its target names. Every row records the CPU (model, kind, cores), how
busy the CPU was in the 2 s before the command (time on a quiet machine), the date and the commit; ``--merge``
keeps the rows of earlier runs, so runs on other machines add up in ``benchmarks/results/newcomer.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from compressor.runtime.atomic import write_json, write_text

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


class Target(NamedTuple):
    """What a command is timed against, and the machine that target is set for (None: any)."""

    command: str
    seconds: float
    kind: str | None = None
    cores: int | None = None

    def where(self) -> str:
        return "any CPU" if self.kind is None else f"{self.cores}-core {self.kind}"


TARGETS = {
    "help": Target("compress --help", 1.0),
    "demo": Target("make demo", 300.0, "avx2", 2),
    "test": Target("make test", 600.0, "avx2", 2),
}


def _timed(cmd: list[str]) -> tuple[float, int, str]:
    """Wall seconds, exit code and combined output of ``cmd`` run from the repository root."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return time.perf_counter() - t0, proc.returncode, proc.stdout


def busy_share(seconds: float = 2.0) -> float | None:
    """The share of the machine's CPU time spent busy over ``seconds`` (from ``/proc/stat``; None elsewhere):
    measured just before a command, it says whether the machine was quiet, as a load average lagging a minute
    behind cannot."""

    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return sum(values), values[3] + values[4]  # all, idle + iowait

    try:
        (all0, idle0), _, (all1, idle1) = sample(), time.sleep(seconds), sample()
    except (OSError, ValueError):
        return None
    return round(1 - (idle1 - idle0) / max(all1 - all0, 1), 3)


def machine() -> dict[str, Any]:
    """The CPU a row was timed on: model name, kind (``avx512``, ``avx2``, ``cpu``) and usable cores."""
    from benchmarks.latency import environment
    from compressor.runtime.hardware import cpu_kind

    info = environment(need_gpu=False)["cpu"]
    return {"cpu_model": info.get("model_name", info["processor"]), "cpu_kind": cpu_kind(),
            "cores": info.get("usable_cpus", info["cpu_count"])}  # fmt: skip


def meets(task: str, kind: str, cores: int, seconds: float, rc: int) -> bool | None:
    """Whether a row meets its target; None where the target is set for another machine."""
    target = TARGETS[task]
    if target.kind is not None and (kind, cores) != (target.kind, target.cores):
        return None
    return rc == 0 and seconds <= target.seconds


def run_task(task: str, runs: int) -> dict[str, Any]:
    """Time ``task`` (``help``: ``runs`` times, the median): seconds, exit code, and for the make targets the
    pytest summary and the last lines printed."""
    if task == "help":
        exe = shutil.which("compress", path=str(Path(sys.executable).parent)) or shutil.which("compress")
        if exe is None:
            sys.exit("error: no compress executable beside this Python or on the PATH (make .venv/.installed)")
        timed = [_timed([exe, "--help"]) for _ in range(runs)]
        return {"seconds": statistics.median(t for t, _, _ in timed), "max_seconds": max(t for t, _, _ in timed),
                "runs": runs, "rc": max((c for _, c, _ in timed), key=abs)}  # fmt: skip
    seconds, rc, out = _timed(["make", task])
    lines = out.replace(str(ROOT), ".").rstrip().splitlines()
    summary = next((ln.strip("= ") for ln in reversed(lines) if re.search(r"\d+ (passed|failed)", ln)), None)
    return {"seconds": seconds, "rc": rc, "summary": summary, "tail": lines[-12:]}


def _row(task: str, runs: int, where: dict[str, Any]) -> dict[str, Any]:
    target = TARGETS[task]
    row = {"task": task, "command": target.command, **where, "busy_before": busy_share(),
           "date": datetime.date.today().isoformat(), **run_task(task, runs),
           "target": {"seconds": target.seconds, "on": target.where()}}  # fmt: skip
    row["meets"] = meets(task, row["cpu_kind"], row["cores"], row["seconds"], row["rc"])
    return row


def _commit() -> str | None:
    """The checkout's commit (``+changes``: with uncommitted changes), read before this run writes its results."""
    done = subprocess.run(["git", "describe", "--always", "--dirty=+changes"], cwd=ROOT, capture_output=True,
                          text=True)  # fmt: skip
    return done.stdout.strip() or None


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as one Markdown table, by task, then CPU kind, then date."""
    lines = ["# How long a newcomer waits", "", "`python -m benchmarks.suites.newcomer --merge`: each command "
             "run as a user runs it, after the one-time set-up (not timed). Targets: `compress --help` ≤ 1 s; "
             "`make demo` ≤ 5 min and `make test` ≤ 10 min on a 2-core AVX2 box. *Busy before*: the share of "
             "the CPU in use in the 2 s before the command (0: quiet).", "",
             "| command | seconds | CPU | kind | cores | busy before | date | commit | result | meets target |",
             "|---|---:|---|---|---:|---:|---|---|---|---|"]  # fmt: skip
    order = list(TARGETS)
    for r in sorted(rows, key=lambda r: (order.index(r["task"]), r["cpu_kind"], r["date"])):
        result = r.get("summary") or (f"median of {r['runs']} (max {r['max_seconds']:.2f} s)" if "runs" in r else "")
        result = f"exit {r['rc']}" + (f"; {result}" if result else "")
        busy = "" if r["busy_before"] is None else f"{r['busy_before']:.0%}"
        verdict = {True: "yes", False: "**no**", None: f"(set for {r['target']['on']})"}[r["meets"]]
        lines.append(f"| `{r['command']}` | {r['seconds']:.2f} | {r['cpu_model']} | {r['cpu_kind']} | {r['cores']} | "
                     f"{busy} | {r['date']} | {r['commit']} | {result} | {verdict} |")  # fmt: skip
    demos = [r for r in rows if r["task"] == "demo" and r.get("tail")]
    if demos:  # what the demo showed, as it printed it
        last = max(demos, key=lambda r: r["date"])
        lines += ["", f"The demo's table, newest run ({last['date']}, {last['cpu_model']}, {last['cpu_kind']}):", "",
                  "```", *last["tail"], "```"]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Time the chosen commands; write each row as it comes."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=list(TARGETS), default=list(TARGETS), help="what to time")
    ap.add_argument("--runs", type=int, default=5, help="compress --help runs (the median is reported)")
    ap.add_argument("--merge", action="store_true", help="keep the rows already in the results file")
    ap.add_argument("--out", type=Path, default=RESULTS / "newcomer", help="results path, without .json/.md")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be >= 1")
    done = Path(f"{args.out}.json")
    rows = json.loads(done.read_text())["rows"] if args.merge and done.exists() else []
    if {"demo", "test"} & set(args.only):  # else make would set up inside the timed command
        setup = subprocess.run(["make", ".venv/.installed"], cwd=ROOT, capture_output=True, text=True)
        if setup.returncode != 0:
            sys.exit(f"error: the one-time set-up failed (make .venv/.installed):\n{setup.stdout}{setup.stderr}")
    where = {**machine(), "commit": _commit()}
    for task in args.only:
        rows.append(_row(task, args.runs, where))
        print(f"{rows[-1]['command']}: {rows[-1]['seconds']:.2f} s, exit {rows[-1]['rc']}", flush=True)
        write_json(done, {"rows": rows})
        write_text(Path(f"{args.out}.md"), markdown(rows))


if __name__ == "__main__":
    main()

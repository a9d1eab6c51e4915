"""A module fixture's work done once per test run, however many pytest-xdist workers take its tests.

pytest-xdist runs a module-scoped fixture in every worker that gets one of the module's tests, and ``--dist
worksteal`` spreads a large module over all of them: an expensive fixture then runs once per worker. Here the
first worker to ask computes the result under a file lock and leaves it as JSON, named with the run's id, beside
the workers' temporary directories; the others read it (or the one-line error it failed with).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

from compressor.runtime.atomic import write_text


def once(factory: pytest.TempPathFactory, name: str, make: Callable[[Path], Any]) -> Any:
    """``make(directory)``'s result (JSON-able), computed once in this run and read back as JSON by every caller.

    Outside xdist there is nothing to share, so the result is computed here. Where ``make`` raises, the workers
    that asked later fail with its error instead of running it again.
    """
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run:
        return json.loads(json.dumps(make(factory.mktemp(name))))
    result = factory.getbasetemp().parent / f"{name}-{run}.json"
    with FileLock(f"{result}.lock"):
        if result.exists():
            got = json.loads(result.read_text())
            if "error" in got:
                pytest.fail(f"{name}, computed by another worker, failed: {got['error']}")
            return got["value"]
        try:
            value = json.loads(json.dumps(make(factory.mktemp(name))))
        except Exception as exc:
            write_text(result, json.dumps({"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}))
            raise
        write_text(result, json.dumps({"value": value}))
        return value

"""A module fixture's work done once per test run, however many pytest-xdist workers take its tests.

pytest-xdist runs a module-scoped fixture in every worker that gets one of the module's tests, and ``--dist
worksteal`` spreads a large module over all of them: an expensive fixture then runs once per worker. The
workers of one run share the parent of their temporary directories (``pytest-N/popen-gw0``, ``popen-gw1``, …):
the first worker to ask computes the result under a file lock and leaves it there as JSON; the others read it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock


def once(factory: pytest.TempPathFactory, name: str, make: Callable[[Path], Any]) -> Any:
    """``make(directory)``'s result (JSON-able), computed once in this run and read back as JSON by every caller.

    Outside xdist there is nothing to share (and the temporary directories' parent holds earlier runs), so the
    result is computed here. A ``make`` that raises leaves nothing behind: the next worker tries again.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return json.loads(json.dumps(make(factory.mktemp(name))))
    result = factory.getbasetemp().parent / f"{name}.json"
    with FileLock(f"{result}.lock"):
        if not result.exists():
            tmp = result.with_suffix(".tmp")
            tmp.write_text(json.dumps(make(factory.mktemp(name))))
            tmp.replace(result)
        return json.loads(result.read_text())

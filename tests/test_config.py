"""Option bookkeeping: what --resume may change is one explicit list, everything else is fixed."""

from __future__ import annotations

from dataclasses import fields

from compressor.pipeline import RESUME_FIXED, RESUME_FREE, PruneConfig


def test_every_option_is_resume_fixed_unless_declared_free() -> None:
    names = {f.name for f in fields(PruneConfig)}
    assert set(RESUME_FREE) <= names, set(RESUME_FREE) - names  # no stale names
    assert set(RESUME_FIXED) == names - set(RESUME_FREE)
    for new in ("distill", "materialize_early", "psap_variant", "aster_variant", "prune_at", "allocation_from"):
        assert new in RESUME_FIXED, new

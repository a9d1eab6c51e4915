"""Option bookkeeping: what --resume may change is one explicit list, everything else is fixed."""

from __future__ import annotations

from dataclasses import fields

from compressor.jobs.prune import RESUME_FIXED, RESUME_FREE, PruneConfig


def test_every_option_is_resume_fixed_unless_declared_free() -> None:
    names = {f.name for f in fields(PruneConfig)}
    assert set(RESUME_FREE) <= names, set(RESUME_FREE) - names  # no stale names
    assert set(RESUME_FIXED) == names - set(RESUME_FREE)
    for new in ("distill", "materialize_early", "psap_variant", "aster_variant", "prune_at", "allocation_from"):
        assert new in RESUME_FIXED, new


def test_method_option_defaults_agree_with_the_methods() -> None:
    """A psap_*/aster_* default in PruneConfig is the default of the method's own option (None: "from the
    variant", resolved by the method)."""
    import inspect

    from compressor.methods.aster import ASTER
    from compressor.methods.psap import PSAP

    defaults = {f.name: f.default for f in fields(PruneConfig)}
    for prefix, cls in (("psap_", PSAP), ("aster_", ASTER)):
        params = inspect.signature(cls.__init__).parameters
        for name, value in defaults.items():
            if name.startswith(prefix) and name[len(prefix):] in params:
                assert params[name[len(prefix):]].default == value, name
    shared = {"max_prune_fraction": ASTER}
    for name, cls in shared.items():
        assert inspect.signature(cls.__init__).parameters[name].default == defaults[name], name

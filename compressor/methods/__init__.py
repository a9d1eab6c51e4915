"""Pruning methods: one registry of factories, each called with every method option; it takes what it uses."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from compressor.errors import BadInput
from compressor.methods.base import Context, Method
from compressor.methods.baselines import ImportanceBaseline
from compressor.methods.psap import PSAP


def _accepting(cls: type[Method], *args: object) -> Callable[..., Method]:
    """A factory passing on only the keyword options ``cls`` takes (methods share one option namespace)."""
    params = inspect.signature(cls.__init__).parameters
    return lambda **kw: cls(*args, **{k: v for k, v in kw.items() if k in params})  # type: ignore[call-arg]


METHODS: dict[str, Callable[..., Method]] = {
    "psap": _accepting(PSAP),
    **{name: _accepting(ImportanceBaseline, name) for name in ("l1", "l2", "bn-scale", "taylor", "random")},
}


def build_method(name: str, **kwargs: object) -> Method:
    if name not in METHODS:
        raise BadInput(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    try:
        return METHODS[name](**kwargs)
    except ValueError as exc:
        raise BadInput(str(exc)) from None


__all__ = ["METHODS", "Context", "Method", "build_method"]

"""Pruning methods: one registry of factories, each called with every method option; it takes what it uses."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from compressor.errors import BadInput
from compressor.methods.aster import ASTER
from compressor.methods.base import Context, Method
from compressor.methods.baselines import ImportanceBaseline
from compressor.methods.psap import PSAP


def _accepting(cls: type[Method], *args: object) -> Callable[..., Method]:
    """A factory passing on only the keyword options ``cls`` takes (methods share one option namespace)."""
    params = inspect.signature(cls.__init__).parameters

    def factory(**kw: object) -> Method:
        return cls(*args, **{k: v for k, v in kw.items() if k in params})  # type: ignore[call-arg]

    bound = list(params)[1 : 1 + len(args)]  # after self: the positional arguments the factory fixes
    factory.parameters = frozenset(p for p in params if p != "self" and p not in bound)  # type: ignore[attr-defined]
    return factory


METHODS: dict[str, Callable[..., Method]] = {
    "psap": _accepting(PSAP),
    "aster": _accepting(ASTER),
    **{name: _accepting(ImportanceBaseline, name) for name in ("l1", "l2", "bn-scale", "taylor", "random")},
}


def method_parameters(name: str) -> frozenset[str]:
    """The option names method ``name`` takes."""
    return getattr(METHODS.get(name), "parameters", frozenset())


def build_method(name: str, **kwargs: object) -> Method:
    if name not in METHODS:
        raise BadInput(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    try:
        return METHODS[name](**kwargs)
    except ValueError as exc:
        raise BadInput(str(exc)) from None


__all__ = ["METHODS", "Context", "Method", "build_method", "method_parameters"]

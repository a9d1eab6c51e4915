"""Pruning methods: one registry of factories, uniform signature ``factory(steps=..., seed=...)``."""

from __future__ import annotations

from collections.abc import Callable

from compressor.errors import BadInput
from compressor.methods.base import Context, Method
from compressor.methods.baselines import ImportanceBaseline

METHODS: dict[str, Callable[..., Method]] = {
    name: (lambda n: lambda **kw: ImportanceBaseline(n, **kw))(name)
    for name in ("l1", "l2", "bn-scale", "taylor", "random")
}


def build_method(name: str, **kwargs: object) -> Method:
    if name not in METHODS:
        raise BadInput(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name](**kwargs)


__all__ = ["METHODS", "Context", "Method", "build_method"]

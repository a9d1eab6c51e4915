"""One registry of method factories. A factory takes the shared options and its method's own options (the
dataclass in ``compressor.methods.options``); ``method_parameters`` names them all."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import fields

from compressor.config import BASELINES
from compressor.errors import BadInput
from compressor.methods.aster import ASTER
from compressor.methods.base import Context, Method
from compressor.methods.baselines import ImportanceBaseline
from compressor.methods.options import METHOD_OPTIONS
from compressor.methods.psap import PSAP


def _accepting(cls: type[Method], *args: object, options: type | None = None) -> Callable[..., Method]:
    """A factory of ``cls`` with ``args`` fixed; its ``parameters`` name the options it takes (:func:`build_method`
    refuses any other, so the factory passes them on as they are)."""
    signature = inspect.signature(cls.__init__).parameters
    params = {p for p, v in signature.items() if v.kind is not v.VAR_KEYWORD}
    own = {f.name for f in fields(options)} if options else set()

    def factory(**kw: object) -> Method:
        return cls(*args, **kw)  # type: ignore[call-arg]

    bound = list(signature)[1 : 1 + len(args)]  # the arguments the factory fixes
    factory.parameters = frozenset((params | own) - {"self", *bound})  # type: ignore[attr-defined]
    return factory


METHODS: dict[str, Callable[..., Method]] = {
    "psap": _accepting(PSAP, options=METHOD_OPTIONS["psap"]),
    "aster": _accepting(ASTER, options=METHOD_OPTIONS["aster"]),
    **{name: _accepting(ImportanceBaseline, name) for name in BASELINES},
}


def method_parameters(name: str) -> frozenset[str]:
    """The option names method ``name`` takes."""
    return getattr(METHODS.get(name), "parameters", frozenset())


def options_for(name: str, options: dict[str, object]) -> dict[str, object]:
    """The part of a shared option namespace (``PruneConfig.method_options()``) that method ``name`` takes."""
    return {k: v for k, v in options.items() if k in method_parameters(name)}


def build_method(name: str, **kwargs: object) -> Method:
    """Method ``name`` with its options; an unknown name, an option it does not take or a bad value is BadInput
    (nothing is silently dropped: narrow a shared namespace with :func:`options_for` first)."""
    if name not in METHODS:
        raise BadInput(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    unknown = sorted(set(kwargs) - method_parameters(name))
    if unknown:
        raise BadInput(f"method {name!r} has no option {unknown[0]!r}; its options: "
                       f"{', '.join(sorted(method_parameters(name))) or 'none'}")  # fmt: skip
    try:
        return METHODS[name](**kwargs)
    except ValueError as exc:
        raise BadInput(str(exc)) from None


__all__ = ["METHODS", "Context", "Method", "build_method", "method_parameters", "options_for"]

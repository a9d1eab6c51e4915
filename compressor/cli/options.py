"""Click options generated from the option dataclasses (``compressor.config``, ``compressor.methods.options``):
name, type, default, help and choices are written once, there."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import click

from compressor.config import int_or_auto, option_kind


class _IntOrAuto(click.ParamType):
    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return int_or_auto(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not an integer or 'auto'", param, ctx)


_TYPES: dict[str, Any] = {"int": int, "float": float, "str": str, "int | str": _IntOrAuto()}


def click_option(f: dataclasses.Field) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The click option of one field: ``--name-with-dashes``; bools as flags, lists/dicts repeatable."""
    m = f.metadata
    name = m.get("cli") or "--" + f.name.replace("_", "-")
    required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    kw: dict[str, Any] = {"help": m.get("help") or None, "metavar": m.get("metavar")}
    kind = option_kind(f)
    if kind == "bool" and m.get("flag") == "plain":
        return click.option(name, f.name, is_flag=True, **kw)
    if kind == "bool":
        off = m.get("off") or "--no-" + name[2:]
        return click.option(f"{name}/{off}", f.name, default=f.default, show_default=f.default is not None, **kw)
    if kind in ("list", "dict"):
        return click.option(name, f.name, multiple=True, **kw)
    choices = m.get("choices")
    kw["type"] = click.Choice(list(choices)) if choices else _TYPES[kind]
    if required:
        return click.option(name, f.name, required=True, **kw)
    show = m.get("show_default", True) and f.default is not None
    return click.option(name, f.name, default=f.default, show_default=show, **kw)


def click_options(cls: type, *, only: Iterable[str] | None = None,
                  skip: Iterable[str] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:  # fmt: skip
    """A decorator adding one click option per field of the dataclass ``cls`` (in field order)."""
    keep, drop = (set(only) if only is not None else None), set(skip)
    chosen = [f for f in dataclasses.fields(cls) if (keep is None or f.name in keep) and f.name not in drop]

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for f in reversed(chosen):
            fn = click_option(f)(fn)
        return fn

    return decorate

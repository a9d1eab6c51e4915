"""The CLI reference (``docs/cli-reference.md``), generated from the click commands, which are generated from
the option dataclasses. Regenerate: ``python -m compressor.cli.reference docs/cli-reference.md``; a test holds
the committed file equal to this output."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import click

from benchmarks.bench_output import md_cell

HEADER = """# CLI reference

Generated from the option definitions (`compressor/config.py`, `compressor/methods/options.py`) by
`python -m compressor.cli.reference docs/cli-reference.md`; do not edit by hand. The guide is [cli.md](cli.md).
Every option can also come from a YAML recipe (`--config`, key with `_` or `-`); the command line wins.
"""


def _default(p: click.Option) -> str:
    if p.required:
        return "required"
    if p.is_flag and not p.secondary_opts:
        return "off"
    if p.multiple or p.default is None or not isinstance(p.default, (bool, int, float, str)):
        return ""
    if isinstance(p.default, bool):
        return "on" if p.default else "off"
    return f"`{p.default}`"


def _option_name(p: click.Option, ctx: click.Context) -> str:
    names = " / ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
    metavar = "" if p.is_flag else p.make_metavar(ctx)
    return f"{names} {md_cell(metavar)}".strip()


def render(group: click.Group) -> str:
    """Markdown: one section per command, its usage, its one-paragraph help and a table of its options."""
    out = [HEADER]
    root = click.Context(group, info_name="compress")
    for name in sorted(group.commands):
        cmd = group.commands[name]
        ctx = click.Context(cmd, info_name=name, parent=root)
        usage = " ".join(cmd.collect_usage_pieces(ctx))
        help_text = inspect.cleandoc((cmd.help or "").replace("\b\n", ""))
        out += [f"## compress {name}", "", f"`compress {name} {usage}`", ""]
        out += [help_text, "", "| option | default | meaning |", "|---|---|---|"]
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden:
                out.append(f"| {_option_name(p, ctx)} | {_default(p)} | {md_cell(p.help or '')} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    from compressor.cli import main as cli

    text = render(cli)
    args = sys.argv[1:] if argv is None else argv
    if args:
        Path(args[0]).write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()

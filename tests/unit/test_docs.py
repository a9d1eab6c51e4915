"""The README and docs/: relative links resolve inside the repository, anchors match headings, no link to
``../shared``, the README stays short, and the commands and recipes in code blocks use options that exist."""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
FILES = [README, *DOCS]
MAX_README_LINES = 300

FENCE = re.compile(r"^\s*(```|~~~)")
# [text](target) or ![alt](target), with an optional "title"; the text may hold `code` but no brackets.
LINK = re.compile(r"!?\[([^\[\]]*)\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = ("http://", "https://", "mailto:")


def _ids(files: list[Path]) -> list[str]:
    return [str(f.relative_to(ROOT)) for f in files]


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fenced = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((n, line))
    return out


def _code_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced code block."""
    blocks, lang, body, fenced = [], "", [], False
    for line in text.splitlines():
        m = FENCE.match(line)
        if m and not fenced:
            fenced, lang, body = True, line.strip()[3:].strip(), []
        elif m:
            fenced = False
            blocks.append((lang, "\n".join(body)))
        elif fenced:
            body.append(line)
    return blocks


def slug(heading: str) -> str:
    """GitHub's heading anchor: lowercase, drop punctuation except '-' and '_', spaces to '-'."""
    text = LINK.sub(lambda m: m.group(1), heading)  # a link in a heading anchors on its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file (repeated headings get -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every Markdown link outside code blocks."""
    return [(n, m.group(2)) for n, line in _prose_lines(path.read_text(encoding="utf-8")) for m in LINK.finditer(line)]


def test_slug_matches_github() -> None:
    assert slug("Multi-process training (torchrun)") == "multi-process-training-torchrun"
    assert slug("Crash safety (kill, resume, SIGINT)") == "crash-safety-kill-resume-sigint"
    assert slug("`prune` options") == "prune-options"
    assert slug("Support matrix and limits") == "support-matrix-and-limits"
    assert slug("snake_case and 3×3 convs") == "snake_case-and-33-convs"


def test_there_are_docs() -> None:
    names = {p.name for p in DOCS}
    assert {"README.md", "cli.md", "export.md", "bench.md", "run-directory.md", "crash-safety.md",
            "distributed.md", "methods.md", "protocol.md"} <= names  # fmt: skip


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES}): move text to docs/"


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_no_link_to_shared(path: Path) -> None:
    hits = [n for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if "../shared" in line]
    assert not hits, f"{path.relative_to(ROOT)} mentions ../shared on line(s) {hits}"


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_no_link_leaves_the_repository(path: Path) -> None:
    """The docs a user reads are all in the repository: no web link (a name or a package is fine as text)."""
    external = [(n, t) for n, t in links(path) if t.lower().startswith(EXTERNAL)]
    assert not external, f"{path.relative_to(ROOT)}: links that leave the repository: {external}"


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_relative_links_resolve(path: Path) -> None:
    problems = []
    for n, target in links(path):
        if not target or target.lower().startswith(EXTERNAL):
            continue
        file_part, _, anchor = target.partition("#")
        where = f"{path.relative_to(ROOT)}:{n}: ({target})"
        if not file_part:  # (#anchor): a heading of this file
            if anchor not in anchors(path):
                problems.append(f"{where}: no heading with anchor #{anchor}")
            continue
        resolved = (path.parent / file_part).resolve()
        if not resolved.is_relative_to(ROOT):
            problems.append(f"{where}: leaves the repository")
        elif not resolved.exists():
            problems.append(f"{where}: {resolved.relative_to(ROOT)} does not exist")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{where}: {resolved.relative_to(ROOT)} has no heading with anchor #{anchor}")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------ commands and recipes in code blocks

COMMAND = re.compile(r"(?:^|[\s;&|(]|\$ )compress\s+(prune|export|bench|run|info)\b(.*)")


def _command_lines(text: str) -> list[tuple[str, str]]:
    """(subcommand, the rest of its command line) for every `compress SUB ...` in a code block."""
    out = []
    for _, body in _code_blocks(text):
        joined = re.sub(r"\\\n\s*", " ", body)
        for line in joined.splitlines():
            line = re.sub(r"^\s*(-\s*)?run:\s*", "", line)  # a GitHub Actions step
            for m in COMMAND.finditer(line):
                rest = re.split(r"\s#|&&|\|\||;|\|", m.group(2))[0]
                out.append((m.group(1), rest))
    return out


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_commands_use_existing_options(path: Path) -> None:
    from compressor.cli import main

    problems = []
    for sub, rest in _command_lines(path.read_text(encoding="utf-8")):
        command = main.commands[sub]
        known = {"--help", "-h", "--debug"}
        for param in command.params:
            known |= set(param.opts) | set(param.secondary_opts)
        for token in shlex.split(rest, comments=False):
            if token.startswith("--") and token.split("=", 1)[0] not in known:
                problems.append(f"compress {sub}: no option {token.split('=', 1)[0]}")
    assert not problems, f"{path.relative_to(ROOT)}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_recipes_use_existing_keys(path: Path) -> None:
    from compressor.jobs.bench import BENCH_DEFAULTS
    from compressor.jobs.config import PruneConfig
    from compressor.jobs.run import EXPORT_KEYS, QUANTIZE_KEYS

    allowed = {
        "prune": {f.name for f in dataclasses.fields(PruneConfig)},
        "export": set(EXPORT_KEYS),
        "quantize": set(QUANTIZE_KEYS),
        "bench": set(BENCH_DEFAULTS),
    }
    problems = []
    for lang, body in _code_blocks(path.read_text(encoding="utf-8")):
        if lang not in ("yaml", "yml"):
            continue
        data = yaml.safe_load(body)
        if not isinstance(data, dict) or "prune" not in data:
            continue  # not a compress recipe (e.g. a CI workflow)
        for section, keys in data.items():
            if section not in allowed:
                problems.append(f"unknown recipe section {section!r}")
                continue
            unknown = {str(k).replace("-", "_") for k in keys or {}} - allowed[section]
            problems += [f"{section}: unknown key {k!r}" for k in sorted(unknown)]
    assert not problems, f"{path.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_cli_reference_is_generated_from_the_option_definitions() -> None:
    """docs/cli-reference.md is the output of `python -m compressor.cli.reference` (regenerate it after an
    option change)."""
    from compressor.cli import main
    from compressor.cli.reference import render

    committed = (ROOT / "docs" / "cli-reference.md").read_text()
    assert committed == render(main), "stale: run python -m compressor.cli.reference docs/cli-reference.md"

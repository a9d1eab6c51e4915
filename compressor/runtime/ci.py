"""CI integration: GitHub Actions' job summary (``$GITHUB_STEP_SUMMARY``)."""

from __future__ import annotations

import os
import sys

from compressor.errors import one_line


def append_step_summary(markdown: str) -> bool:
    """Append ``markdown`` to the file ``$GITHUB_STEP_SUMMARY`` names, when it is set (GitHub Actions sets it
    per step); a write failure is one note on stderr, never the command's failure. True when appended."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return False
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(markdown.rstrip("\n") + "\n\n")
    except OSError as exc:
        print(f"note: could not append the summary to $GITHUB_STEP_SUMMARY ({path}): {one_line(exc)}", file=sys.stderr)
        return False
    return True

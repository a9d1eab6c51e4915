"""Errors the CLI maps to exit codes: BadInput -> 2, GateFailed -> 1."""

from __future__ import annotations


class BadInput(Exception):
    """The user gave something we cannot use (exit code 2, one line, no traceback)."""


class GateFailed(Exception):
    """A check the user asked for did not pass: verification, target, speedup (exit code 1)."""

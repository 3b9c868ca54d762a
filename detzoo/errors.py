"""Exceptions a user can cause, each mapped to one exit code by the CLI.

Library code raises these; only ``detzoo.cli`` turns them into an exit status and a one-line
message (no traceback), in the spirit of Polygraphy's single user-error type.

Owns: the error types, their exit codes and one-line messages. Does not touch: printing or
exiting (``detzoo.cli``).
"""

from __future__ import annotations


class DetzooError(Exception):
    """Bad input: a path, file, option or manifest the user gave is not what was expected (exit 2)."""

    exit_code = 2


class CheckFailed(DetzooError):
    """A measured check failed: parity out of tolerance, accuracy budget broken, drift (exit 1)."""

    exit_code = 1


class InternalError(Exception):
    """A failure that is not the user's: detzoo's own bug or a tool it drives crashing (exit 3).

    The CLI prints one line and writes the traceback (of this error and its cause) to a log file."""

    exit_code = 3


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message, or its type name when it has none."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0][:limit] if lines else type(e).__name__


def expect(condition: bool, message: str) -> None:
    """Raise ``DetzooError(message)`` unless ``condition``; used instead of ``assert`` on user input."""
    if not condition:
        raise DetzooError(message)

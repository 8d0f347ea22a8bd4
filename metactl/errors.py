"""Errors a user can cause: one clear line, exit code 1, no traceback."""

from __future__ import annotations


class MetactlError(Exception):
    """A problem the user can fix.

    ``message`` says what is wrong (and which file); ``hint`` says what to do.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message

"""Exceptions that the command line reports as one line (`ext5: error: ...`, exit 2)."""
from __future__ import annotations


class UsageError(ValueError):
    """Bad command-line input or arguments: the message names the problem and the fix."""


class UnknownTaskError(ValueError):
    """A mixture or task name that is not registered with seqio."""

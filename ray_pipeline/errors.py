"""The project's own error type for input a user can fix.

The CLI prints these as one line (exit code 2). Any other exception, a ValueError from a library
or a bug included, keeps its type and points at --verbose for the traceback (exit code 1).
"""

from __future__ import annotations


class UserError(ValueError):
    """Input the user can fix: the message names the field, row, file or setting at fault.

    A ValueError, so pydantic validators may raise it and callers catching ValueError still do.
    """

"""Secret comparison shared by the serving API key and the console's token."""

from __future__ import annotations

import hmac


def same_secret(given: str | None, expected: str) -> bool:
    """Whether `given` equals `expected`, in time that does not depend on where they differ."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())

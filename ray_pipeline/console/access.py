"""Who may see and do what in the console.

No token configured: read-only pages, and only for clients on the loopback address. A token
(`console.token_env`): every page needs it, from the login form's HTTP-only cookie or an
`Authorization: Bearer` header; every action needs it and a CSRF token in the form. Secrets are
compared in constant time (ray_pipeline/auth.py)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

from fastapi import Request

from ray_pipeline.auth import same_secret

COOKIE = "rp_console"


class Denied(Exception):
    """The request may not see the page or do the action; `status` and a message for people."""

    def __init__(self, status: int, message: str, login: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.login = status, message, login


def _derived(token: str, purpose: str) -> str:
    # The cookie and the CSRF field hold values derived from the token, never the token itself.
    return hmac.new(token.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def _loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass(frozen=True)
class Access:
    """The console's access rule, from the operator token (None: not configured)."""

    token: str | None

    @property
    def session_value(self) -> str:
        """What the login cookie holds."""
        assert self.token is not None
        return _derived(self.token, "session")

    def csrf(self) -> str:
        """The CSRF token forms carry ('' without an operator token: there are no actions then)."""
        return _derived(self.token, "csrf") if self.token else ""

    def signed_in(self, request: Request) -> bool:
        """Whether the request carries the token (cookie or Authorization header)."""
        if self.token is None:
            return False
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer ") and same_secret(header[7:].strip(), self.token):
            return True
        return same_secret(request.cookies.get(COOKIE), self.session_value)

    def check_page(self, request: Request) -> None:
        """Raise Denied unless the request may read pages."""
        if self.token is None:
            if not _loopback(request):
                raise Denied(403, "this console has no operator token (console.token_env), so it answers "
                                  "only on the loopback address")  # fmt: skip
            return
        if not self.signed_in(request):
            raise Denied(401, "sign in with the operator token", login=True)

    def check_action(self, request: Request, form: dict[str, str]) -> None:
        """Raise Denied unless the request may change state: the token, and the form's CSRF token."""
        if self.token is None:
            raise Denied(403, "actions need an operator token: set console.token_env and the variable it names")
        if not self.signed_in(request):
            raise Denied(401, "actions need the operator token")
        if not same_secret(form.get("csrf"), self.csrf()):
            raise Denied(403, "missing or wrong CSRF token: reload the page and try again")

    def login(self, given: str) -> bool:
        """Whether a token typed into the login form is the operator token."""
        return self.token is not None and same_secret(given, self.token)

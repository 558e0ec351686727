"""Who is using the console, and CSRF protection for its forms.

Sign-in keeps the API key in an HttpOnly, SameSite=Strict cookie (Secure over HTTPS); every
request authenticates it against the keys document, as the API does with a header, so any
replica serves any page and a removed key is out at once. Without configured keys everyone
is ``anonymous`` (an admin), as in the API.

CSRF: a random token in a cookie of its own, repeated by every POST in the ``X-CSRF-Token``
header or a ``csrf`` form field (the double-submit pattern); SameSite=Strict already keeps
other sites' requests from carrying the session, this also covers old browsers.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Final

from fastapi import Request, Response

from relaygraph.api.auth import ANONYMOUS, Principal
from relaygraph.api.deps import ApiContext

__all__ = [
    "CSRF_COOKIE",
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "check_csrf",
    "csrf_token",
    "forget",
    "remember",
    "signed_in",
]

SESSION_COOKIE: Final = "relaygraph_session"
CSRF_COOKIE: Final = "relaygraph_csrf"
CSRF_HEADER: Final = "X-CSRF-Token"
SESSION_MAX_AGE: Final = 12 * 3600


def signed_in(request: Request, ctx: ApiContext) -> Principal | None:
    """The principal of the request's session cookie (None: not signed in)."""
    if not ctx.keys.enabled:
        return ANONYMOUS
    key = request.cookies.get(SESSION_COOKIE)
    return ctx.keys.authenticate(key) if key else None


def remember(request: Request, response: Response, key: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        key,
        max_age=SESSION_MAX_AGE,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


def forget(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")


def csrf_token(request: Request, response: Response) -> str:
    """The request's CSRF token, set as a cookie on ``response`` when it has none yet."""
    token = request.cookies.get(CSRF_COOKIE)
    if not token or len(token) != 43:
        token = secrets.token_urlsafe(32)
        response.set_cookie(
            CSRF_COOKIE,
            token,
            httponly=True,  # the page carries it in a meta tag; scripts need not read cookies
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
    return token


def check_csrf(request: Request, form_value: str | None) -> bool:
    """Whether a POST repeats its CSRF cookie (header or form field), in constant time."""
    cookie = request.cookies.get(CSRF_COOKIE)
    sent = request.headers.get(CSRF_HEADER) or form_value
    if not cookie or not sent:
        return False
    return hmac.compare_digest(cookie.encode(), sent.encode())

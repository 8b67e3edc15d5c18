"""The request being served, for audit entries recorded anywhere beneath it.

The HTTP layer binds each request (:func:`bind`) at the top of its handling coroutine;
Twisted runs every coroutine in its own copy of the context, so code awaited from there
(a UIA stage, a handler) sees that request's IP, user agent, requester and request id,
and concurrent requests never see each other's.
"""

from __future__ import annotations

import secrets
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RequestContext:
    request_id: str
    # The ApiRequest (duck-typed: ``client`` and ``requester``), read when recording so
    # the requester set after authentication is seen.
    request: Any


_current: ContextVar[RequestContext | None] = ContextVar("parley_audit_request", default=None)


def new_request_id() -> str:
    return secrets.token_hex(8)


def bind(request: Any, request_id: str | None = None) -> str:
    """Make ``request`` the current one for this coroutine; returns its request id."""
    rid = request_id or new_request_id()
    _current.set(RequestContext(rid, request))
    return rid


def current() -> RequestContext | None:
    return _current.get()

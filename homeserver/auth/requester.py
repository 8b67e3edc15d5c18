"""Who is making a request, as established from a verified access token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Requester:
    user_id: str
    device_id: str | None
    session_id: str
    is_guest: bool = False
    token_id: str = ""


@dataclass(frozen=True)
class ClientInfo:
    """Where a request came from; recorded in security events and device last-seen."""

    ip: str
    user_agent: str


class Authenticator(Protocol):
    """Turns a bearer token into a Requester or raises a 401 MatrixError."""

    async def authenticate(self, token: str, client: ClientInfo) -> Requester: ...

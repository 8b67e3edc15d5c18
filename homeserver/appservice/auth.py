"""``as_token`` authentication: an application service's token authenticates it as
its sender user or, with ``?user_id=``, as a user in its namespace (masquerading).

It wraps the token authenticator: a bearer token equal to a registration's
``as_token`` is the service; anything else goes on to the JWT checks. The masqueraded
user must exist (the AS registers it first) and not be deactivated, so its privileges
are those of its stored account, never assumed.

With ``?device_id=`` (MSC4326; ``org.matrix.msc3202.device_id`` as Synapse names it) the
service also acts as one of that user's devices, which must exist (400
``M_UNKNOWN_DEVICE`` otherwise): end-to-end encryption and to-device messages work per
device, as they do for a logged-in client.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from homeserver.appservice.config import ApplicationService
from homeserver.audit import context as audit_context
from homeserver.auth.requester import Authenticator, ClientInfo, Requester
from homeserver.http.errors import Codes, MatrixError
from storage.stores.devices import DeviceStore
from storage.stores.users import UserStore

DEVICE_PARAMS = ("device_id", "org.matrix.msc3202.device_id")


@dataclass(frozen=True)
class AppserviceRequester(Requester):
    """A request made with an application service's token."""

    app_service_id: str = ""


def app_service_of(requester: Requester | None) -> str | None:
    """The id of the application service making the request, or None."""
    if isinstance(requester, AppserviceRequester):
        return requester.app_service_id
    return None


def request_token(raw: Any) -> str | None:
    """The bearer token of a raw request (header, else ``access_token`` query), for
    routes that authenticate nobody yet look for an ``as_token`` (/register, /login)."""
    header = raw.getHeader("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None
    values = raw.args.get(b"access_token")
    return values[0].decode("utf-8", "replace") if values else None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class AppserviceTokens:
    """as_token → service, looked up by digest and compared in constant time."""

    def __init__(self, services: list[ApplicationService]) -> None:
        self._by_digest = {_digest(s.as_token): s for s in services}

    def find(self, token: str | None) -> ApplicationService | None:
        if not token:
            return None
        svc = self._by_digest.get(_digest(token))
        if svc is not None and hmac.compare_digest(svc.as_token.encode(), token.encode()):
            return svc
        return None


class AppserviceAuthenticator:
    def __init__(self, inner: Authenticator, tokens: AppserviceTokens, users: UserStore,
                 devices: DeviceStore) -> None:
        self._inner = inner
        self._tokens = tokens
        self._users = users
        self._devices = devices

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def authenticate(self, token: str, client: ClientInfo) -> Requester:
        svc = self._tokens.find(token)
        if svc is None:
            return await self._inner.authenticate(token, client)
        ctx = audit_context.current()
        request = ctx.request if ctx is not None else None
        wanted = request.query("user_id") if request is not None and hasattr(
            request, "query") else None
        user_id = await self.masquerade(svc, wanted)
        device_id = None
        if request is not None and hasattr(request, "query"):
            device_id = next((d for d in (request.query(p) for p in DEVICE_PARAMS) if d),
                             None)
        if device_id is not None:
            if len(device_id) > 255 or await self._devices.get_device(user_id,
                                                                      device_id) is None:
                raise MatrixError(400, "Application service trying to use a device that "
                                  "does not exist", Codes.UNKNOWN_DEVICE)
        return AppserviceRequester(user_id=user_id, device_id=device_id,
                                   session_id=f"appservice:{svc.id}", app_service_id=svc.id)

    async def masquerade(self, svc: ApplicationService, wanted: str | None) -> str:
        """The user a request of ``svc`` acts as: its sender, or ``wanted`` when that
        user is in its namespace and registered (403 otherwise)."""
        if not wanted or wanted == svc.sender:
            return svc.sender
        if not svc.is_interested_in_user(wanted):
            raise MatrixError(403, "Application service cannot masquerade as this user",
                              Codes.EXCLUSIVE)
        user = await self._users.get_user(wanted)
        if user is None or user.deactivated:
            raise MatrixError(403, "Application service has not registered this user",
                              Codes.FORBIDDEN)
        return wanted

"""Registration-token admin API, compatible with Synapse's ``/_synapse/admin/v1/registration_tokens``.

Admins create tokens that gate sign-up when ``registration.requires_token`` is set; the
client side (the ``m.login.registration_token`` UIA stage and the validity endpoint)
lives in :mod:`homeserver.rest.client.register`.

Behaviour follows Synapse (1.163), with these deliberate differences:

* Error messages never echo a token (Synapse puts it in "Token already exists: ..." and
  "No such registration token: ..."); error strings end up in logs.
* Generated tokens come from :mod:`secrets`, not :mod:`random`.
* Integers must be JSON integers, not booleans, and are bounded (``uses_allowed`` fits
  the 32-bit column, ``expiry_time`` the JSON-safe range) so a huge number is a 400,
  not a database error.

Every create, update and delete is recorded as an ``admin_action`` security event. The
token itself is not put in the event: it is a credential that grants sign-up.
"""

from __future__ import annotations

import secrets
import string
from typing import Any

from homeserver.clock import Clock
from homeserver.handlers.admin_actions import RegistrationTokenAdmin
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router
from homeserver.http.server import ApiRequest
from homeserver.rest.admin._auth import AdminAuth, admin_paths
from storage.stores.registration_tokens import RegistrationTokenStore

# Synapse's alphabet: the URL "unreserved" characters, so tokens need no escaping.
TOKEN_CHARS = string.ascii_letters + string.digits + "._~-"
_TOKEN_CHAR_SET = frozenset(TOKEN_CHARS)
MAX_TOKEN_LENGTH = 64
DEFAULT_TOKEN_LENGTH = 16
MAX_USES_ALLOWED = 2**31 - 1  # registration_tokens.uses_allowed is a 32-bit INTEGER
MAX_TIMESTAMP_MS = 2**53 - 1  # largest integer JSON (and canonical JSON) carries exactly


def _invalid(msg: str) -> MatrixError:
    return MatrixError(400, msg, Codes.INVALID_PARAM)


def _not_found() -> MatrixError:
    return MatrixError(404, "No such registration token", Codes.NOT_FOUND)


def _is_int(value: Any) -> bool:
    # bool is a subclass of int; true/false are not counts or timestamps.
    return type(value) is int


def parse_uses_allowed(value: Any) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or value < 0:
        raise _invalid("uses_allowed must be a non-negative integer or null")
    if value > MAX_USES_ALLOWED:
        raise _invalid(f"uses_allowed must not be greater than {MAX_USES_ALLOWED}")
    return int(value)


def parse_expiry_time(value: Any, now_ms: int) -> int | None:
    if value is None:
        return None
    if not _is_int(value):
        raise _invalid("expiry_time must be an integer or null")
    if value < now_ms:
        raise _invalid("expiry_time must not be in the past")
    if value > MAX_TIMESTAMP_MS:
        raise _invalid("expiry_time is too large")
    return int(value)


def parse_token(value: Any) -> str:
    if not isinstance(value, str):
        raise _invalid("token must be a string")
    if not 0 < len(value) <= MAX_TOKEN_LENGTH:
        raise _invalid(
            f"token must not be empty and must not be longer than {MAX_TOKEN_LENGTH} characters"
        )
    if not set(value) <= _TOKEN_CHAR_SET:
        raise _invalid("token must consist only of characters matched by the regex [A-Za-z0-9._~-]")
    return value


def parse_length(value: Any) -> int:
    if not _is_int(value):
        raise _invalid("length must be an integer")
    if not 0 < value <= MAX_TOKEN_LENGTH:
        raise _invalid(f"length must be greater than zero and not greater than {MAX_TOKEN_LENGTH}")
    return int(value)


def could_be_token(value: str) -> bool:
    """Whether a token with this name could exist (every stored token passed
    :func:`parse_token`). Anything else is answered 404 without a query, which also
    keeps NUL and other oddities in a path away from the database."""
    return 0 < len(value) <= MAX_TOKEN_LENGTH and set(value) <= _TOKEN_CHAR_SET


def generate_token(length: int) -> str:
    return "".join(secrets.choice(TOKEN_CHARS) for _ in range(length))


class RegistrationTokenServlets:
    # Retries if a generated token collides with an existing one (only plausible for
    # very short lengths).
    GENERATE_ATTEMPTS = 5

    def __init__(
        self,
        store: RegistrationTokenStore,
        admin_auth: AdminAuth,
        clock: Clock,
        tokens: RegistrationTokenAdmin,
    ) -> None:
        self._store = store
        self._admin = admin_auth
        self._clock = clock
        self._tokens = tokens

    def register(self, router: Router) -> None:
        router.add("GET", admin_paths("/registration_tokens"), self.on_list)
        router.add("POST", admin_paths("/registration_tokens/new"), self.on_new, json_body=True)
        router.add("GET", admin_paths("/registration_tokens/{token}"), self.on_get)
        router.add("PUT", admin_paths("/registration_tokens/{token}"), self.on_put,
                   json_body=True)
        router.add("DELETE", admin_paths("/registration_tokens/{token}"), self.on_delete)

    async def on_list(self, req: ApiRequest) -> tuple[int, Any]:
        await self._admin.require_admin(req)
        valid = req.query_bool("valid") if req.query("valid") is not None else None
        tokens = await self._store.list(valid, self._clock.time_msec())
        return 200, {"registration_tokens": [t.to_json() for t in tokens]}

    async def on_get(self, req: ApiRequest, token: str) -> tuple[int, Any]:
        await self._admin.require_admin(req)
        found = await self._store.get(token) if could_be_token(token) else None
        if found is None:
            raise _not_found()
        return 200, found.to_json()

    async def on_new(self, req: ApiRequest) -> tuple[int, Any]:
        requester = await self._admin.require_admin(req)
        body: dict[str, Any] = req.body
        now = self._clock.time_msec()

        given = "token" in body
        token = parse_token(body["token"]) if given else None
        length = DEFAULT_TOKEN_LENGTH if given else parse_length(body.get("length", DEFAULT_TOKEN_LENGTH))
        uses_allowed = parse_uses_allowed(body.get("uses_allowed"))
        expiry_time = parse_expiry_time(body.get("expiry_time"), now)

        candidates = [token if token is not None else generate_token(length)
                      for _ in range(1 if given else self.GENERATE_ATTEMPTS)]
        created = await self._tokens.create(requester, candidates, not given, uses_allowed,
                                            expiry_time, now)
        if created is None:
            if given:
                raise _invalid("Token already exists")
            # Only when nearly every token of a tiny length is taken: the caller can fix it.
            raise _invalid("Could not generate an unused token of that length; use a greater length")
        token = created
        return 200, {"token": token, "uses_allowed": uses_allowed, "pending": 0, "completed": 0,
                     "expiry_time": expiry_time}

    async def on_put(self, req: ApiRequest, token: str) -> tuple[int, Any]:
        requester = await self._admin.require_admin(req)
        body: dict[str, Any] = req.body
        changes: dict[str, int | None] = {}
        if "uses_allowed" in body:
            changes["uses_allowed"] = parse_uses_allowed(body["uses_allowed"])
        if "expiry_time" in body:
            changes["expiry_time"] = parse_expiry_time(body["expiry_time"], self._clock.time_msec())

        if not could_be_token(token):
            raise _not_found()
        # Like Synapse, nothing to change just returns the token.
        updated = await self._tokens.update(requester, token, changes)
        if updated is None:
            raise _not_found()
        return 200, updated.to_json()

    async def on_delete(self, req: ApiRequest, token: str) -> tuple[int, Any]:
        requester = await self._admin.require_admin(req)
        if not could_be_token(token) or not await self._tokens.delete(requester, token):
            raise _not_found()
        return 200, {}

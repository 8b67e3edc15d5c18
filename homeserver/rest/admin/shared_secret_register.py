"""Shared-secret registration, compatible with Synapse's ``/_synapse/admin/v1/register``.

Used to bootstrap accounts (typically the first admin) without open registration:
``GET`` hands out a single-use nonce valid for 60 s; ``POST`` creates the account if
``mac`` is the hex HMAC-SHA1, keyed with ``registration.shared_secret``, of::

    nonce \\0 username \\0 password \\0 ("admin" | "notadmin") [\\0 user_type]

so Synapse's ``register_new_matrix_user`` and other tools work unchanged.

Behaviour follows Synapse (1.163) except where noted:

* The endpoint is off unless ``registration.shared_secret`` is set; then both methods
  answer 400 M_UNKNOWN "Shared secret registration is not enabled" (Synapse still hands
  out nonces on ``GET`` in that case, which serves no purpose).
* The password policy is not enforced, as in Synapse: the caller holds the shared
  secret and is the operator. Empty passwords are refused, though.
* A wrong MAC is 403 M_FORBIDDEN (Synapse: 403 M_UNKNOWN) and is recorded as a failed
  ``register`` security event. The nonce is consumed by any ``POST`` that names it, so
  one nonce allows one guess.
* ``user_type`` is part of the MAC, but Parley has no user types yet, so a non-null
  ``user_type`` is refused (400 M_INVALID_PARAM) rather than silently dropped.
* ``admin`` must be a boolean if given (Synapse accepts any JSON value's truthiness).
* The MAC is checked before the password is hashed, so unauthenticated requests cost
  no Argon2 work.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from typing import Any

from homeserver.clock import Clock
from homeserver.handlers.devices import DeviceHandler
from homeserver.handlers.registration import RegistrationHandler
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router
from homeserver.http.server import ApiRequest
from homeserver.rest.admin._auth import admin_paths
from storage.stores.profiles import ProfileStore

NONCE_LIFETIME_S = 60.0
# Bounds memory if someone floods GET; legitimate use needs one nonce at a time.
MAX_OUTSTANDING_NONCES = 10_000
MAX_USERNAME_LENGTH = 512
MAX_PASSWORD_LENGTH = 512
MAX_DISPLAYNAME_LENGTH = 256


def compute_mac(
    secret: str, nonce: str, username: str, password: str, admin: bool, user_type: str | None = None
) -> str:
    """The MAC a caller must send: Synapse's exact byte layout."""
    mac = hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha1)
    mac.update(nonce.encode("utf-8"))
    mac.update(b"\x00")
    mac.update(username.encode("utf-8"))
    mac.update(b"\x00")
    mac.update(password.encode("utf-8"))
    mac.update(b"\x00")
    mac.update(b"admin" if admin else b"notadmin")
    if user_type:
        mac.update(b"\x00")
        mac.update(user_type.encode("utf-8"))
    return mac.hexdigest()


class NonceStore:
    """Single-use nonces with a lifetime, held in this process's memory.

    Deliberately not in the database: a nonce lives for a minute and only matters to
    the process that issued it. A multi-worker deployment must therefore route
    ``/_synapse/admin/v1/register`` to one worker (Synapse has the same requirement).
    Time comes from the injected :class:`Clock` so tests can expire nonces.
    """

    def __init__(
        self,
        clock: Clock,
        lifetime_s: float = NONCE_LIFETIME_S,
        max_outstanding: int = MAX_OUTSTANDING_NONCES,
    ) -> None:
        self._clock = clock
        self._lifetime = lifetime_s
        self._max = max_outstanding
        # Insertion order is issue order, so expired nonces are always at the front.
        self._nonces: OrderedDict[str, float] = OrderedDict()

    def issue(self) -> str:
        self._expire()
        while len(self._nonces) >= self._max:
            self._nonces.popitem(last=False)
        nonce = secrets.token_hex(64)
        self._nonces[nonce] = self._clock.time()
        return nonce

    def consume(self, nonce: str) -> bool:
        """True if the nonce was issued, is unexpired and unused; it is used up either way."""
        self._expire()
        return self._nonces.pop(nonce, None) is not None

    def __len__(self) -> int:
        return len(self._nonces)

    def _expire(self) -> None:
        cutoff = self._clock.time() - self._lifetime
        while self._nonces:
            nonce, issued = next(iter(self._nonces.items()))
            if issued >= cutoff:
                break
            del self._nonces[nonce]


def _clean_text(value: Any, max_length: int) -> bool:
    """A non-empty string that can be stored and MAC'd: UTF-8 encodable (JSON allows lone
    surrogates), and without NUL, which separates the MAC's fields and which PostgreSQL
    text cannot hold."""
    if not isinstance(value, str) or not 0 < len(value) <= max_length or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _bad(msg: str, errcode: str = Codes.UNKNOWN) -> MatrixError:
    return MatrixError(400, msg, errcode)


class SharedSecretRegisterServlet:
    def __init__(
        self,
        shared_secret: str | None,
        clock: Clock,
        registration: RegistrationHandler,
        devices: DeviceHandler,
        profiles: ProfileStore,
    ) -> None:
        self._secret = shared_secret
        self._registration = registration
        self._devices = devices
        self._profiles = profiles
        self.nonces = NonceStore(clock)

    def __repr__(self) -> str:  # never show the secret
        return f"<SharedSecretRegisterServlet enabled={self._secret is not None}>"

    def register(self, router: Router) -> None:
        # auth="none": the MAC is the authentication; an access token is ignored.
        router.add("GET", admin_paths("/register"), self.on_get, auth="none")
        router.add("POST", admin_paths("/register"), self.on_post, auth="none", json_body=True)

    def _require_enabled(self) -> str:
        if not self._secret:
            raise _bad("Shared secret registration is not enabled")
        return self._secret

    async def on_get(self, req: ApiRequest) -> tuple[int, Any]:
        self._require_enabled()
        return 200, {"nonce": self.nonces.issue()}

    async def on_post(self, req: ApiRequest) -> tuple[int, Any]:
        secret = self._require_enabled()
        body: dict[str, Any] = req.body

        if "nonce" not in body:
            raise _bad("nonce must be specified", Codes.BAD_JSON)
        nonce = body["nonce"]
        # Consumed before anything else is checked, so a nonce allows one attempt only.
        if not isinstance(nonce, str) or not self.nonces.consume(nonce):
            raise _bad("unrecognised nonce")

        username = body.get("username")
        if "username" not in body:
            raise _bad("username must be specified", Codes.BAD_JSON)
        if not _clean_text(username, MAX_USERNAME_LENGTH):
            raise _bad("Invalid username", Codes.INVALID_USERNAME)

        password = body.get("password")
        if "password" not in body:
            raise _bad("password must be specified", Codes.BAD_JSON)
        if not _clean_text(password, MAX_PASSWORD_LENGTH):
            raise _bad("Invalid password", Codes.INVALID_PARAM)

        admin = body.get("admin")
        if admin is not None and not isinstance(admin, bool):
            raise _bad("admin must be a boolean", Codes.BAD_JSON)
        admin = bool(admin)

        user_type = body.get("user_type")
        if user_type is not None and not _clean_text(user_type, MAX_USERNAME_LENGTH):
            raise _bad("Invalid user type", Codes.INVALID_PARAM)

        displayname = body.get("displayname")
        if displayname not in (None, "") and not _clean_text(displayname, MAX_DISPLAYNAME_LENGTH):
            raise _bad("Invalid displayname", Codes.INVALID_PARAM)

        want_refresh = body.get("refresh_token", False)
        if not isinstance(want_refresh, bool):
            raise _bad("refresh_token must be a boolean", Codes.BAD_JSON)

        got_mac = body.get("mac")
        if "mac" not in body:
            raise _bad("mac must be specified", Codes.BAD_JSON)
        if not isinstance(got_mac, str):
            raise _bad("mac must be a string", Codes.BAD_JSON)
        want_mac = compute_mac(secret, nonce, username, password, admin, user_type)
        # "replace": a MAC that is not even UTF-8 encodable is simply wrong, not a 500.
        if not hmac.compare_digest(want_mac.encode("ascii"), got_mac.encode("utf-8", "replace")):
            await self._registration.record_registration(
                "failure", reason="shared-secret MAC mismatch",
                details={"via": "shared_secret", "admin": admin})
            raise MatrixError(403, "HMAC incorrect", Codes.FORBIDDEN)

        # Only an authenticated caller gets this far, so it is told precisely.
        if user_type is not None:
            raise _bad("user_type is not supported by this server", Codes.INVALID_PARAM)

        # Synapse lower-cases the localpart (the MAC covers the name as sent).
        localpart = username.lower()
        user_id = await self._registration.create_account(
            localpart, password, is_admin=admin, enforce_policy=False
        )
        await self._profiles.set_displayname(user_id, displayname or localpart)
        await self._registration.record_registration(
            "success", user_id, details={"via": "shared_secret", "admin": admin})

        device_id, tokens = await self._devices.login_device(
            user_id, None, None, want_refresh, req.client, via="shared_secret_register")
        out: dict[str, Any] = {
            "user_id": user_id,
            "home_server": self._registration.server_name,
            "device_id": device_id,
        }
        out.update(tokens.to_json())
        return 200, out

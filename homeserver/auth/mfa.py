"""Two-factor login with TOTP (RFC 6238, computed by pyotp) and recovery codes.

What this module guarantees, whoever calls it (the UIA stage, the /login second
step, the enrolment endpoints):

- a code is accepted at most once: its time-step must be newer than the last one
  accepted for the user, and the check and the update are one guarded UPDATE;
- a recovery code works once: matched against Argon2id hashes, then spent by a
  guarded UPDATE, so of two concurrent uses only one succeeds;
- wrong codes lock the user out for a while (doubling each time), checked before any
  code is looked at, so guessing during a lockout learns nothing. The lockout state is
  in Redis when a ``redis`` section is configured, so every worker enforces it
  (homeserver/detection/shared_state.py), else (or while Redis is down) in process memory;
- every failure, lockout and MFA change is a security event.
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import pyotp

from homeserver.audit import context as audit_context
from homeserver.auth.mfa_config import MfaConfig
from homeserver.auth.passwords import PasswordHasher
from homeserver.auth.ratelimit import limit_exceeded
from homeserver.auth.requester import Authenticator, ClientInfo, Requester
from homeserver.auth.ui_auth import RECOVERY_CODE, TOTP
from homeserver.clock import Clock
from homeserver.detection.shared_state import SharedCodeLockout
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.http.errors import Codes, MatrixError
from storage.stores.mfa import MfaStore
from storage.stores.users import UserStore

TOTP_STAGE = TOTP
RECOVERY_STAGE = RECOVERY_CODE
MFA_REQUIRED = "ORG_PARLEY_MFA_REQUIRED"

DIGITS = 6
PERIOD_S = 30
# Steps either side of now that are accepted (clock drift between phone and server).
VALID_WINDOW = 1
RECOVERY_CODE_COUNT = 10
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i
_RECOVERY_GROUPS = 3
_RECOVERY_GROUP_LEN = 4
# An enrolment must be confirmed within this time, or started again.
PENDING_LIFETIME_MS = 15 * 60 * 1000
_STATUS_CACHE_S = 10.0
_MAX_TRACKED = 100_000


def normalise_recovery_code(code: str) -> str:
    """Case, spaces and dashes do not matter when typing a recovery code."""
    return "".join(c for c in code.lower() if c not in " -")


def new_recovery_code() -> str:
    groups = ("".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(_RECOVERY_GROUP_LEN))
              for _ in range(_RECOVERY_GROUPS))
    return "-".join(groups)


def matching_step(secret: str, code: str, now_s: float) -> int | None:
    """The time-step whose code ``code`` is, within the accepted window, or None."""
    if len(code) != DIGITS or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=PERIOD_S)
    current = int(now_s // PERIOD_S)
    for step in sorted(range(current - VALID_WINDOW, current + VALID_WINDOW + 1),
                       key=lambda s: abs(s - current)):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


@dataclass
class _Failures:
    count: int = 0
    lockouts: int = 0
    locked_until: float = 0.0


class CodeLockout:
    """Wrong second-factor codes per user: after ``max_failures`` in a row the user is
    locked out for ``lockout_s``, doubling with each further lockout up to
    ``max_lockout_s``. A right code resets it."""

    def __init__(self, clock: Clock, config: MfaConfig) -> None:
        self._clock = clock
        self._config = config
        self._users: OrderedDict[str, _Failures] = OrderedDict()

    def check(self, user_id: str) -> None:
        """Raise 429 ``M_LIMIT_EXCEEDED`` (with ``retry_after_ms``) while locked out."""
        state = self._users.get(user_id)
        if state is not None:
            wait = state.locked_until - self._clock.time()
            if wait > 0:
                raise limit_exceeded(wait, "mfa")

    def failed(self, user_id: str) -> float | None:
        """Count one wrong code; returns the lockout (seconds) it starts, if any."""
        state = self._users.pop(user_id, None) or _Failures()
        self._users[user_id] = state
        while len(self._users) > _MAX_TRACKED:
            self._users.popitem(last=False)
        state.count += 1
        if state.count < self._config.max_failures:
            return None
        duration = min(self._config.max_lockout_s,
                       self._config.lockout_s * (2 ** min(state.lockouts, 30)))
        state.count = 0
        state.lockouts += 1
        state.locked_until = self._clock.time() + duration
        return duration

    def succeeded(self, user_id: str) -> None:
        self._users.pop(user_id, None)


class MfaHandler:
    def __init__(
        self,
        config: MfaConfig,
        server_name: str,
        clock: Clock,
        store: MfaStore,
        users: UserStore,
        hasher: PasswordHasher,
        events: SecurityEventRecorder,
    ) -> None:
        self.config = config
        self._issuer = config.issuer or server_name
        self._clock = clock
        self._store = store
        self._users = users
        self._hasher = hasher
        self._events = events
        self.lockout = CodeLockout(clock, config)
        # The same lockout, in Redis when configured (homeserver/detection/shared_state.py,
        # wired by homeserver/detection/setup.py); else this process's ``lockout``.
        self.shared_lockout = SharedCodeLockout(self.lockout, clock, config)
        # user id -> (expiry, must enrol): for the mfa.required gate on every request.
        self._gate_cache: OrderedDict[str, tuple[float, bool]] = OrderedDict()

    # -- queries -------------------------------------------------------------

    async def is_enrolled(self, user_id: str) -> bool:
        return await self._store.is_enabled(user_id)

    async def status(self, user_id: str) -> dict[str, Any]:
        state = await self._store.get_totp(user_id)
        enabled = state is not None and state.enabled
        return {
            "totp": {"enabled": enabled},
            "enabled": enabled,
            "recovery_codes_left": (await self._store.count_unused_recovery_codes(user_id)
                                    if enabled else 0),
            "required": await self._required_for(user_id),
        }

    async def must_enrol(self, user_id: str) -> bool:
        """True if ``mfa.required`` covers this user and they have no MFA yet (cached
        for a few seconds; MFA changes made here clear the entry at once)."""
        if self.config.required == "none":
            return False
        now = self._clock.time()
        hit = self._gate_cache.get(user_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        result = await self._required_for(user_id) and not await self.is_enrolled(user_id)
        self._gate_cache[user_id] = (now + _STATUS_CACHE_S, result)
        self._gate_cache.move_to_end(user_id)
        while len(self._gate_cache) > _MAX_TRACKED:
            self._gate_cache.popitem(last=False)
        return result

    async def _required_for(self, user_id: str) -> bool:
        if self.config.required == "everyone":
            return True
        if self.config.required == "admins":
            user = await self._users.get_user(user_id)
            return user is not None and user.is_admin
        return False

    # -- enrolment -----------------------------------------------------------

    async def start_enrolment(self, user_id: str, client: ClientInfo | None) -> dict[str, Any]:
        """A fresh secret, pending until confirmed with a code from it."""
        secret = pyotp.random_base32()
        if not await self._store.set_pending_secret(user_id, secret, self._clock.time_msec()):
            raise already_enabled()
        await self._events.record("mfa_enrolment_started", "success", client, user_id=user_id,
                                  target=user_id)
        uri = pyotp.TOTP(secret, digits=DIGITS, interval=PERIOD_S).provisioning_uri(
            name=user_id, issuer_name=self._issuer)
        return {"secret": secret, "otpauth_uri": uri, "digits": DIGITS, "period": PERIOD_S,
                "algorithm": "SHA1", "issuer": self._issuer}

    async def confirm(self, user_id: str, code: str, client: ClientInfo | None) -> list[str]:
        """Enable TOTP with a current code of the pending secret; returns the recovery
        codes (the only time they are ever shown)."""
        await self.shared_lockout.check(user_id)
        state = await self._store.get_totp(user_id)
        if state is not None and state.enabled:
            raise already_enabled()
        now_ms = self._clock.time_msec()
        if (state is None or state.pending_secret is None or state.pending_ts is None
                or state.pending_ts < now_ms - PENDING_LIFETIME_MS):
            raise MatrixError(400, "No TOTP enrolment in progress: start one with "
                              "/mfa/totp/enroll", Codes.INVALID_PARAM)
        step = matching_step(state.pending_secret, code.strip(), self._clock.time())
        if step is None:
            await self._failed(user_id, client, "invalid code at enrolment")
            raise MatrixError(403, "Invalid code", Codes.FORBIDDEN)
        codes, hashes = await self._new_recovery_codes()
        if not await self._store.confirm(user_id, state.pending_ts, step, hashes, now_ms):
            raise MatrixError(400, "The TOTP enrolment changed meanwhile; start again",
                              Codes.INVALID_PARAM)
        await self.shared_lockout.succeeded(user_id)
        self._gate_cache.pop(user_id, None)
        await self._events.record("mfa_enabled", "success", client, user_id=user_id,
                                  target=user_id)
        return codes

    async def disable(self, user_id: str, client: ClientInfo | None) -> None:
        if not await self._store.disable(user_id):
            raise not_enabled()
        self._gate_cache.pop(user_id, None)
        await self._events.record("mfa_disabled", "success", client, user_id=user_id,
                                  target=user_id)

    async def regenerate_recovery_codes(self, user_id: str,
                                        client: ClientInfo | None) -> list[str]:
        codes, hashes = await self._new_recovery_codes()
        if not await self._store.replace_recovery_codes(user_id, hashes,
                                                        self._clock.time_msec()):
            raise not_enabled()
        await self._events.record("mfa_recovery_codes_regenerated", "success", client,
                                  user_id=user_id, target=user_id)
        return codes

    async def forget_user(self, user_id: str) -> None:
        """Deactivation: the secret and codes of a gone account are deleted."""
        await self._store.delete_user(user_id)
        self._gate_cache.pop(user_id, None)

    async def _new_recovery_codes(self) -> tuple[list[str], list[str]]:
        codes = [new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
        hashes = [await self._hasher.hash(normalise_recovery_code(c)) for c in codes]
        return codes, hashes

    # -- verification (the second factor) -------------------------------------

    async def verify(self, user_id: str, stage: str, code: Any,
                     client: ClientInfo | None = None) -> bool:
        """Check a second-factor code for ``stage``; True once accepted (and spent).
        Raises 429 while the user is locked out."""
        await self.shared_lockout.check(user_id)
        if not isinstance(code, str) or not code or len(code) > 64:
            await self._failed(user_id, client, "missing or malformed code")
            return False
        if stage == TOTP_STAGE:
            ok, reason = await self._verify_totp(user_id, code.strip())
        elif stage == RECOVERY_STAGE:
            ok, reason = await self._verify_recovery(user_id, code, client)
        else:
            return False
        if ok:
            await self.shared_lockout.succeeded(user_id)
            return True
        await self._failed(user_id, client, reason)
        return False

    async def _verify_totp(self, user_id: str, code: str) -> tuple[bool, str]:
        state = await self._store.get_totp(user_id)
        if state is None or state.secret is None or state.enabled_ts is None:
            return False, "totp not enabled"
        step = matching_step(state.secret, code, self._clock.time())
        if step is None:
            return False, "invalid code"
        if step <= state.last_step or not await self._store.accept_step(
                user_id, state.enabled_ts, step):
            return False, "code already used"
        return True, ""

    async def _verify_recovery(self, user_id: str, code: str,
                               client: ClientInfo | None) -> tuple[bool, str]:
        wanted = normalise_recovery_code(code)
        if len(wanted) != _RECOVERY_GROUPS * _RECOVERY_GROUP_LEN:
            return False, "invalid recovery code"
        for code_id, code_hash in await self._store.unused_recovery_codes(user_id):
            ok, _ = await self._hasher.verify(code_hash, wanted)
            if not ok:
                continue
            if not await self._store.spend_recovery_code(user_id, code_id,
                                                         self._clock.time_msec()):
                return False, "recovery code already used"
            left = await self._store.count_unused_recovery_codes(user_id)
            await self._events.record("recovery_code_used", "success", client,
                                      user_id=user_id, target=user_id,
                                      details={"recovery_codes_left": left})
            return True, ""
        return False, "invalid recovery code"

    async def _failed(self, user_id: str, client: ClientInfo | None, reason: str) -> None:
        lockout = await self.shared_lockout.failed(user_id)
        await self._events.record("mfa_failure", "failure", client, user_id=user_id,
                                  target=user_id, reason=reason)
        if lockout is not None:
            await self._events.record("mfa_failure", "failure", client, user_id=user_id,
                                      target=user_id, reason="locked out",
                                      details={"lockout_s": int(lockout)})


def already_enabled() -> MatrixError:
    return MatrixError(400, "TOTP is already enabled; disable it first", Codes.INVALID_PARAM)


def not_enabled() -> MatrixError:
    return MatrixError(400, "TOTP is not enabled", Codes.INVALID_PARAM)


# Routes a user who must enrol (mfa.required) may still use: enrolment, logout, whoami.
_GATE_ALLOWED_PREFIXES = ("/_parley/client/v1/mfa",)
_GATE_ALLOWED_SUFFIXES = ("/logout", "/logout/all", "/account/whoami")


def gate_allows(template: str) -> bool:
    if template.startswith(_GATE_ALLOWED_PREFIXES):
        return True
    return template.startswith("/_matrix/client/") and template.endswith(_GATE_ALLOWED_SUFFIXES)


class MfaRequiredGate:
    """An :class:`Authenticator` wrapper for ``mfa.required``: a user who must have MFA
    and has none is authenticated, but refused (403 ``ORG_PARLEY_MFA_REQUIRED``) on
    every route except MFA enrolment, logout and whoami. It sits where every access
    token is checked, so no endpoint (nor the WebSocket) is forgotten."""

    def __init__(self, inner: Authenticator, mfa: MfaHandler) -> None:
        self._inner = inner
        self._mfa = mfa

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def authenticate(self, token: str, client: ClientInfo) -> Requester:
        requester = await self._inner.authenticate(token, client)
        if requester.is_guest or not await self._mfa.must_enrol(requester.user_id):
            return requester
        ctx = audit_context.current()
        route = getattr(getattr(ctx.request, "route", None), "template", None) if ctx else None
        if isinstance(route, str) and gate_allows(route):
            return requester
        raise MatrixError(403, "This server requires two-factor authentication: enrol TOTP "
                          "at /_parley/client/v1/mfa/totp/enroll first", MFA_REQUIRED)

"""The detectors. Each reads the audit trail's events (a recorder sink) or the event
fan-out, keeps small bounded in-memory windows per key, and raises alerts
(homeserver/detection/alerts.py). The login lockout and the spraying window are kept in
Redis when a ``redis`` section is configured (homeserver/detection/shared_state.py), so
several workers share them; without Redis, or while it is unreachable, each process
keeps its own (the lockout still bounds every worker's guessing rate). The flood and
policy-rejection windows are per process.

- login failures per account and per IP: a temporary lockout with growing backoff,
  checked before any password hashing (429 ``M_LIMIT_EXCEEDED`` + ``retry_after_ms``);
  a successful login after the lockout resets the account;
- password spraying: one IP failing on many distinct accounts in a window (the IP is
  locked out too);
- refresh-token reuse (the session is already revoked by the session handler);
- a login from a new IP or a new device of the account (not the account's first);
- a flood of messages or of invites from one local user;
- repeated policy rejections (e2ee_only, spam checks) of one user's events.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from homeserver.audit import context as audit_context
from homeserver.clock import Clock
from homeserver.detection.alerts import HIGH, INFO, WARNING, Alerts
from homeserver.detection.config import DetectionConfig, LoginFailuresConfig, Windowed
from homeserver.detection.shared_state import SharedLoginLockout, SharedRedis
from homeserver.handlers.event_fanout import PersistedEvent, PersistKind
from homeserver.http.errors import Codes, MatrixError
from homeserver.lru import LruCache
from storage.stores.devices import DeviceStore
from storage.stores.security_events import SecurityEvent
from storage.stores.server_notices import ServerNoticeStore

MAX_KEYS = 100_000
LOCKOUT_MESSAGE = "Too many failed login attempts; try again later"
POLICY_REJECTION = "policy_rejection"
# Login "via" values that are account creation, not a sign-in to notify about.
_REGISTRATION_VIA = frozenset({"register", "shared_secret_register"})
_COUNTED_LOGIN_FAILURES = frozenset({"bad_password", "unknown_user"})


def lockout_error(retry_after_ms: int) -> MatrixError:
    """The 429 a locked-out account or IP gets (same shape as every rate limit)."""
    retry_ms = max(1, retry_after_ms)
    err = MatrixError(429, LOCKOUT_MESSAGE, Codes.LIMIT_EXCEEDED,
                      headers={"Retry-After": str(max(1, math.ceil(retry_ms / 1000)))},
                      retry_after_ms=retry_ms)
    err.limit_class = "login_lockout"  # type: ignore[attr-defined]
    return err


def _human(seconds: float) -> str:
    """"1 minute", "2 minutes 30 seconds", "1 hour": for notices."""
    total = math.ceil(seconds)
    parts = []
    for unit, size in (("hour", 3600), ("minute", 60), ("second", 1)):
        n, total = divmod(total, size)
        if n:
            parts.append(f"{n} {unit}{'' if n == 1 else 's'}")
    return " ".join(parts) or "0 seconds"


class SlidingWindow:
    """Timestamps (ms) per key within a window, for at most MAX_KEYS keys."""

    def __init__(self, window_s: float) -> None:
        self._window_ms = int(window_s * 1000)
        self._keys: LruCache[str, deque[int]] = LruCache(MAX_KEYS)

    def add(self, key: str, now_ms: int) -> int:
        q = self._keys.get(key)
        if q is None:
            q = deque()
            self._keys.set(key, q)
        q.append(now_ms)
        while q and q[0] <= now_ms - self._window_ms:
            q.popleft()
        return len(q)

    def reset(self, key: str) -> None:
        self._keys.pop(key)


@dataclass
class _LockState:
    failures: deque[int] = field(default_factory=deque)
    locked_until: int = 0
    level: int = 0
    last_lock_end: int = 0


@dataclass(frozen=True)
class Lockout:
    scope: str  # "account" | "ip"
    duration_s: float
    failures: int


class LoginLockout:
    """Failed-login counting and lockouts with growing backoff, per account and per IP."""

    def __init__(self, config: LoginFailuresConfig) -> None:
        self._config = config
        self._states: LruCache[str, _LockState] = LruCache(MAX_KEYS)

    def _state(self, key: str) -> _LockState:
        state = self._states.get(key)
        if state is None:
            state = _LockState()
            self._states.set(key, state)
        return state

    def retry_after_ms(self, user_id: str | None, ip: str | None, now_ms: int) -> int:
        """How long until this login may be tried (0: now)."""
        wait = 0
        for key in (f"u:{user_id}" if user_id else None, f"ip:{ip}" if ip else None):
            state = self._states.get(key) if key else None
            if state is not None and state.locked_until > now_ms:
                wait = max(wait, state.locked_until - now_ms)
        return wait

    def _lock(self, state: _LockState, now_ms: int) -> float:
        c = self._config
        if state.last_lock_end and now_ms - state.last_lock_end > c.backoff_reset_s * 1000:
            state.level = 0
        duration = min(c.lockout_s * c.multiplier ** state.level, c.max_lockout_s)
        state.level += 1
        state.locked_until = now_ms + int(duration * 1000)
        state.last_lock_end = state.locked_until
        state.failures.clear()
        return duration

    def failure(self, user_id: str | None, ip: str | None, now_ms: int) -> list[Lockout]:
        """Count one failed password; the lockouts it starts."""
        c = self._config
        out = []
        for scope, key, limit, window in (
                ("account", f"u:{user_id}" if user_id else None, c.account_max_failures,
                 c.account_window_s),
                ("ip", f"ip:{ip}" if ip else None, c.ip_max_failures, c.ip_window_s)):
            if key is None:
                continue
            state = self._state(key)
            if state.locked_until > now_ms:
                continue  # refused before hashing; a race past the check does not count
            state.failures.append(now_ms)
            while state.failures and state.failures[0] <= now_ms - window * 1000:
                state.failures.popleft()
            if len(state.failures) >= limit:
                count = len(state.failures)
                out.append(Lockout(scope, self._lock(state, now_ms), count))
        return out

    def lock_ip(self, ip: str, now_ms: int) -> float:
        return self._lock(self._state(f"ip:{ip}"), now_ms)

    def success(self, user_id: str, now_ms: int) -> None:
        """A successful login after any lockout expired: the account starts afresh."""
        key = f"u:{user_id}"
        state = self._states.get(key)
        if state is not None and state.locked_until <= now_ms:
            self._states.pop(key)


def _hash(user_id: str, value: str) -> str:
    return hashlib.sha256(f"{user_id}\x00{value}".encode()).hexdigest()


class Detection:
    """All detectors behind one recorder sink and one fan-out subscriber."""

    def __init__(self, config: DetectionConfig, clock: Clock, alerts: Alerts,
                 known_logins: ServerNoticeStore, devices: DeviceStore,
                 system_user_id: str | None = None) -> None:
        self._config = config
        self._clock = clock
        self.alerts = alerts
        self._known = known_logins
        self._devices = devices
        self._system_user = system_user_id
        self.lockout = LoginLockout(config.login_failures)
        # The same lockout, in Redis once :meth:`share` is called (else in-process).
        self.shared = SharedLoginLockout(self.lockout, config.login_failures)
        self._spray: LruCache[str, deque[tuple[int, str]]] = LruCache(MAX_KEYS)
        self._messages = SlidingWindow(config.message_flood.window_s)
        self._invites = SlidingWindow(config.invite_flood.window_s)
        self._rejections = SlidingWindow(config.policy_rejections.window_s)
        self._handlers: dict[str, Callable[[SecurityEvent], None]] = {
            "login": self._on_login,
            "uia_password": self._on_uia_password,
            "refresh_token_reuse": self._on_refresh_reuse,
            POLICY_REJECTION: self._on_policy_rejection,
        }

    def share(self, redis: SharedRedis | None) -> None:
        """Keep the lockout and spraying state in Redis (None: in-process)."""
        self.shared.redis = redis

    # ---- the pre-hash check (PasswordAuth.lockout_check)

    async def check_login(self, user_id: str | None) -> None:
        """Raise the lockout 429 for a locked account or IP, before any hashing."""
        if not (self._config.enabled and self._config.login_failures.enabled):
            return
        ctx = audit_context.current()
        client = getattr(ctx.request, "client", None) if ctx is not None else None
        ip = getattr(client, "ip", None)
        wait = await self.shared.retry_after_ms(user_id, ip, self._clock.time_msec())
        if wait > 0:
            raise lockout_error(wait)

    # ---- the recorder sink

    def security_event(self, ev: SecurityEvent) -> None:
        if not self._config.enabled:
            return
        handler = self._handlers.get(ev.event_type)
        if handler is not None:
            handler(ev)

    def _on_login(self, ev: SecurityEvent) -> None:
        now = self._clock.time_msec()
        if ev.outcome == "failure" and ev.reason in _COUNTED_LOGIN_FAILURES:
            self._password_failure(ev, now)
        elif ev.outcome == "success" and ev.user_id:
            if self.shared.redis is not None:
                self.alerts.spawn(self.shared.success(ev.user_id, now))
            else:
                self.lockout.success(ev.user_id, now)
            via = (ev.details or {}).get("via")
            if self._config.new_login:
                self.alerts.spawn(self._check_new_login(ev, via in _REGISTRATION_VIA))

    def _on_uia_password(self, ev: SecurityEvent) -> None:
        if ev.outcome == "failure":
            self._password_failure(ev, self._clock.time_msec())

    def _password_failure(self, ev: SecurityEvent, now: int) -> None:
        if self.shared.redis is not None:
            self.alerts.spawn(self._shared_password_failure(ev, now))
            return
        lf = self._config.login_failures
        if lf.enabled:
            for lock in self.lockout.failure(ev.user_id, ev.ip, now):
                self._alert_lockout(lock, ev.user_id if lock.scope == "account" else None)
        sp = self._config.password_spraying
        if sp.enabled and ev.ip and ev.user_id:
            self._spraying(ev.ip, ev.user_id, now)

    async def _shared_password_failure(self, ev: SecurityEvent, now: int) -> None:
        """:meth:`_password_failure` on the shared (Redis) state."""
        if self._config.login_failures.enabled:
            for lock in await self.shared.failure(ev.user_id, ev.ip, now):
                self._alert_lockout(lock, ev.user_id if lock.scope == "account" else None)
        sp = self._config.password_spraying
        if not (sp.enabled and ev.ip and ev.user_id):
            return
        accounts = await self.shared.spray(ev.ip, ev.user_id, now, sp.window_s,
                                           sp.distinct_accounts,
                                           lambda: self._spray_count(ev.ip or "",
                                                                     ev.user_id or "", now))
        if accounts >= sp.distinct_accounts:
            duration = await self.shared.lock_ip(ev.ip, now)
            self._alert_spraying(accounts, duration)

    def _alert_lockout(self, lock: Lockout, user_id: str | None) -> None:
        notice = None
        if user_id is not None:
            notice = (f"Password sign-in to your account was paused for "
                      f"{_human(lock.duration_s)} after {lock.failures} failed attempts. "
                      "If these were not you, someone may be guessing your password: make "
                      "sure it is strong and used nowhere else. Your signed-in sessions are "
                      "not affected.")
        self.alerts.spawn(self.alerts.raise_alert(
            "login_failures", WARNING, f"{lock.scope} locked out after failed logins",
            user_id=user_id, notice=notice,
            details={"scope": lock.scope, "failures": lock.failures,
                     "lockout_s": lock.duration_s}))

    def _spraying(self, ip: str, user_id: str, now: int) -> None:
        sp = self._config.password_spraying
        count = self._spray_count(ip, user_id, now)
        if count < sp.distinct_accounts:
            return
        self._alert_spraying(count, self.lockout.lock_ip(ip, now))

    def _spray_count(self, ip: str, user_id: str, now: int) -> int:
        """Distinct accounts failed from ``ip`` in the window, with this one (the window
        starts afresh once the threshold is reached: one alert per burst)."""
        sp = self._config.password_spraying
        q = self._spray.get(ip)
        if q is None:
            q = deque()
            self._spray.set(ip, q)
        q.append((now, user_id))
        while q and q[0][0] <= now - sp.window_s * 1000:
            q.popleft()
        accounts = {u for _, u in q}
        if len(accounts) >= sp.distinct_accounts:
            self._spray.pop(ip)
        return len(accounts)

    def _alert_spraying(self, accounts: int, duration: float) -> None:
        self.alerts.spawn(self.alerts.raise_alert(
            "password_spraying", HIGH, "failed logins on many accounts from one address",
            details={"distinct_accounts": accounts,
                     "window_s": self._config.password_spraying.window_s,
                     "lockout_s": duration}))

    def _on_refresh_reuse(self, ev: SecurityEvent) -> None:
        if not self._config.refresh_token_reuse or not ev.user_id:
            return
        self.alerts.spawn(self._refresh_reuse(ev))

    async def _refresh_reuse(self, ev: SecurityEvent) -> None:
        name = await self._device_name(ev.user_id or "", ev.device_id)
        notice = ("A sign-in credential of your session on device "
                  f"{name} was used twice, which suggests it was copied. That session has "
                  "been signed out as a precaution. If you did not expect this, change "
                  "your password and review your devices.")
        await self.alerts.raise_alert(
            "refresh_token_reuse", HIGH, "refresh token reused; session revoked",
            user_id=ev.user_id, notice=notice,
            details={"device_id": ev.device_id})

    async def _device_name(self, user_id: str, device_id: str | None) -> str:
        if not device_id:
            return "(unknown)"
        device = await self._devices.get_device(user_id, device_id)
        name = device.display_name if device is not None and device.display_name else None
        return f"\u201c{name[:100]}\u201d ({device_id})" if name else device_id

    async def _check_new_login(self, ev: SecurityEvent, registration: bool) -> None:
        user_id = ev.user_id or ""
        novelty = await self._known.note_login(
            user_id, _hash(user_id, ev.ip) if ev.ip else None,
            _hash(user_id, ev.device_id) if ev.device_id else None, self._clock.time_msec())
        if registration or not novelty.had_history or not (novelty.new_ip or novelty.new_device):
            return
        name = await self._device_name(user_id, ev.device_id)
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ev.ts / 1000))
        notice = None
        if self._config.new_login_notify:
            notice = (f"New sign-in to your account: device {name}, from IP address "
                      f"{ev.ip or 'unknown'}, at {when}. If this was you, there is nothing "
                      "to do. If not, change your password and sign out that device.")
        await self.alerts.raise_alert(
            "new_login", WARNING if novelty.new_ip else INFO,
            "login from a new IP address" if novelty.new_ip else "login from a new device",
            user_id=user_id, notice=notice,
            details={"new_ip": novelty.new_ip, "new_device": novelty.new_device,
                     "device_id": ev.device_id})

    def _on_policy_rejection(self, ev: SecurityEvent) -> None:
        cfg = self._config.policy_rejections
        if cfg.enabled and ev.user_id:
            self._windowed("policy_rejections", cfg, self._rejections, ev.user_id,
                           "repeated policy rejections")

    def _windowed(self, detector: str, cfg: Windowed, window: SlidingWindow, user_id: str,
                  reason: str) -> None:
        count = window.add(user_id, self._clock.time_msec())
        if count < cfg.max_events:
            return
        window.reset(user_id)  # one alert per burst
        self.alerts.spawn(self.alerts.raise_alert(
            detector, WARNING, reason, user_id=user_id,
            details={"count": count, "window_s": cfg.window_s}))

    # ---- the fan-out subscriber

    def event_persisted(self, record: PersistedEvent) -> None:
        if not self._config.enabled or record.kind is not PersistKind.LOCAL:
            return
        event = record.event
        sender = event.sender
        if sender == self._system_user:
            return
        if event.type == "m.room.member" and event.is_state():
            content: Any = event.content
            if content.get("membership") == "invite" and event.state_key != sender:
                cfg = self._config.invite_flood
                if cfg.enabled:
                    self._windowed("invite_flood", cfg, self._invites, sender,
                                   "many invites from one user")
            return
        if not event.is_state():
            cfg = self._config.message_flood
            if cfg.enabled:
                self._windowed("message_flood", cfg, self._messages, sender,
                               "many messages from one user")

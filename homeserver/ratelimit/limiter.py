"""The per-action rate limiter: classes from ``rate_limits``, counted by a backend
(in-process or Redis), with admin exemption, a policy seam for plugins, escalating
invite penalties and a security event once per window per blocked key.

A check names an action (a ``rate_limits`` class) and a key (an IP, a user id, an
invitee...). Which checks a request makes is declared per route in
:mod:`homeserver.http.rate_classes` and applied by :mod:`homeserver.ratelimit.dispatch`.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from homeserver.auth.ratelimit import limit_exceeded
from homeserver.auth.requester import ClientInfo
from homeserver.clock import Clock
from homeserver.config.model import InvitePenaltyConfig, RateLimitsConfig

logger = logging.getLogger(__name__)

# (action, user_id or None, client ip) -> a multiplier on the limit: None = unchanged,
# 0 = exempt, 2 = twice the rate and burst, 0.5 = half. May return an awaitable.
Policy = Callable[[str, "str | None", str], "float | None | Awaitable[float | None]"]
# user_id -> whether the user skips every per-user limit (admins; appservice users later).
Exemption = Callable[[str], "bool | Awaitable[bool]"]

SECURITY_EVENT_WINDOW_S = 60.0
MAX_KEY_LEN = 200
ADMIN_CACHE_TTL_S = 60.0


class LimiterBackend(Protocol):
    """Counts actions: ``memory`` (this process) or ``redis`` (shared)."""

    name: str

    async def acquire(self, bucket: str, rate: float, burst: float, cost: float,
                      now: float) -> float:
        """Take ``cost`` from ``bucket``; 0 if admitted, else seconds to wait."""

    async def close(self) -> None: ...


class SecurityEvents(Protocol):
    async def record(self, event_type: str, outcome: str, client: ClientInfo | None,
                     **kwargs: Any) -> Any: ...


class InvitePenalty:
    """Strikes per sender whose invites are refused (403) or rejected by the invitee,
    decaying exponentially (halved every ``half_life``). The cost of one invite is
    ``factor ** strikes`` tokens (at most ``max_multiplier``, and never more than the
    whole burst): a sender who keeps inviting people who do not want it waits longer
    and longer, an honest one with an occasional refusal barely notices. In-process
    (per worker) whatever the backend."""

    def __init__(self, clock: Clock, config: InvitePenaltyConfig, max_keys: int = 50_000):
        self._clock = clock
        self._config = config
        self._max_keys = max_keys
        self._strikes: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _current(self, sender: str, now: float) -> float:
        strikes, then = self._strikes.get(sender, (0.0, now))
        half_life = self._config.half_life
        if half_life <= 0:
            return 0.0
        return strikes * 0.5 ** (max(0.0, now - then) / half_life)

    def strike(self, sender: str) -> None:
        now = self._clock.time()
        self._strikes[sender] = (self._current(sender, now) + 1.0, now)
        self._strikes.move_to_end(sender)
        while len(self._strikes) > self._max_keys:
            self._strikes.popitem(last=False)

    def multiplier(self, sender: str) -> float:
        if sender not in self._strikes:
            return 1.0
        strikes = self._current(sender, self._clock.time())
        return min(self._config.max_multiplier, self._config.factor ** strikes)


class RateLimiter:
    """Admits or refuses one action for one key (429 ``M_LIMIT_EXCEEDED``)."""

    def __init__(self, config: RateLimitsConfig, clock: Clock, backend: LimiterBackend,
                 *, is_admin: Callable[[str], Awaitable[bool]] | None = None,
                 events: SecurityEvents | None = None) -> None:
        self.config = config
        self.backend = backend
        self._clock = clock
        self._is_admin = is_admin
        self._events = events
        self._policy: Policy | None = None
        self._exemptions: list[Exemption] = []
        self.invite_penalty = InvitePenalty(clock, config.invite_penalty)
        self._admin_cache: OrderedDict[str, tuple[bool, float]] = OrderedDict()
        self._reported: OrderedDict[tuple[str, str], float] = OrderedDict()

    # -- seams ---------------------------------------------------------------------

    def set_policy(self, policy: Policy | None) -> None:
        """Install the ``rate_limit_policy`` callable (None removes it). A policy that
        raises or answers garbage is logged and ignored: the configured limit applies."""
        self._policy = policy

    def add_exemption(self, exemption: Exemption) -> None:
        """Another kind of user that skips per-user limits (the hook for appservice
        users: ``add_exemption(lambda uid: appservices.is_interested_user(uid))``)."""
        self._exemptions.append(exemption)

    # -- checks --------------------------------------------------------------------

    async def check(self, action: str, key: str, *, user_id: str | None = None,
                    ip: str = "-", cost: float = 1.0, client: ClientInfo | None = None,
                    key_kind: str = "", exemptible: bool = True) -> None:
        """Count ``cost`` of ``action`` for ``key``; raise the 429 when over the limit.
        ``user_id`` (the requester) is what exemption and the policy see;
        ``exemptible=False`` limits admins too (password guessing)."""
        if exemptible and user_id is not None and await self.is_exempt(user_id):
            return
        multiplier = await self._policy_multiplier(action, user_id, ip)
        if multiplier == 0:
            return
        limit = self.config.limit(action)
        rate = limit.per_second * multiplier
        burst = limit.burst * multiplier
        if action == "invite" and user_id is not None:
            cost *= self.invite_penalty.multiplier(user_id)
        if cost <= 1.0:
            burst = max(burst, 1.0)  # a lowered limit still admits one request per refill
        wait = await self.backend.acquire(self._bucket(action, key), rate, burst, cost,
                                          self._clock.time())
        if wait > 0:
            await self._report(action, key, key_kind, user_id, client)
            raise limit_exceeded(wait, action)

    async def is_exempt(self, user_id: str) -> bool:
        if self.config.exempt_admins and self._is_admin is not None \
                and await self._cached_is_admin(user_id):
            return True
        for exemption in self._exemptions:
            result = exemption(user_id)
            if inspect.isawaitable(result):
                result = await result
            if result:
                return True
        return False

    async def _cached_is_admin(self, user_id: str) -> bool:
        assert self._is_admin is not None
        now = self._clock.time()
        hit = self._admin_cache.get(user_id)
        if hit is not None and now - hit[1] < ADMIN_CACHE_TTL_S:
            return hit[0]
        admin = bool(await self._is_admin(user_id))
        self._admin_cache[user_id] = (admin, now)
        self._admin_cache.move_to_end(user_id)
        while len(self._admin_cache) > 10_000:
            self._admin_cache.popitem(last=False)
        return admin

    async def _policy_multiplier(self, action: str, user_id: str | None, ip: str) -> float:
        if self._policy is None:
            return 1.0
        try:
            result = self._policy(action, user_id, ip)
            if inspect.isawaitable(result):
                result = await result
        except Exception:  # noqa: BLE001 (a plugin must not take requests down)
            logger.exception("rate_limit_policy failed for %s; the configured limit applies",
                             action)
            return 1.0
        if result is None:
            return 1.0
        if isinstance(result, bool) or not isinstance(result, int | float) \
                or not math.isfinite(result) or result < 0:
            logger.warning("rate_limit_policy returned %r for %s; ignored",
                           type(result).__name__, action)
            return 1.0
        return float(result)

    @staticmethod
    def _bucket(action: str, key: str) -> str:
        if len(key) > MAX_KEY_LEN:
            key = "h:" + hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()
        return f"{action}:{key}"

    async def _report(self, action: str, key: str, key_kind: str, user_id: str | None,
                      client: ClientInfo | None) -> None:
        """One ``rate_limited`` security event per class and key per window."""
        if self._events is None:
            return
        now = self._clock.time()
        slot = (action, key)
        last = self._reported.get(slot)
        if last is not None and now - last < SECURITY_EVENT_WINDOW_S:
            return
        self._reported[slot] = now
        self._reported.move_to_end(slot)
        while len(self._reported) > 50_000:
            self._reported.popitem(last=False)
        target = key if key_kind not in ("ip", "") else None
        try:
            await self._events.record("rate_limited", "blocked", client, user_id=user_id,
                                      reason=action, target=target,
                                      details={"limit": action, "key": key_kind or "other"})
        except Exception:  # noqa: BLE001 (the 429 stands even if the audit write fails)
            logger.exception("could not record the rate_limited security event")

    def readiness_checks(self) -> dict[str, Callable[[], Awaitable[None]]]:
        """What ``/ready`` must see answer: Redis, when it is the backend."""
        ping = getattr(self.backend, "ping", None)
        return {"redis": ping} if ping is not None else {}

    async def close(self) -> None:
        await self.backend.close()


class InviteRejections:
    """Watches persisted membership events (an EventFanout subscriber): an invitee who
    rejects an invite (leaves while invited) is a strike against whoever invited them."""

    def __init__(self, penalty: InvitePenalty, max_pending: int = 100_000) -> None:
        self._penalty = penalty
        self._max = max_pending
        self._pending: OrderedDict[tuple[str, str], str] = OrderedDict()  # (room, invitee) -> inviter

    def event_persisted(self, record: Any) -> None:
        event = record.event
        if event.type != "m.room.member" or event.state_key is None:
            return
        membership = event.membership
        slot = (event.room_id, event.state_key)
        if membership == "invite":
            self._pending[slot] = event.sender
            self._pending.move_to_end(slot)
            while len(self._pending) > self._max:
                self._pending.popitem(last=False)
            return
        inviter = self._pending.pop(slot, None)
        if inviter is not None and membership == "leave" and event.sender == event.state_key:
            self._penalty.strike(inviter)

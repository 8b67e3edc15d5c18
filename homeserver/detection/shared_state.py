"""Lockout state shared by several Parley processes through Redis.

The login lockout (homeserver/detection/detectors.py: per account and per IP, with
growing backoff) and the second-factor code lockout (homeserver/auth/mfa.py) are kept
in Redis when a ``redis`` section is configured, so a guesser spreading attempts over
several workers meets one budget and a lockout started by one process is enforced by
all. Each update is one Lua script (atomic in Redis); times come from the caller's
clock, as the rate limiter's do.

Without Redis, or while it cannot be reached (refused connection, a command past
``redis.timeout``, an error reply), the in-process state of each process answers: the
lockouts stay enforced per process, never opened and never failing requests. The
switch is logged once each way; one call per ``retry_interval`` tries Redis again.
This is the rate limiter's pattern (homeserver/ratelimit/redis_backend.py), on its
connection when the limiter uses Redis.

Keys (under ``redis.key_prefix``): ``lock:mfa:<user>`` (a hash: c = wrong codes in a
row, l = lockouts so far, u = locked until, seconds); ``lock:login:<u:user|ip:addr>``
(a hash: u = locked until, v = backoff level, e = end of the last lockout, ms) and
``...:f`` (a sorted set of failure times in the window); ``lock:spray:<ip>`` (a sorted
set of the accounts failed from it). Every key expires once it can no longer matter.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable
from typing import Any, TypeVar

from homeserver.auth.mfa_config import MfaConfig
from homeserver.clock import Clock
from homeserver.detection.config import LoginFailuresConfig

logger = logging.getLogger(__name__)

T = TypeVar("T")

# KEYS[1] the user's hash; ARGV max_failures, lockout_s, max_lockout_s, now (s), ttl (s).
# Returns the lockout started (seconds) or -1.
MFA_FAILED_LUA = """
local c = tonumber(redis.call('HGET', KEYS[1], 'c') or '0') + 1
local l = tonumber(redis.call('HGET', KEYS[1], 'l') or '0')
local dur = -1
if c >= tonumber(ARGV[1]) then
  dur = math.min(tonumber(ARGV[3]), tonumber(ARGV[2]) * 2 ^ math.min(l, 30))
  c = 0
  l = l + 1
  redis.call('HSET', KEYS[1], 'u', string.format('%.17g', tonumber(ARGV[4]) + dur))
end
redis.call('HSET', KEYS[1], 'c', c, 'l', l)
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[5])))
return string.format('%.17g', dur)
"""

# KEYS: state hashes; ARGV[1] now. Returns the longest remaining lockout (same unit).
LOCKED_UNTIL_LUA = """
local wait = 0
for i = 1, #KEYS do
  local u = tonumber(redis.call('HGET', KEYS[i], 'u') or '0')
  if u - tonumber(ARGV[1]) > wait then wait = u - tonumber(ARGV[1]) end
end
return string.format('%.17g', wait)
"""

# The login lockout: KEYS[1] the state hash, KEYS[2] the failure times. ARGV: now (ms),
# lockout_s, multiplier, max_lockout_s, backoff_reset_ms, then for a failure: window_ms,
# limit, a unique member. Returns "<lockout s>|<failures>" or "-1|0".
_LOGIN_LOCK = """
local function lock(now)
  local level = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
  local last = tonumber(redis.call('HGET', KEYS[1], 'e') or '0')
  if last > 0 and now - last > tonumber(ARGV[5]) then level = 0 end
  local dur = math.min(tonumber(ARGV[2]) * tonumber(ARGV[3]) ^ level, tonumber(ARGV[4]))
  local untl = now + math.floor(dur * 1000)
  redis.call('HSET', KEYS[1], 'v', level + 1, 'u', untl, 'e', untl)
  redis.call('DEL', KEYS[2])
  redis.call('PEXPIRE', KEYS[1], untl - now + tonumber(ARGV[5]) + 1000)
  return dur
end
"""

LOGIN_FAILURE_LUA = _LOGIN_LOCK + """
local now = tonumber(ARGV[1])
if tonumber(redis.call('HGET', KEYS[1], 'u') or '0') > now then return '-1|0' end
redis.call('ZADD', KEYS[2], now, ARGV[8])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[6]))
redis.call('PEXPIRE', KEYS[2], math.ceil(tonumber(ARGV[6])) + 1000)
local n = redis.call('ZCARD', KEYS[2])
if n < tonumber(ARGV[7]) then return '-1|0' end
return string.format('%.17g', lock(now)) .. '|' .. n
"""

LOGIN_LOCK_LUA = _LOGIN_LOCK + """
return string.format('%.17g', lock(tonumber(ARGV[1]))) .. '|0'
"""

# KEYS[1], KEYS[2] as above; ARGV[1] now (ms). A success after any lockout ended.
LOGIN_SUCCESS_LUA = """
if tonumber(redis.call('HGET', KEYS[1], 'u') or '0') <= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1], KEYS[2])
end
return 1
"""


# Password spraying: KEYS[1] a sorted set of the accounts failed from one IP (score: the
# last failure); ARGV now (ms), window_ms, user id, threshold. Returns the distinct
# accounts in the window, starting afresh once the threshold is reached.
SPRAY_LUA = """
local now = tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[4]) then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 1000)
end
return n
"""


class SharedRedis:
    """Runs the scripts on Redis, answering from ``fallback`` while it is unreachable."""

    def __init__(self, conn: Any, reactor: Any, timeout: float, key_prefix: str,
                 retry_interval: float = 5.0) -> None:
        self._conn = conn
        self._reactor = reactor
        self._timeout = timeout
        self.key_prefix = key_prefix + "lock:"
        self._retry_interval = retry_interval
        self.fallback_active = False
        self._retry_at = 0.0

    async def run(self, script: str, keys: list[str], args: list[Any],
                  fallback: Callable[[], T], parse: Callable[[str], T]) -> T:
        if self.fallback_active and self._reactor.seconds() < self._retry_at:
            return fallback()
        self._retry_at = self._reactor.seconds() + self._retry_interval
        try:
            d = self._conn.eval(script, [self.key_prefix + k for k in keys],
                                [_arg(a) for a in args])
            d.addTimeout(self._timeout, self._reactor)
            result = parse(str(await d))
        except Exception as e:  # noqa: BLE001 (any failure: in-process, never fail open)
            if not self.fallback_active:
                self.fallback_active = True
                logger.warning("Redis unreachable for shared lockouts (%s); each process "
                               "keeps its own until it is back", type(e).__name__)
            return fallback()
        if self.fallback_active:
            self.fallback_active = False
            logger.warning("Redis reachable again; lockouts are shared")
        return result


def _arg(value: Any) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def _wait(text: str) -> float:
    value = float(text)
    return value if math.isfinite(value) and value > 0 else 0.0


class SharedCodeLockout:
    """The MFA code lockout (same rules as :class:`homeserver.auth.mfa.CodeLockout`,
    which is the in-process state and the fallback), in Redis when configured."""

    def __init__(self, local: Any, clock: Clock, config: MfaConfig,
                 redis: SharedRedis | None = None) -> None:
        self.local = local
        self._clock = clock
        self._config = config
        self.redis = redis

    async def check(self, user_id: str) -> None:
        if self.redis is None:
            return self.local.check(user_id)
        from homeserver.auth.ratelimit import limit_exceeded

        wait = await self.redis.run(LOCKED_UNTIL_LUA, [f"mfa:{user_id}"],
                                    [self._clock.time()], lambda: -1.0, _wait)
        if wait < 0:  # answered in-process
            return self.local.check(user_id)
        if wait > 0:
            raise limit_exceeded(wait, "mfa")

    async def failed(self, user_id: str) -> float | None:
        """Count one wrong code; the lockout (seconds) it starts, if any."""
        if self.redis is None:
            return self.local.failed(user_id)
        c = self._config
        ttl = c.max_lockout_s + 86400.0  # the lockout count outlives the longest lockout
        duration = await self.redis.run(
            MFA_FAILED_LUA, [f"mfa:{user_id}"],
            [c.max_failures, float(c.lockout_s), float(c.max_lockout_s), self._clock.time(),
             ttl], lambda: self.local.failed(user_id), _optional_seconds)
        return duration

    async def succeeded(self, user_id: str) -> None:
        self.local.succeeded(user_id)
        if self.redis is not None:
            await self.redis.run("redis.call('DEL', KEYS[1]) return 1", [f"mfa:{user_id}"],
                                 [], lambda: None, lambda _r: None)


def _optional_seconds(text: str) -> float | None:
    value = float(text)
    return value if value >= 0 else None


class SharedLoginLockout:
    """The login lockout (same rules as :class:`LoginLockout`, which is the in-process
    state and the fallback), in Redis when configured."""

    def __init__(self, local: Any, config: LoginFailuresConfig,
                 redis: SharedRedis | None = None) -> None:
        self.local = local
        self._config = config
        self.redis = redis

    def _lock_args(self, now_ms: int) -> list[Any]:
        c = self._config
        return [now_ms, float(c.lockout_s), float(c.multiplier), float(c.max_lockout_s),
                int(c.backoff_reset_s * 1000)]

    async def retry_after_ms(self, user_id: str | None, ip: str | None, now_ms: int) -> int:
        if self.redis is None:
            return self.local.retry_after_ms(user_id, ip, now_ms)
        keys = [f"login:{k}" for k in (f"u:{user_id}" if user_id else None,
                                       f"ip:{ip}" if ip else None) if k]
        if not keys:
            return 0
        wait = await self.redis.run(
            LOCKED_UNTIL_LUA, keys, [now_ms],
            lambda: float(self.local.retry_after_ms(user_id, ip, now_ms)), _wait)
        return int(wait)

    async def failure(self, user_id: str | None, ip: str | None, now_ms: int) -> list[Any]:
        """Count one failed password; the lockouts it starts (``Lockout`` values)."""
        from homeserver.detection.detectors import Lockout

        if self.redis is None:
            return self.local.failure(user_id, ip, now_ms)
        c = self._config
        out: list[Lockout] = []
        for scope, key, limit, window in (
                ("account", f"u:{user_id}" if user_id else None, c.account_max_failures,
                 c.account_window_s),
                ("ip", f"ip:{ip}" if ip else None, c.ip_max_failures, c.ip_window_s)):
            if key is None:
                continue
            keys = [f"login:{key}", f"login:{key}:f"]
            args = [*self._lock_args(now_ms), int(window * 1000), limit,
                    f"{now_ms}:{secrets.token_hex(6)}"]

            def local(scope: str = scope) -> str:
                # This one scope, in-process (the other scope goes its own way).
                found = [lk for lk in self.local.failure(
                    user_id if scope == "account" else None,
                    ip if scope == "ip" else None, now_ms) if lk.scope == scope]
                return f"{found[0].duration_s}|{found[0].failures}" if found else "-1|0"

            result = await self.redis.run(LOGIN_FAILURE_LUA, keys, args, local, str)
            duration, count = result.split("|")
            if float(duration) >= 0:
                out.append(Lockout(scope, float(duration), int(count)))
        return out

    async def lock_ip(self, ip: str, now_ms: int) -> float:
        if self.redis is None:
            return self.local.lock_ip(ip, now_ms)
        keys = [f"login:ip:{ip}", f"login:ip:{ip}:f"]
        result = await self.redis.run(LOGIN_LOCK_LUA, keys, self._lock_args(now_ms),
                                      lambda: f"{self.local.lock_ip(ip, now_ms)}|0", str)
        return float(result.split("|")[0])

    async def spray(self, ip: str, user_id: str, now_ms: int, window_s: float,
                    distinct: int, local: Callable[[], int]) -> int:
        """Distinct accounts failed from ``ip`` in the window (``local``: in-process)."""
        if self.redis is None:
            return local()
        return await self.redis.run(SPRAY_LUA, [f"spray:{ip}"],
                                    [now_ms, int(window_s * 1000), user_id, distinct],
                                    local, lambda r: int(float(r)))

    async def success(self, user_id: str, now_ms: int) -> None:
        self.local.success(user_id, now_ms)
        if self.redis is not None:
            keys = [f"login:u:{user_id}", f"login:u:{user_id}:f"]
            await self.redis.run(LOGIN_SUCCESS_LUA, keys, [now_ms], lambda: None,
                                 lambda _r: None)


def shared_redis(config: Any, reactor: Any, limiter: Any = None) -> tuple[SharedRedis | None,
                                                                           Any]:
    """The SharedRedis for ``config.redis`` (None without one), on the rate limiter's
    connection when it uses Redis, else on a new one; and an async closer for a
    connection opened here (None when it is the limiter's)."""
    redis_config = getattr(config, "redis", None)
    if redis_config is None:
        return None, None
    backend = getattr(limiter, "backend", None)
    conn = getattr(backend, "connection", None)
    closer = None
    if conn is None:
        import txredisapi

        conn = txredisapi.lazyConnection(
            host=redis_config.host, port=redis_config.port, dbid=redis_config.db,
            password=redis_config.password, reconnect=True,
            connectTimeout=redis_config.timeout, replyTimeout=redis_config.timeout)
        own = conn

        async def closer() -> None:
            try:
                await own.disconnect()
            except Exception:  # noqa: BLE001 (shutting down)
                logger.debug("Redis disconnect failed", exc_info=True)

    return SharedRedis(conn, reactor, redis_config.timeout, redis_config.key_prefix), closer

"""The one place Parley calls plugins: awaits sync and async hooks alike, times each
call out, contains failures and applies each hook's documented default.

Every hook call goes to one plugin at a time (so one broken plugin neither hides the
others' answers nor takes them down), is timed into
``parley_plugin_hook_duration_seconds{hook}`` and, when it fails, counted in
``parley_plugin_hook_failures_total{hook,reason}`` (reason: ``exception``,
``timeout``, ``invalid_result``) and logged with the plugin's name, the hook and the
exception's type and place, never the arguments (they hold user content).
"""

from __future__ import annotations

import inspect
import logging
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pluggy
from prometheus_client import CollectorRegistry, Counter, Histogram
from twisted.internet import defer

from homeserver.http.errors import Codes, MatrixError
from plugins.types import EventView, Refusal, RoomView

logger = logging.getLogger(__name__)

GATE, NOTIFY, ANSWER = "gate", "notify", "answer"
MAX_REASON = 200
FAILED_CLOSED = "Refused by a server policy check that is unavailable right now"


@dataclass(frozen=True)
class HookPolicy:
    """How one hook is called: its kind and default timeout (seconds)."""

    kind: str
    timeout: float


#: Every hook with its kind and default timeout (``plugins_config.timeouts`` overrides).
HOOKS: dict[str, HookPolicy] = {
    "plugin_setup": HookPolicy(ANSWER, 30.0),
    "check_event_for_spam": HookPolicy(GATE, 5.0),
    "user_may_join_room": HookPolicy(GATE, 5.0),
    "user_may_invite": HookPolicy(GATE, 5.0),
    "user_may_create_room": HookPolicy(GATE, 5.0),
    "user_may_create_room_alias": HookPolicy(GATE, 5.0),
    "user_may_publish_room": HookPolicy(GATE, 5.0),
    "check_username_for_spam": HookPolicy(GATE, 5.0),
    "check_registration_for_spam": HookPolicy(GATE, 5.0),
    "scan_media": HookPolicy(ANSWER, 60.0),
    "check_password": HookPolicy(ANSWER, 10.0),
    "auth_provider_login_types": HookPolicy(ANSWER, 5.0),
    "auth_provider_login": HookPolicy(ANSWER, 10.0),
    "on_new_event": HookPolicy(NOTIFY, 30.0),
    "on_user_deactivated": HookPolicy(NOTIFY, 30.0),
    "on_security_event": HookPolicy(NOTIFY, 30.0),
    "rate_limit_policy": HookPolicy(ANSWER, 0.25),
    "export_user_data": HookPolicy(ANSWER, 60.0),
    "erase_user_data": HookPolicy(ANSWER, 60.0),
    # A plugin's own HTTP routes (ModuleApi.register_route), per request.
    "http": HookPolicy(ANSWER, 30.0),
}

_INVALID = object()


class HookFailed(Exception):
    """One plugin's call failed (raised, timed out, returned garbage): the hook's
    failure default applies. Carries the reason label only."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _gate_answer(value: Any) -> Any:
    """A gating hook's answer: None (allow), a MatrixError (refuse) or _INVALID."""
    if value is None or value is False:
        return None
    if value is True:
        return MatrixError(403, "Refused by a server policy", Codes.FORBIDDEN)
    if isinstance(value, Refusal):
        return value
    if isinstance(value, str):
        return MatrixError(403, value[:MAX_REASON] or "Refused by a server policy",
                           Codes.FORBIDDEN)
    return _INVALID


def _where(exc: BaseException) -> str:
    """``file:line`` of the innermost frame: enough to find the bug, no content."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"


class PluginHost:
    def __init__(self, pm: pluggy.PluginManager, registry: CollectorRegistry | None = None,
                 timeouts: Mapping[str, float] | None = None, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        unknown = set(timeouts or {}) - set(HOOKS)
        if unknown:
            from plugins.manager import PluginError
            raise PluginError(f"plugins_config.timeouts names unknown hooks: {sorted(unknown)}")
        self.pm = pm
        self._reactor = reactor
        self._timeouts = {name: float((timeouts or {}).get(name, p.timeout))
                          for name, p in HOOKS.items()}
        self._pending: set[defer.Deferred[Any]] = set()
        self._login_types: dict[str, str] = {}  # login type -> plugin name
        self.bind_registry(registry if registry is not None else CollectorRegistry())

    def bind_registry(self, registry: CollectorRegistry) -> None:
        """Create the hook metrics on the server's registry (which the composition root
        makes after the plugins are loaded)."""
        self._duration = Histogram(
            "parley_plugin_hook_duration_seconds", "Time one plugin took to answer one hook.",
            ["hook"], registry=registry,
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30))
        self._failures = Counter(
            "parley_plugin_hook_failures", "Plugin hook calls that raised, timed out or"
            " returned an invalid value (the hook's failure default applied).",
            ["hook", "reason"], registry=registry)

    # ---- the core: one plugin, one call

    def impls(self, hook: str) -> list[Any]:
        return list(getattr(self.pm.hook, hook).get_hookimpls())

    def timeout(self, hook: str) -> float:
        return self._timeouts[hook]

    def _failed(self, hook: str, plugin: str, reason: str, exc: BaseException | None) -> None:
        self._failures.labels(hook, reason).inc()
        if exc is not None:
            logger.warning("plugin %s failed in %s: %s (%s) at %s; the hook's default applies",
                           plugin, hook, reason, type(exc).__name__, _where(exc))
        else:
            logger.warning("plugin %s failed in %s: %s; the hook's default applies",
                           plugin, hook, reason)

    async def call_one(self, hook: str, impl: Any, kwargs: Mapping[str, Any],
                       validate: Callable[[Any], Any] = lambda v: v,
                       timeout_name: str | None = None) -> Any:
        """One plugin's answer to ``hook``, validated; raises :class:`HookFailed`
        (already logged and counted) instead of anything the plugin did."""
        return await self.call_fn(hook, impl.plugin_name, impl.function,
                                  [kwargs[a] for a in impl.argnames], validate, timeout_name)

    async def call_fn(self, hook: str, plugin: str, fn: Callable[..., Any], args: list[Any],
                      validate: Callable[[Any], Any] = lambda v: v,
                      timeout_name: str | None = None) -> Any:
        timeout = self._timeouts[timeout_name or hook]
        start = time.perf_counter()
        try:
            try:
                result = fn(*args)
                if isinstance(result, defer.Deferred) or inspect.isawaitable(result):
                    d = _as_deferred(result)
                    d.addTimeout(timeout, self._reactor)
                    result = await d
                elif time.perf_counter() - start > timeout:
                    raise HookFailed("timeout")
            except Refusal as refusal:
                result = refusal  # raising a Refusal is answering with one
        except HookFailed as e:
            self._failed(hook, plugin, e.reason, None)
            raise
        except (defer.TimeoutError, defer.CancelledError) as e:
            self._failed(hook, plugin, "timeout", None)
            raise HookFailed("timeout") from e
        except Exception as e:  # noqa: BLE001 (containment is the point)
            self._failed(hook, plugin, "exception", e)
            raise HookFailed("exception") from e
        finally:
            self._duration.labels(hook).observe(time.perf_counter() - start)
        try:
            checked = validate(result)
        except Exception:  # noqa: BLE001
            checked = _INVALID
        if checked is _INVALID:
            self._failed(hook, plugin, "invalid_result", None)
            raise HookFailed("invalid_result")
        return checked

    # ---- gating hooks (fail closed)

    async def gate(self, hook: str, **kwargs: Any) -> None:
        """Raise the first refusal (a MatrixError) any plugin gives; a failing plugin
        refuses (403)."""
        for impl in self.impls(hook):
            try:
                refusal = await self.call_one(hook, impl, kwargs, _gate_answer)
            except HookFailed as e:
                raise MatrixError(403, FAILED_CLOSED, Codes.FORBIDDEN) from e
            if refusal is not None:
                raise refusal

    async def check_event(self, event: Any, snap: Any) -> None:
        """An ``EventCreationHandler.event_validators`` entry: ``check_event_for_spam``."""
        if not self.impls("check_event_for_spam"):
            return
        room = RoomView.of_snapshot(event.room_id, event.room_version.identifier,
                                    snap.state_ids)
        await self.gate("check_event_for_spam", event=EventView.of(event), room=room)

    def gate_fn(self, hook: str, *names: str) -> Callable[..., Any]:
        """``async fn(*args)`` calling the gate ``hook`` with ``names`` as keywords (a
        check a handler holds without knowing about plugins)."""

        async def check(*args: Any) -> None:
            if self.impls(hook):
                await self.gate(hook, **dict(zip(names, args, strict=True)))

        return check

    # ---- authentication

    async def check_password(self, user_id: str, password: str) -> bool | None:
        """The first True/False a plugin answers; None when all pass (or fail)."""
        for impl in self.impls("check_password"):
            try:
                answer = await self.call_one(
                    "check_password", impl, {"user_id": user_id, "password": password},
                    lambda v: v if v is None or isinstance(v, bool) else _INVALID)
            except HookFailed:
                continue
            if answer is not None:
                return answer
        return None

    async def load_login_types(self) -> None:
        """Asks each plugin once for the login types it handles (at start-up)."""
        self._login_types = {}
        for impl in self.impls("auth_provider_login_types"):
            try:
                types = await self.call_one("auth_provider_login_types", impl, {}, _str_list)
            except HookFailed:
                continue
            for login_type in types or []:
                if login_type.startswith("m.login."):  # the spec's types stay the server's
                    logger.warning("plugin %s may not take over the login type %s",
                                   impl.plugin_name, login_type)
                    continue
                self._login_types.setdefault(login_type, impl.plugin_name)

    def login_types(self) -> list[str]:
        return list(self._login_types)

    async def auth_provider_login(self, login_type: str, body: Mapping[str, Any]) -> str | None:
        """The user id the plugin offering ``login_type`` vouches for, or None."""
        plugin = self._login_types.get(login_type)
        impl = next((i for i in self.impls("auth_provider_login") if i.plugin_name == plugin),
                    None)
        if impl is None:
            return None
        try:
            return await self.call_one(
                "auth_provider_login", impl, {"login_type": login_type, "body": dict(body)},
                lambda v: v if v is None or (isinstance(v, str) and v.startswith("@"))
                else _INVALID)
        except HookFailed:
            return None

    # ---- notifications (nothing waits for them)

    def notify(self, hook: str, **kwargs: Any) -> None:
        for impl in self.impls(hook):
            d = defer.ensureDeferred(self._notify_one(hook, impl, kwargs))
            self._pending.add(d)
            d.addBoth(lambda _r, d=d: self._pending.discard(d))

    async def _notify_one(self, hook: str, impl: Any, kwargs: Mapping[str, Any]) -> None:
        try:
            await self.call_one(hook, impl, kwargs)
        except HookFailed:
            pass

    async def drain(self) -> None:
        """Wait for the notifications in flight (tests, shutdown)."""
        while self._pending:
            await defer.DeferredList(list(self._pending))

    def on_new_event(self, record: Any) -> None:
        """An ``EventFanout`` subscriber."""
        if self.impls("on_new_event"):
            self.notify("on_new_event", event=EventView.of(record.event))

    async def on_user_deactivated(self, user_id: str) -> None:
        """An ``AccountHandler.on_deactivated`` entry."""
        self.notify("on_user_deactivated", user_id=user_id)

    def on_security_event(self, event: dict[str, Any]) -> None:
        self.notify("on_security_event", event=event)

    # ---- rate limits (fail open)

    async def rate_limit_factor(self, action: str, user_id: str | None,
                                ip: str | None) -> float | None:
        """The limiter's ``set_policy`` callable: the first factor a plugin gives for
        this action, user and IP (plugins in config order), or None."""
        kwargs = {"action": action, "user_id": user_id, "ip": ip}
        for impl in self.impls("rate_limit_policy"):
            try:
                value = await self.call_one("rate_limit_policy", impl, kwargs, _factor)
            except HookFailed:
                continue
            if value is not None:
                return value
        return None

    # ---- media (called on a thread; fail closed)

    def scan_media_blocking(self, path: str, content_type: str, sha256: str) -> str | None:
        """Each scanner in turn; the first reason refuses the upload. Runs on a thread:
        a scanner past its timeout cannot be interrupted, but its answer is discarded
        and the upload refused."""
        timeout = self._timeouts["scan_media"]
        for impl in self.impls("scan_media"):
            kwargs = {"path": path, "content_type": content_type, "sha256": sha256}
            start = time.perf_counter()
            try:
                value = impl.function(*[kwargs[a] for a in impl.argnames])
            except Exception as e:  # noqa: BLE001
                self._failed("scan_media", impl.plugin_name, "exception", e)
                return "scanner failed"
            finally:
                elapsed = time.perf_counter() - start
                self._duration.labels("scan_media").observe(elapsed)
            if elapsed > timeout:
                self._failed("scan_media", impl.plugin_name, "timeout", None)
                return "scanner timed out"
            if value is None:
                continue
            if not isinstance(value, str):
                self._failed("scan_media", impl.plugin_name, "invalid_result", None)
                return "scanner gave an invalid answer"
            return value[:MAX_REASON] or "refused by a scanner"
        return None

    # ---- data protection

    async def export_user_data(self, user_id: str) -> dict[str, Any]:
        """``{plugin name: its data}``; a failing plugin's entry is
        ``{"error": "plugin failed"}`` so the export shows the gap."""
        out: dict[str, Any] = {}
        for impl in self.impls("export_user_data"):
            try:
                data = await self.call_one("export_user_data", impl, {"user_id": user_id},
                                           _json_value)
            except HookFailed:
                out[impl.plugin_name] = {"error": "plugin failed"}
                continue
            if data is not None:
                out[impl.plugin_name] = data
        return out

    async def erase_user_data(self, user_id: str) -> list[str]:
        """Names of the plugins whose erasure failed (empty: all done)."""
        failed = []
        for impl in self.impls("erase_user_data"):
            try:
                await self.call_one("erase_user_data", impl, {"user_id": user_id})
            except HookFailed:
                failed.append(impl.plugin_name)
        return failed


def _as_deferred(result: Any) -> defer.Deferred[Any]:
    if isinstance(result, defer.Deferred):
        return result
    if inspect.iscoroutine(result):
        return defer.ensureDeferred(result)

    async def wait() -> Any:
        return await result

    return defer.ensureDeferred(wait())


def _factor(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0 <= value < float("inf"):
        return _INVALID
    return float(value)


def _str_list(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value):
        return list(value)
    return _INVALID


def _json_value(value: Any) -> Any:
    import json

    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return _INVALID
    return value

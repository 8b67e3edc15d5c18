"""The object each plugin receives in ``plugin_setup(api)``: its own validated config,
read-only lookups and its HTTP routes under ``/_parley/plugins/{name}/``.

Plugins never get a store, a database handle, the server's config or a secret: each
lookup is a narrow async function answering with a view type from
:mod:`plugins.types`.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator

from homeserver.http.errors import Codes, MatrixError
from plugins.host import _INVALID, HookFailed, PluginHost
from plugins.manager import PluginError
from plugins.types import EventView, UserView

PLUGIN_PREFIX = "/_parley/plugins"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")
_SUBPATH = re.compile(r"^[A-Za-z0-9_.~{}/-]{1,200}\Z")
METHODS = ("GET", "POST", "PUT", "DELETE")


@dataclass(frozen=True)
class PluginRequest:
    """What a plugin's route handler is given."""

    method: str
    user_id: str | None  # None on routes registered with auth="none"
    path_params: dict[str, str]
    query: dict[str, str]
    body: Any = None


@dataclass(frozen=True)
class ServerLookups:
    """The read-only lookups the server lends to every plugin's ModuleApi."""

    get_user: Callable[[str], Awaitable[UserView | None]]
    get_membership: Callable[[str, str], Awaitable[str | None]]
    get_state_event: Callable[[str, str, str], Awaitable[EventView | None]]
    add_route: Callable[..., None]  # Router.add
    server_name: str
    # ServerNoticesHandler.send_notice (raises when server notices are disabled).
    send_notice: Callable[[str, str], Awaitable[str | None]] | None = None


@dataclass
class ModuleApi:
    name: str
    config: dict[str, Any]
    _lookups: ServerLookups = field(repr=False)
    _host: PluginHost = field(repr=False)
    routes: list[str] = field(default_factory=list)

    @property
    def server_name(self) -> str:
        return self._lookups.server_name

    async def get_user(self, user_id: str) -> UserView | None:
        """A local account, or None."""
        return await self._lookups.get_user(user_id)

    async def user_exists(self, user_id: str) -> bool:
        return await self._lookups.get_user(user_id) is not None

    async def is_admin(self, user_id: str) -> bool:
        user = await self._lookups.get_user(user_id)
        return user is not None and user.is_admin

    async def get_membership(self, user_id: str, room_id: str) -> str | None:
        """``join``, ``invite``, ``leave``, ``ban``, ``knock`` or None."""
        return await self._lookups.get_membership(user_id, room_id)

    async def get_room_state(self, room_id: str, event_type: str,
                             state_key: str = "") -> EventView | None:
        """The room's current state event of that type and key, or None."""
        return await self._lookups.get_state_event(room_id, event_type, state_key)

    async def send_server_notice(self, user_id: str, body: str) -> str | None:
        """Send ``body`` (plain text) to ``user_id``'s server-notices room; the event id,
        or None for an unknown or deactivated user. Raises when the operator turned
        server notices off (``server_notices``)."""
        if self._lookups.send_notice is None:
            raise RuntimeError("server notices are not available on this server")
        return await self._lookups.send_notice(user_id, body)

    def register_route(self, method: str, subpath: str,
                       handler: Callable[[PluginRequest], Any], auth: str = "required") -> str:
        """Serve ``method /_parley/plugins/{name}/{subpath}`` on client listeners.
        ``subpath`` may hold ``{param}`` segments. ``handler(request)`` (sync or async)
        returns ``(status, json_body)``; ``auth`` is ``required``, ``optional`` or
        ``none``. A handler that raises, times out (``plugins_config.timeouts.http``)
        or returns anything else answers 503 ``M_UNKNOWN``. Only in ``plugin_setup``."""
        method = method.upper()
        if method not in METHODS:
            raise PluginError(f"plugin {self.name}: method must be one of {METHODS}")
        if not _SUBPATH.match(subpath) or ".." in subpath:
            raise PluginError(f"plugin {self.name}: bad route path {subpath!r}")
        template = f"{PLUGIN_PREFIX}/{self.name}/{subpath.lstrip('/')}"
        host, plugin = self._host, self.name

        async def serve(req: Any, **params: str) -> tuple[int, Any]:
            requester = req.requester
            request = PluginRequest(
                method, requester.user_id if requester is not None else None, dict(params),
                {k.decode("utf-8", "replace"): v[0].decode("utf-8", "replace")
                 for k, v in req.raw.args.items() if v},
                copy.deepcopy(req.body))
            try:
                return await host.call_fn("http", plugin, handler, [request], _http_answer)
            except HookFailed as e:
                raise MatrixError(503, "The plugin failed to answer", Codes.UNKNOWN) from e

        self._lookups.add_route(method, template, serve, auth=auth,
                                json_body=method in ("POST", "PUT"))
        self.routes.append(f"{method} {template}")
        return template


def _http_answer(value: Any) -> Any:
    if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], int)
            and 200 <= value[0] <= 599):
        return _INVALID
    try:
        json.dumps(value[1], allow_nan=False)
    except (TypeError, ValueError):
        return _INVALID
    return value


def validate_plugin_config(name: str, plugin: Any, config: Mapping[str, Any]) -> dict[str, Any]:
    """The plugin's config checked against its ``CONFIG_SCHEMA`` (a JSON schema on the
    plugin module or object, if it has one); an error names the plugin and the key."""
    if not _NAME.match(name.replace(":", ".")):
        raise PluginError(f"plugin name {name!r} is not usable in a URL path")
    out = copy.deepcopy(dict(config))
    schema = getattr(plugin, "CONFIG_SCHEMA", None)
    if schema is None:
        return out
    errors = sorted(Draft202012Validator(schema).iter_errors(out), key=lambda e: list(e.path))
    if errors:
        where = "/".join(str(p) for p in errors[0].path) or "(top)"
        raise PluginError(f"plugins: config of {name!r} at {where}: {errors[0].message}")
    return out


async def setup_plugins(host: PluginHost, configs: Mapping[str, Mapping[str, Any]],
                        lookups: ServerLookups) -> dict[str, ModuleApi]:
    """Validate each loaded plugin's config and call its ``plugin_setup(api)``; any
    failure stops start-up with a PluginError naming the plugin."""
    apis: dict[str, ModuleApi] = {}
    for name, plugin in host.pm.list_name_plugin():
        if plugin is None:
            continue
        apis[name] = ModuleApi(name, validate_plugin_config(name, plugin, configs.get(name, {})),
                               lookups, host)
    for impl in host.impls("plugin_setup"):
        api = apis[impl.plugin_name]
        try:
            await host.call_one("plugin_setup", impl, {"api": api})
        except HookFailed as e:
            raise PluginError(f"plugin {impl.plugin_name!r} failed to set up ({e.reason}):"
                              " see the log") from e
    await host.load_login_types()
    return apis

"""Connects the plugin host to the server: the built-in plugins, each hook's call
point (handlers hold plain ``may_*`` / check callables and never import plugins), the
module API's lookups and the plugins' set-up. Called once by the composition root."""

from __future__ import annotations

from typing import Any

from homeserver.config.model import Config
from homeserver.http.errors import MatrixError
from plugins.e2ee_only import OFF, E2eeOnlyPolicy
from plugins.host import PluginHost
from plugins.manager import PluginError
from plugins.media_scan import BuiltinMediaScanner
from plugins.module_api import ModuleApi, ServerLookups, setup_plugins
from plugins.types import EventView, UserView


def builtin_plugins(config: Config) -> list[tuple[str, Any]]:
    """Parley's own policies, loaded by the same mechanism as third-party plugins."""
    out: list[tuple[str, Any]] = []
    if config.e2ee_policy != OFF:
        out.append(("parley.e2ee_only", E2eeOnlyPolicy(config.e2ee_policy)))
    if config.media.builtin_scanner:
        out.append(("parley.builtin_media_scan",
                    BuiltinMediaScanner(config.media.sha256_deny_list_file)))
    return out


def _lookups(config: Config, stores: Any, rooms: Any, router: Any,
             notices: Any) -> ServerLookups:
    async def get_user(user_id: str) -> UserView | None:
        user = await stores.users.get_user(user_id)
        if user is None:
            return None
        return UserView(user.user_id, bool(user.is_admin), bool(user.is_guest),
                        bool(user.deactivated))

    async def get_membership(user_id: str, room_id: str) -> str | None:
        record = await stores.room_members.get_membership(user_id, room_id)
        return record.membership if record is not None else None

    async def get_state_event(room_id: str, event_type: str, state_key: str) -> EventView | None:
        try:
            state = await rooms.event_creation.current_state(room_id, [(event_type, state_key)])
        except MatrixError:  # unknown room
            return None
        event = state.get((event_type, state_key))
        return EventView.of(event) if event is not None else None

    return ServerLookups(get_user, get_membership, get_state_event, router.add,
                         config.server_name,
                         notices.send_notice if notices is not None else None)


async def wire_plugins(host: PluginHost, config: Config, stores: Any, accounts: Any,
                       rooms: Any, router: Any, rate_limiter: Any = None,
                       notices: Any = None) -> dict[str, ModuleApi]:
    """Install every hook at its call point, then set the plugins up (their config,
    routes, login types). Returns each plugin's ModuleApi by name."""
    loaded = {name for name, _ in host.pm.list_name_plugin()}
    unknown = set(config.plugin_configs) - loaded
    if unknown:
        raise PluginError(f"plugins: config given for plugins that are not loaded: {sorted(unknown)}")
    gate = host.gate_fn
    rooms.event_creation.event_validators.append(host.check_event)
    rooms.membership.may_join = gate("user_may_join_room", "user_id", "room_id", "is_invited")
    rooms.membership.may_invite = gate("user_may_invite", "inviter", "invitee", "room_id")
    creation = rooms.room_creation
    creation.may_create_room = gate("user_may_create_room", "user_id", "request")
    creation.may_create_alias = gate("user_may_create_room_alias", "user_id", "alias", "room_id")
    creation.may_publish = gate("user_may_publish_room", "user_id", "room_id")
    creation.may_invite = rooms.membership.may_invite
    rooms.directory.may_create_alias = creation.may_create_alias
    rooms.directory.may_publish = creation.may_publish
    accounts.registration.registration_check = gate(
        "check_registration_for_spam", "user_id", "ip", "user_agent", "is_guest")
    if host.impls("check_password"):
        accounts.password_auth.external_check = host.check_password
    accounts.password_auth.login_types = host.login_types
    accounts.password_auth.provider_login = host.auth_provider_login
    rooms.fanout.subscribe("plugins", host.on_new_event)
    accounts.account.on_deactivated.append(host.on_user_deactivated)
    if rate_limiter is not None and host.impls("rate_limit_policy"):
        rate_limiter.set_policy(host.rate_limit_factor)
    return await setup_plugins(host, config.plugin_configs,
                               _lookups(config, stores, rooms, router, notices))

"""Wiring of the moderation admin API (issue 15): media beyond one media, reports,
shadow-bans, blocked remote servers and admin-sent server notices, and the hooks the
shadow-ban and server-block checks need in the event builder, room creation,
membership and typing handlers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.auth.roles import Roles
from homeserver.handlers.admin_actions import AdminAccess
from homeserver.handlers.admin_media import AdminMediaBulkHandler
from homeserver.handlers.admin_notices import AdminNotices
from homeserver.handlers.admin_reports import AdminReportsHandler
from homeserver.handlers.server_blocks import ServerBlocks
from homeserver.handlers.server_notices import ServerNoticesHandler
from homeserver.handlers.shadow_ban import ShadowBans
from homeserver.http.router import Router
from homeserver.rest.admin._auth import AdminAuth
from homeserver.rest.admin.federation_blocks import BlockedServerServlets
from homeserver.rest.admin.media import AdminMediaServlets
from homeserver.rest.admin.reports import AdminReportServlets
from homeserver.rest.admin.server_notices import ServerNoticeServlets
from homeserver.rest.admin.shadow_ban import ShadowBanServlets

if TYPE_CHECKING:
    from homeserver.config.model import Config
    from homeserver.rest.routes import Components
    from storage.stores.all_stores import Stores


def register_moderation(router: Router, c: Components, admin_auth: AdminAuth) -> None:
    cfg = c.config
    AdminMediaServlets(AdminMediaBulkHandler(
        c.media, c.stores.media, c.stores.events, c.stores.rooms, c.stores.users, c.events),
        admin_auth).register(router)
    AdminReportServlets(AdminReportsHandler(
        c.clock, c.stores.reports, c.stores.events, c.event_creation, c.events,
        cfg.admin_reports_show_content), admin_auth).register(router)
    bans = ShadowBans(cfg.server_name, c.clock, c.stores.shadow_bans, c.stores.users, c.events,
                      admin_auth.role_of)
    ShadowBanServlets(bans, admin_auth).register(router)
    blocks = ServerBlocks(cfg.server_name, c.clock, c.stores.blocked_servers, c.events,
                          cfg.federation_blocked_servers)
    BlockedServerServlets(blocks, admin_auth).register(router)

    async def filter_invites(creator: str, invites: list[str]) -> list[str]:
        await blocks.filter_invites(invites)
        return await bans.filter_invites(creator, invites)

    c.event_creation.shadow_banned = bans.is_shadow_banned
    c.typing.shadow_banned = bans.is_shadow_banned
    c.room_creation.filter_invites = filter_invites
    c.membership.check_invitee = blocks.check_invitee


def register_server_notices(router: Router, config: Config, stores: Stores,
                            events: Any, notices: ServerNoticesHandler) -> None:
    """Called once the notices handler exists (it is built after the routes).
    ``events`` is the audit recorder, handed to the handlers (this module records
    nothing itself)."""
    admin_auth = AdminAuth(AdminAccess(stores.users, events, Roles(config.admin_roles),
                                       stores.roles))
    ServerNoticeServlets(AdminNotices(config.server_name, notices, events),
                         admin_auth).register(router)

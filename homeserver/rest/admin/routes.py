"""Registers the admin API (Synapse-compatible paths under ``/_synapse/admin``).

Kept apart from :mod:`homeserver.rest.routes` so the admin surface can be reviewed
(and, later, served on a separate listener) as one unit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from homeserver.handlers.admin_actions import AuditQueryHandler, RegistrationTokenAdmin
from homeserver.handlers.admin_users import AdminUsersDeps, AdminUsersHandler
from homeserver.handlers.federation_destinations import FederationDestinationsAdmin
from homeserver.handlers.gdpr_export import GdprExportHandler
from homeserver.handlers.purge_history import PurgeHistoryHandler
from homeserver.http.router import Router
from homeserver.rest.admin._auth import admin_auth_for
from homeserver.rest.admin.audit import AuditServlet
from homeserver.rest.admin.destinations import DestinationServlets
from homeserver.rest.admin.gdpr_export import AdminGdprExportServlet
from homeserver.rest.admin.moderation import register_moderation
from homeserver.rest.admin.purge_history import PurgeHistoryServlets
from homeserver.rest.admin.registration_tokens import RegistrationTokenServlets
from homeserver.rest.admin.rooms import AdminRoomServlets
from homeserver.rest.admin.shared_secret_register import SharedSecretRegisterServlet
from homeserver.rest.admin.users import AdminUserServlets

if TYPE_CHECKING:
    from homeserver.rest.routes import Components


def register_admin(router: Router, c: Components) -> None:
    admin_auth = admin_auth_for(c)  # roles and the permissions table
    AuditServlet(AuditQueryHandler(c.events), admin_auth).register(router)
    SharedSecretRegisterServlet(
        c.config.registration.shared_secret, c.clock, c.registration, c.devices,
        c.stores.profiles,
    ).register(router)
    RegistrationTokenServlets(
        c.stores.registration_tokens, admin_auth, c.clock,
        RegistrationTokenAdmin(c.stores.registration_tokens, c.events)).register(router)
    purge = PurgeHistoryHandler(c.config.server_name, c.clock, c.stores.purge_history,
                                c.stores.events, c.stores.rooms, audit=c.events)
    PurgeHistoryServlets(purge, admin_auth).register(router)
    if c.rooms_admin is not None:
        AdminRoomServlets(c.rooms_admin.rooms, c.rooms_admin.shutdown, c.rooms_admin.jobs,
                          admin_auth).register(router)
    if c.gdpr_export is not None:
        AdminGdprExportServlet(GdprExportHandler(c.gdpr_export, c.stores.users, c.events),
                               admin_auth, c.config.server_name).register(router)
    users = AdminUsersHandler(AdminUsersDeps(
        c.config.server_name, c.clock, c.stores.users, c.stores.roles, admin_auth.roles,
        c.stores.room_members, c.registration, c.account, c.profile, c.devices, c.sessions,
        c.events))
    AdminUserServlets(users, admin_auth).register(router)
    # Media, reports, shadow-bans, blocked servers (and their hooks): issue 15.
    register_moderation(router, c, admin_auth)
    # Federation destinations (issue 16): the sender's backoff state, retry now.
    DestinationServlets(FederationDestinationsAdmin(c.stores.federation_queue, c.events),
                        admin_auth).register(router)

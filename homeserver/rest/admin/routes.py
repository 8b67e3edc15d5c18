"""Registers the admin API (Synapse-compatible paths under ``/_synapse/admin``).

Kept apart from :mod:`homeserver.rest.routes` so the admin surface can be reviewed
(and, later, served on a separate listener) as one unit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from homeserver.handlers.purge_history import PurgeHistoryHandler
from homeserver.http.router import Router
from homeserver.rest.admin._auth import AdminAuth
from homeserver.rest.admin.audit import AuditServlet
from homeserver.rest.admin.purge_history import PurgeHistoryServlets
from homeserver.rest.admin.registration_tokens import RegistrationTokenServlets
from homeserver.rest.admin.shared_secret_register import SharedSecretRegisterServlet

if TYPE_CHECKING:
    from homeserver.rest.routes import Components


def register_admin(router: Router, c: Components) -> None:
    admin_auth = AdminAuth(c.stores.users, c.events)
    AuditServlet(c.events, admin_auth).register(router)
    SharedSecretRegisterServlet(
        c.config.registration.shared_secret, c.clock, c.registration, c.devices,
        c.events, c.stores.profiles,
    ).register(router)
    RegistrationTokenServlets(c.stores.registration_tokens, admin_auth, c.clock,
                              c.events).register(router)
    purge = PurgeHistoryHandler(c.config.server_name, c.clock, c.stores.purge_history,
                                c.stores.events, c.stores.rooms)
    PurgeHistoryServlets(purge, admin_auth, c.events).register(router)

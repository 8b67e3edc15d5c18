"""The one table of which permission each admin endpoint needs.

Keyed by ``(method, route template)`` exactly as registered on the router; enforced by
:meth:`homeserver.rest.admin._auth.AdminAuth.require_admin`, which refuses (403) any
admin route missing here, so a new endpoint is closed until it is declared.
tests/rest/test_admin_roles.py walks every admin route of the router with every role.
Which role holds which permission: homeserver/auth/roles.py.
"""

from __future__ import annotations

SA = "/_synapse/admin"
PA = "/_parley/admin/v1"

TABLE = f"""
# -- users (Synapse's paths, so synapse-admin works) --
GET    {SA}/v2/users                                        users.read
GET    {SA}/v2/users/{{userId}}                             users.read
PUT    {SA}/v2/users/{{userId}}                             users.write
POST   {SA}/v1/deactivate/{{userId}}                        users.deactivate
POST   {SA}/v1/reset_password/{{userId}}                    users.reset_password
GET    {SA}/v2/users/{{userId}}/devices                     users.read
POST   {SA}/v2/users/{{userId}}/delete_devices              users.sessions
GET    {SA}/v2/users/{{userId}}/devices/{{deviceId}}        users.read
DELETE {SA}/v2/users/{{userId}}/devices/{{deviceId}}        users.sessions
GET    {SA}/v1/users/{{userId}}/joined_rooms                users.read
PUT    {SA}/v1/suspend/{{userId}}                           users.suspend
GET    {SA}/v1/whois/{{userId}}                             users.read
GET    /_matrix/client/r0/admin/whois/{{userId}}            users.read
GET    /_matrix/client/v3/admin/whois/{{userId}}            users.read
# -- the spec's account locking and suspension --
GET    /_matrix/client/v1/admin/suspend/{{userId}}          users.read
PUT    /_matrix/client/v1/admin/suspend/{{userId}}          users.suspend
GET    /_matrix/client/v1/admin/lock/{{userId}}             users.read
PUT    /_matrix/client/v1/admin/lock/{{userId}}             users.lock
# -- roles and incident response (ours) --
GET    {PA}/roles                                           users.read
GET    {PA}/users/{{userId}}/role                           users.read
PUT    {PA}/users/{{userId}}/role                           users.roles
POST   {PA}/users/{{userId}}/lock_and_revoke                users.lock
POST   {PA}/users/{{userId}}/logout                         users.sessions
POST   {PA}/users/{{userId}}/force_password_reset           users.reset_password
# -- GDPR (data export holds more than metadata: admin only by default) --
POST   {PA}/users/{{userId}}/export                         users.export
# -- audit trail --
GET    {PA}/audit                                           audit.read
# -- rooms --
POST   {SA}/v1/purge_history/{{roomId}}                     rooms.write
POST   {SA}/v1/purge_history/{{roomId}}/{{eventId}}         rooms.write
GET    {SA}/v1/purge_history_status/{{purgeId}}             rooms.read
GET    {SA}/v1/rooms                                        rooms.read
GET    {SA}/v1/rooms/{{roomId}}                             rooms.read
GET    {SA}/v1/rooms/{{roomId}}/members                     rooms.read
GET    {SA}/v1/rooms/{{roomId}}/state                       rooms.read
GET    {SA}/v1/rooms/{{roomId}}/block                       rooms.read
PUT    {SA}/v1/rooms/{{roomId}}/block                       rooms.write
DELETE {SA}/v2/rooms/{{roomId}}                             rooms.write
GET    {SA}/v2/rooms/{{roomId}}/delete_status               rooms.read
GET    {SA}/v2/rooms/delete_status/{{deleteId}}             rooms.read
# -- background jobs (purges, shutdowns, exports, erasures...: metadata and progress) --
GET    {PA}/background_jobs                                 jobs.read
GET    {PA}/background_jobs/{{jobId}}                       jobs.read
# -- media --
POST   {SA}/v1/media/quarantine/{{serverName}}/{{mediaId}}   media.quarantine
POST   {SA}/v1/media/unquarantine/{{serverName}}/{{mediaId}} media.quarantine
DELETE {SA}/v1/media/{{serverName}}/{{mediaId}}             media.delete
GET    {SA}/v1/users/{{userId}}/media                       media.read
DELETE {SA}/v1/users/{{userId}}/media                       media.delete
GET    {SA}/v1/room/{{roomId}}/media                        media.read
POST   {SA}/v1/room/{{roomId}}/media/quarantine             media.quarantine
POST   {SA}/v1/user/{{userId}}/media/quarantine             media.quarantine
POST   {SA}/v1/media/protect/{{mediaId}}                    media.quarantine
POST   {SA}/v1/media/unprotect/{{mediaId}}                  media.quarantine
POST   {SA}/v1/media/delete                                 media.delete
POST   {SA}/v1/purge_media_cache                            media.delete
# -- event reports (metadata; content only if configured, for unencrypted rooms) --
GET    {SA}/v1/event_reports                                reports.read
GET    {SA}/v1/event_reports/{{reportId}}                   reports.read
DELETE {SA}/v1/event_reports/{{reportId}}                   reports.write
POST   {PA}/event_reports/{{reportId}}/resolve              reports.write
# -- server notices, shadow-bans, blocked remote servers --
POST   {SA}/v1/send_server_notice                           server_notices.send
PUT    {SA}/v1/send_server_notice/{{txnId}}                 server_notices.send
POST   {SA}/v1/users/{{userId}}/shadow_ban                  users.shadow_ban
DELETE {SA}/v1/users/{{userId}}/shadow_ban                  users.shadow_ban
GET    {PA}/federation/blocked_servers                      servers.read
GET    {PA}/federation/blocked_servers/{{serverName}}       servers.read
PUT    {PA}/federation/blocked_servers/{{serverName}}       servers.block
DELETE {PA}/federation/blocked_servers/{{serverName}}       servers.block
# -- registration tokens (secrets: admin only unless a custom role says so) --
GET    {SA}/v1/registration_tokens                          registration_tokens
POST   {SA}/v1/registration_tokens/new                      registration_tokens
GET    {SA}/v1/registration_tokens/{{token}}                registration_tokens
PUT    {SA}/v1/registration_tokens/{{token}}                registration_tokens
DELETE {SA}/v1/registration_tokens/{{token}}                registration_tokens
# -- federation destinations (Synapse's API: backoff state, shared rooms, retry now) --
GET    {SA}/v1/federation/destinations                      federation.read
GET    {SA}/v1/federation/destinations/{{destination}}      federation.read
GET    {SA}/v1/federation/destinations/{{destination}}/rooms  federation.read
POST   {SA}/v1/federation/destinations/{{destination}}/reset_connection  federation.write
"""

# Paths under these prefixes are admin routes (plus the client API's /admin/ ones).
ADMIN_PREFIXES = (f"{SA}/", "/_parley/admin/")


def _parse(text: str) -> dict[tuple[str, str], str]:
    from homeserver.auth.roles import PERMISSIONS

    out: dict[tuple[str, str], str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        method, template, permission = line.split()
        if permission not in PERMISSIONS:
            raise ValueError(f"unknown permission {permission!r} for {method} {template}")
        if (method, template) in out:
            raise ValueError(f"{method} {template} declared twice")
        out[(method, template)] = permission
    return out


ENDPOINT_PERMISSIONS: dict[tuple[str, str], str] = _parse(TABLE)


def is_admin_route(template: str) -> bool:
    """Whether a route template belongs to the admin API."""
    if template.startswith(ADMIN_PREFIXES):
        return True
    return template.startswith("/_matrix/client/") and "/admin/" in template


def permission_for(method: str, template: str) -> str | None:
    """The permission a route needs (HEAD as GET); None: undeclared (refused)."""
    return ENDPOINT_PERMISSIONS.get(("GET" if method == "HEAD" else method, template))

"""Every admin route (as registered on the router) with every role: allowed roles get
their answer, the others 403 M_FORBIDDEN, and no token 401. The permission each route
needs comes from the one table, homeserver/rest/admin/permissions.py."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from homeserver.auth.roles import BUILTIN_ROLES, PERMISSIONS
from homeserver.rest.admin.permissions import ENDPOINT_PERMISSIONS, is_admin_route
from tests.harness import HomeserverTestCase

CUSTOM = {"helpdesk": ["users.read", "users.lock"]}
ROLES = [*sorted(BUILTIN_ROLES), "helpdesk", None]
NEW_PASSWORD = "Another-Good-Passw0rd!"

# A valid body for each route that needs one (matched on the template's tail).
BODIES: list[tuple[str, str, Any]] = [
    ("PUT", r"/v2/users/\{userId\}$", {"displayname": "Renamed"}),
    ("POST", r"/deactivate/\{userId\}$", {"erase": False}),
    ("POST", r"/reset_password/\{userId\}$", {"new_password": NEW_PASSWORD}),
    ("POST", r"/delete_devices$", {"devices": ["TARGETDEV"]}),
    ("PUT", r"/_synapse/admin/v1/suspend/\{userId\}$", {"suspend": True}),
    ("PUT", r"/client/v1/admin/suspend/\{userId\}$", {"suspended": True}),
    ("PUT", r"/client/v1/admin/lock/\{userId\}$", {"locked": True}),
    ("PUT", r"/role$", {"role": "auditor"}),
    ("POST", r"/purge_history/\{roomId\}$", {"purge_up_to_ts": 1}),
    ("POST", r"/purge_history/\{roomId\}/\{eventId\}$", {}),
    ("POST", r"/registration_tokens/new$", {}),
    ("PUT", r"/rooms/\{roomId\}/block$", {"block": True}),
    ("PUT", r"/registration_tokens/\{token\}$", {"uses_allowed": 5}),
    ("POST", r"/send_server_notice$", {"user_id": "@actor_admin:test.local",
                                        "content": {"msgtype": "m.text", "body": "hi"}}),
    ("PUT", r"/send_server_notice/\{txnId\}$", {"user_id": "@actor_admin:test.local",
                                                 "content": {"msgtype": "m.text", "body": "hi"}}),
]
# A query string for each route that needs one.
QUERIES: list[tuple[str, str, str]] = [
    ("POST", r"/v1/media/delete$", "?before_ts=1"),
    ("POST", r"/v1/purge_media_cache$", "?before_ts=30000000000"),
]
# Allowed answers other than 2xx, where the walk cannot cheaply make the thing exist.
ALLOWED_NOT_FOUND = {("GET", "/_synapse/admin/v1/purge_history_status/{purgeId}"),
                     ("GET", "/_synapse/admin/v2/rooms/delete_status/{deleteId}"),
                     ("GET", "/_synapse/admin/v2/rooms/{roomId}/delete_status"),
                     ("GET", "/_parley/admin/v1/background_jobs/{jobId}")}


def query_for(method: str, template: str) -> str:
    for m, pattern, query in QUERIES:
        if m == method and re.search(pattern, template):
            return query
    return ""


def body_for(method: str, template: str) -> Any:
    for m, pattern, body in BODIES:
        if m == method and re.search(pattern, template):
            return body
    return {} if method in ("PUT", "POST") else None


class AdminRoleWalkTest(HomeserverTestCase):
    timeout = 600

    def config_overrides(self) -> dict[str, Any]:
        return {"admin_roles": CUSTOM}

    async def _actors(self) -> dict[str | None, str]:
        tokens: dict[str | None, str] = {}
        for role in ROLES:
            name = f"actor_{role or 'none'}"
            tokens[role] = (await self.register(name))["access_token"]
            if role is not None:
                await self.hs.stores.roles.set_role(f"@{name}:test.local", role)
        return tokens

    async def _fixtures(self, template: str, admin_token: str, n: int) -> dict[str, str]:
        """Fresh things for one call, so destructive calls never spoil the next one."""
        now = self.clock.time_msec()
        target = f"@target{n}:test.local"
        await self.hs.stores.users.create_user(target, None, now)
        await self.hs.stores.devices.upsert_device(target, "TARGETDEV", None, now, "-", "-")
        params = {"userId": target, "deviceId": "TARGETDEV", "purgeId": "nope",
                  "deleteId": "nope", "jobId": "nope"}
        if "{roomId}" in template:
            room = await self.request("POST", "/_matrix/client/v3/createRoom", {},
                                      token=admin_token)
            self.assertEqual(room.code, 200, room)
            params["roomId"] = room.json["room_id"]
            ids = []
            for i in range(2):
                sent = await self.request(
                    "PUT", f"/_matrix/client/v3/rooms/{quote(room.json['room_id'])}/send/"
                    f"m.room.message/t{n}-{i}", {"msgtype": "m.text", "body": "x"},
                    token=admin_token)
                self.assertEqual(sent.code, 200, sent)
                ids.append(sent.json["event_id"])
            params["eventId"] = ids[0]
        if "{mediaId}" in template:
            up = await self.request("POST", "/_matrix/media/v3/upload", raw_body=b"hello",
                                    headers={"Content-Type": "text/plain"}, token=admin_token)
            self.assertEqual(up.code, 200, up)
            server, media_id = up.json["content_uri"][len("mxc://"):].split("/", 1)
            params.update(serverName=server, mediaId=media_id)
        if "{reportId}" in template:
            report = await self.hs.stores.reports.add_report(
                "user", "@actor_none:test.local", now, target_user_id=target, reason="spam")
            params["reportId"] = str(report)
        if "/blocked_servers/{serverName}" in template:
            params["serverName"] = f"evil{n}.example"
            await self.hs.stores.blocked_servers.block(f"evil{n}.example", "@x:test.local",
                                                       now, None)
        if "{destination}" in template:  # a federation destination backing off
            params["destination"] = f"dest{n}.example"
            await self.hs.stores.federation_queue.set_retry(f"dest{n}.example", now, now,
                                                            60_000)
        params["txnId"] = f"txn{n}"
        if "{token}" in template:
            params["token"] = f"tok{n}"
            await self.hs.stores.registration_tokens.create(f"tok{n}", None, None, now)
        return params

    def _path(self, template: str, params: dict[str, str]) -> str:
        return re.sub(r"\{(\w+)\}", lambda m: quote(params[m.group(1)], safe=""), template)

    def admin_routes(self) -> list[tuple[str, str]]:
        return sorted({(r.method, r.template) for r in self.hs.router.routes
                       if is_admin_route(r.template) and r.auth != "none"})

    async def test_every_route_is_declared(self) -> None:
        routes = self.admin_routes()
        self.assertGreater(len(routes), 30)
        missing = [r for r in routes if r not in ENDPOINT_PERMISSIONS]
        self.assertEqual(missing, [], "admin routes without a permission in permissions.py")
        stale = [r for r in ENDPOINT_PERMISSIONS if r not in set(routes)]
        self.assertEqual(stale, [], "permissions.py lists routes the router does not have")
        self.assertEqual(set(BUILTIN_ROLES["admin"]), set(PERMISSIONS))

    async def test_walk_every_route_with_every_role(self) -> None:
        tokens = await self._actors()
        n = 0
        for method, template in self.admin_routes():
            permission = ENDPOINT_PERMISSIONS[(method, template)]
            for role in ROLES:
                n += 1
                params = await self._fixtures(template, tokens["admin"], n)
                path = self._path(template, params) + query_for(method, template)
                resp = await self.request(method, path, body_for(method, template),
                                          token=tokens[role])
                perms = BUILTIN_ROLES.get(role or "", frozenset()) if role != "helpdesk" \
                    else frozenset(CUSTOM["helpdesk"])
                what = f"{method} {template} as {role}: {resp!r}"
                if permission in perms:
                    if (method, template) in ALLOWED_NOT_FOUND:
                        self.assertIn(resp.code, (200, 404), what)
                    else:
                        self.assertIn(resp.code, (200, 201, 202), what)
                else:
                    self.assertMatrixError(resp, 403, "M_FORBIDDEN")
            anon = await self.request(method, self._path(template, params),
                                      body_for(method, template))
            self.assertMatrixError(anon, 401, "M_MISSING_TOKEN")

    async def test_denials_are_audited_with_role_and_permission(self) -> None:
        tokens = await self._actors()
        resp = await self.request("GET", "/_parley/admin/v1/audit", token=tokens["support"])
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        events = await self.hs.stores.security_events.list_events(event_type="admin_action")
        denied = [e for e in events if e.outcome == "failure"]
        self.assertEqual(len(denied), 1)
        self.assertEqual(denied[0].user_id, "@actor_support:test.local")
        self.assertEqual(denied[0].details["permission"], "audit.read")
        self.assertEqual(denied[0].details["role"], "support")

    async def test_admin_flag_means_admin_role(self) -> None:
        reg = await self.register("legacy")
        await self.hs.stores.users.set_admin("@legacy:test.local", True)
        resp = await self.request("GET", "/_parley/admin/v1/users/%40legacy%3Atest.local/role",
                                  token=reg["access_token"])
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["role"], "admin")

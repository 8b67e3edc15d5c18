"""POST /account/3pid/bind, /unbind and /delete through a trusted identity server
(SyTest tests/54identity.pl), and unbinding on deactivation."""

from __future__ import annotations

from typing import Any

from tests.harness import TEST_PASSWORD
from tests.rest.fake_identity_server import ACCESS_TOKEN, IdentityTestCase

CS = "/_matrix/client/v3"
ALICE = "@alice:test.local"


class BindTest(IdentityTestCase):
    async def bind(self, token: str, address: str, prefix: str = "unstable") -> Any:
        sid = self.ids.validate_identity("email", address)
        return await self.request("POST", f"/_matrix/client/{prefix}/account/3pid/bind", {
            "id_server": self.ids.name, "id_access_token": ACCESS_TOKEN, "sid": sid,
            "client_secret": "s3cret"}, token=token)

    async def test_bind_via_homeserver(self) -> None:
        token = await self.user("alice")
        resp = await self.bind(token, "bob1@example.com")
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(self.ids.lookup_identity("email", "bob1@example.com"), ALICE)
        _, path, _, body = self.ids.requests[-1]
        self.assertEqual(path, "/_matrix/identity/v2/3pid/bind")
        self.assertEqual(body["mxid"], ALICE)

    async def test_bind_then_delete_unbinds(self) -> None:
        token = await self.user("alice")
        self.assertEqual((await self.bind(token, "bob2@example.com", "v3")).code, 200)
        resp = await self.request("POST", f"{CS}/account/3pid/delete",
                                  {"medium": "email", "address": "bob2@example.com"}, token=token)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, {"id_server_unbind_result": "success"})
        self.assertIsNone(self.ids.lookup_identity("email", "bob2@example.com"))
        # The unbind is signed as this homeserver (X-Matrix), not with the user's token.
        # A second delete has nothing recorded to unbind.
        resp = await self.request("POST", f"{CS}/account/3pid/delete",
                                  {"medium": "email", "address": "bob2@example.com"}, token=token)
        self.assertEqual(resp.json, {"id_server_unbind_result": "no-support"})

    async def test_unbind_when_bound_out_of_band(self) -> None:
        token = await self.user("alice")
        await self.ids.bind_identity("email", "bob3@example.com", ALICE)
        resp = await self.request("POST", f"{CS}/account/3pid/delete", {
            "medium": "email", "address": "bob3@example.com", "id_server": self.ids.name},
            token=token)
        self.assertEqual(resp.json, {"id_server_unbind_result": "success"}, resp)
        self.assertIsNone(self.ids.lookup_identity("email", "bob3@example.com"))

    async def test_unbind_with_and_without_id_server(self) -> None:
        token = await self.user("alice")
        for address, with_server in (("bobby@example.com", True), ("bobby2@example.com", False)):
            self.assertEqual((await self.bind(token, address)).code, 200)
            body = {"medium": "email", "address": address}
            if with_server:
                body["id_server"] = self.ids.name
            resp = await self.request("POST", "/_matrix/client/unstable/account/3pid/unbind",
                                      body, token=token)
            self.assertEqual(resp.json, {"id_server_unbind_result": "success"}, resp)
            self.assertIsNone(self.ids.lookup_identity("email", address))

    async def test_someone_elses_binding_is_not_removed(self) -> None:
        token = await self.user("alice")
        await self.ids.bind_identity("email", "carol@example.com", "@carol:test.local")
        resp = await self.request("POST", f"{CS}/account/3pid/unbind", {
            "medium": "email", "address": "carol@example.com", "id_server": self.ids.name},
            token=token)
        self.assertEqual(resp.json, {"id_server_unbind_result": "no-support"})
        self.assertEqual(self.ids.lookup_identity("email", "carol@example.com"),
                         "@carol:test.local")

    async def test_deactivation_unbinds(self) -> None:
        token = await self.user("alice")
        self.assertEqual((await self.bind(token, "bob4@example.com")).code, 200)
        body: dict[str, Any] = {}
        first = await self.request("POST", f"{CS}/account/deactivate", body, token=token)
        body["auth"] = {"type": "m.login.password", "session": first.json["session"],
                        "identifier": {"type": "m.id.user", "user": "alice"},
                        "password": TEST_PASSWORD}
        resp = await self.request("POST", f"{CS}/account/deactivate", body, token=token)
        self.assertEqual(resp.code, 200, resp)
        self.assertIsNone(self.ids.lookup_identity("email", "bob4@example.com"))

    async def test_untrusted_server_refused_and_not_contacted(self) -> None:
        token = await self.user("alice")
        before = len(self.ids.requests)
        for server in ("evil.example.org", "127.0.0.1:1", "127.0.0.1", f"http://{self.ids.name}",
                       "169.254.169.254"):
            resp = await self.request("POST", f"{CS}/account/3pid/bind", {
                "id_server": server, "id_access_token": ACCESS_TOKEN, "sid": "session_0",
                "client_secret": "s3cret"}, token=token)
            self.assertMatrixError(resp, 400, "M_SERVER_NOT_TRUSTED")
            resp = await self.request("POST", f"{CS}/account/3pid/unbind", {
                "medium": "email", "address": "a@b.c", "id_server": server}, token=token)
            self.assertEqual(resp.json, {"id_server_unbind_result": "no-support"})
        self.assertEqual(len(self.ids.requests), before)

    async def test_refused_bind_is_an_error_and_not_recorded(self) -> None:
        token = await self.user("alice")
        resp = await self.request("POST", f"{CS}/account/3pid/bind", {
            "id_server": self.ids.name, "id_access_token": "wrong", "sid": "session_9",
            "client_secret": "s3cret"}, token=token)
        self.assertMatrixError(resp, 400, "M_THREEPID_AUTH_FAILED")
        resp = await self.request("POST", f"{CS}/account/3pid/delete",
                                  {"medium": "email", "address": "x@example.com"}, token=token)
        self.assertEqual(resp.json, {"id_server_unbind_result": "no-support"})

    async def test_unreachable_identity_server_is_502(self) -> None:
        token = await self.user("alice")
        sid = self.ids.validate_identity("email", "gone@example.com")
        await self.ids.stop()
        resp = await self.request("POST", f"{CS}/account/3pid/bind", {
            "id_server": self.ids.name, "id_access_token": ACCESS_TOKEN, "sid": sid,
            "client_secret": "s3cret"}, token=token)
        self.assertMatrixError(resp, 502, "M_UNKNOWN")


class BlocklistTest(IdentityTestCase):
    """A trusted *name* resolving to a loopback address is still refused (the URL
    previews' IP blocklist), unless its range is allow-listed."""

    def config_overrides(self) -> dict[str, Any]:
        port = self.ids.name.rpartition(":")[2]
        return {"identity_servers": {"trusted": [f"localhost:{port}"], "plain_http": True,
                                     "timeout": 5}}

    async def test_trusted_name_on_loopback_blocked(self) -> None:
        token = await self.user("alice")
        port = self.ids.name.rpartition(":")[2]
        sid = self.ids.validate_identity("email", "a@example.com")
        resp = await self.request("POST", f"{CS}/account/3pid/bind", {
            "id_server": f"localhost:{port}", "id_access_token": ACCESS_TOKEN, "sid": sid,
            "client_secret": "s3cret"}, token=token)
        self.assertMatrixError(resp, 502, "M_UNKNOWN")
        self.assertEqual(self.ids.requests, [])


class AllowlistTest(BlocklistTest):
    def config_overrides(self) -> dict[str, Any]:
        out = super().config_overrides()
        out["identity_servers"]["ip_range_allowlist"] = ["127.0.0.0/8"]
        return out

    async def test_trusted_name_on_loopback_blocked(self) -> None:
        token = await self.user("alice")
        port = self.ids.name.rpartition(":")[2]
        sid = self.ids.validate_identity("email", "a@example.com")
        resp = await self.request("POST", f"{CS}/account/3pid/bind", {
            "id_server": f"localhost:{port}", "id_access_token": ACCESS_TOKEN, "sid": sid,
            "client_secret": "s3cret"}, token=token)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(self.ids.lookup_identity("email", "a@example.com"), ALICE)

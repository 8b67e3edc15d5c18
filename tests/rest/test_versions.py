"""GET /_matrix/client/versions: every advertised spec version has its endpoints routed,
and unstable_features lists only what is served."""

from __future__ import annotations

import re
from typing import Any

from homeserver.rest.client.discovery import SPEC_VERSION_ENDPOINTS, SUPPORTED_VERSIONS
from tests.harness import HomeserverTestCase

_PARAM = re.compile(r"\{[^}]+\}")


def _concrete(template: str) -> str:
    """A path the template matches: every ``{param}`` becomes one plain segment."""
    return _PARAM.sub("x", template)


class VersionsTest(HomeserverTestCase):
    async def test_advertises_up_to_v1_15(self) -> None:
        resp = await self.request("GET", "/_matrix/client/versions")
        self.assertEqual(resp.code, 200, resp)
        versions = resp.json["versions"]
        for wanted in ("v1.6", "v1.7", "v1.11", "v1.13", "v1.15"):
            self.assertIn(wanted, versions)
        # v1.16 needs /sync use_state_after, v1.18 the admin lock/suspend endpoints.
        self.assertNotIn("v1.16", versions)
        self.assertNotIn("v1.18", versions)
        self.assertEqual(versions, SUPPORTED_VERSIONS)

    async def test_every_advertised_version_has_its_endpoints_routed(self) -> None:
        resp = await self.request("GET", "/_matrix/client/versions")
        missing = []
        for version in resp.json["versions"]:
            self.assertIn(version, SPEC_VERSION_ENDPOINTS)
            for method, template in SPEC_VERSION_ENDPOINTS[version]:
                route, _, _ = self.hs.router.match(method, _concrete(template))
                if route is None:
                    missing.append(f"{version}: {method} {template}")
        self.assertEqual(missing, [])

    async def test_key_endpoints_answer_over_http(self) -> None:
        """Not 404/405 M_UNRECOGNIZED for the new endpoints of v1.7 to v1.15 (unauthenticated
        calls are refused with 401, which proves they are routed)."""
        probes: list[tuple[str, str, Any]] = [
            ("POST", "/_matrix/media/v1/create", None),
            ("PUT", "/_matrix/media/v3/upload/test.local/abc", None),
            ("POST", "/_matrix/client/v1/appservice/as1/ping", {}),
            ("GET", "/_matrix/client/v1/media/config", None),
            ("GET", "/_matrix/client/v1/media/download/test.local/abc", None),
            ("GET", "/_matrix/client/v1/media/thumbnail/test.local/abc", None),
            ("GET", "/_matrix/client/v1/media/preview_url?url=https://example.org", None),
            ("POST", "/_matrix/client/v3/rooms/!r:test.local/report", {"reason": "x"}),
            ("POST", "/_matrix/client/v3/users/@u:test.local/report", {"reason": "x"}),
        ]
        for method, path, body in probes:
            resp = await self.request(method, path, body)
            self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")

    async def test_appservice_only_endpoints_refuse_user_tokens(self) -> None:
        user = await self.register("alice")
        token = user["access_token"]
        resp = await self.request("POST", "/_matrix/client/v1/appservice/some_as/ping",
                                  {"transaction_id": "t1"}, token=token)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.request(
            "PUT", "/_matrix/client/v3/directory/list/appservice/net/!room:test.local",
            {"visibility": "public"}, token=token)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.request("POST", "/_matrix/client/v1/appservice/some_as/ping", {})
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")

    async def test_unstable_features_without_forced_encryption(self) -> None:
        resp = await self.request("GET", "/_matrix/client/versions")
        features = resp.json["unstable_features"]
        self.assertTrue(features.get("org.matrix.msc3916.stable"))
        self.assertNotIn("io.element.e2ee_forced.private", features)
        self.assertTrue(all(v is True for v in features.values()), features)


class VersionsForcedEncryptionTest(HomeserverTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"e2ee": {"policy": "everywhere"}}

    async def test_forced_encryption_flags(self) -> None:
        resp = await self.request("GET", "/_matrix/client/versions")
        features = resp.json["unstable_features"]
        for room_type in ("public", "private", "trusted_private"):
            self.assertIs(features.get(f"io.element.e2ee_forced.{room_type}"), True)

"""listeners[].resources: each listener serves only the paths of the resources it names."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from homeserver.http.server import path_resources
from homeserver.rest.client.websocket import WS_PATH
from tests.harness import HomeserverTestCase

CLIENT_PATHS = [
    "/_matrix/client/versions",
    "/_matrix/client/v3/login",
    "/_matrix/media/v3/config",
    "/_matrix/client/v1/media/config",
    "/.well-known/matrix/client",
    "/_synapse/admin/v1/register",
    WS_PATH,
]
FEDERATION_PATHS = ["/_matrix/federation/v1/openid/userinfo?access_token=nope"]


class ListenerResourcesTest(HomeserverTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"listeners": [
            {"port": 0, "bind_addresses": ["127.0.0.1"], "resources": ["client"]},
            {"port": 0, "bind_addresses": ["127.0.0.1"], "resources": ["federation"]},
            {"port": 0, "bind_addresses": ["127.0.0.1"], "resources": ["metrics"]},
        ]}

    def _url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.hs.ports[index].getHost().port}"

    async def _get(self, index: int, path: str) -> Any:
        saved = self.base_url
        self.base_url = self._url(index)
        try:
            return await self.request("GET", path)
        finally:
            self.base_url = saved

    async def test_federation_listener_refuses_client_paths(self) -> None:
        for path in CLIENT_PATHS:
            resp = await self._get(1, path)
            self.assertMatrixError(resp, 404, "M_UNRECOGNIZED")
            # The usual headers are on the refusal too.
            self.assertEqual(resp.header("Access-Control-Allow-Origin"), "*")
            self.assertEqual(resp.header("X-Content-Type-Options"), "nosniff")

    async def test_client_listener_refuses_federation_paths(self) -> None:
        for path in FEDERATION_PATHS:
            resp = await self._get(0, path)
            self.assertMatrixError(resp, 404, "M_UNRECOGNIZED")

    async def test_each_listener_serves_its_own_paths(self) -> None:
        resp = await self._get(0, "/_matrix/client/versions")
        self.assertEqual(resp.code, 200, resp)
        resp = await self._get(0, "/_matrix/media/v3/config")
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        resp = await self._get(1, FEDERATION_PATHS[0])
        self.assertEqual(resp.code, 401, resp)
        self.assertNotEqual(resp.json.get("errcode"), "M_UNRECOGNIZED")

    async def test_metrics_listener_serves_no_api_but_health(self) -> None:
        for path in CLIENT_PATHS + FEDERATION_PATHS:
            resp = await self._get(2, path)
            self.assertMatrixError(resp, 404, "M_UNRECOGNIZED")
        for index in (0, 1, 2):
            resp = await self._get(index, "/health")
            self.assertEqual(resp.code, 200, resp)
            self.assertEqual(resp.raw, b"OK")

    async def test_refused_before_authentication_and_body_parsing(self) -> None:
        """A bad token or body on a path the listener does not serve is still a 404."""
        saved = self.base_url
        self.base_url = self._url(1)
        try:
            resp = await self.request("POST", "/_matrix/client/v3/login", raw_body=b"{nope",
                                      headers={"Authorization": "Bearer junk"})
        finally:
            self.base_url = saved
        self.assertMatrixError(resp, 404, "M_UNRECOGNIZED")


class PathResourcesTest(unittest.TestCase):
    def test_classification(self) -> None:
        self.assertEqual(path_resources(b"/_matrix/client/v3/sync"), {"client"})
        self.assertEqual(path_resources(b"/_matrix/client"), {"client"})
        self.assertEqual(path_resources(b"/_matrix/media/v3/upload"), {"client"})
        self.assertEqual(path_resources(b"/_parley/admin/v1/x"), {"client"})
        self.assertEqual(path_resources(b"/_matrix/federation/v1/version"), {"federation"})
        self.assertEqual(path_resources(b"/_matrix/key/v2/server"), {"federation"})
        self.assertEqual(path_resources(b"/.well-known/matrix/server"),
                         {"client", "federation"})
        self.assertEqual(path_resources(b"/_matrix/clientx/v3/sync"), frozenset())
        self.assertEqual(path_resources(b"/.well-known/matrix/clientx"), frozenset())
        self.assertEqual(path_resources(b"/"), frozenset())

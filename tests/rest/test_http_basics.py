"""The HTTP layer as clients see it: errors, headers, CORS, body limits, JSON parsing."""

from __future__ import annotations

from tests.harness import HomeserverTestCase


class HttpBasicsTest(HomeserverTestCase):
    def config_overrides(self) -> dict:
        return {"http": {"max_request_body_size": 4096}}

    async def test_unknown_endpoint_is_404_unrecognized(self) -> None:
        resp = await self.request("GET", "/_matrix/client/v3/no/such/thing")
        self.assertMatrixError(resp, 404, "M_UNRECOGNIZED")

    async def test_standard_reason_phrases(self) -> None:
        """429 and the rest carry their standard reason phrase (Twisted alone says
        "Unknown Status" for 429)."""
        from homeserver.http.server import _reason_phrase

        self.assertEqual(_reason_phrase(429), b"Too Many Requests")
        self.assertIsNone(_reason_phrase(599))
        resp = await self.request("GET", "/_matrix/client/v3/nope")
        self.assertEqual((resp.code, resp.phrase), (404, b"Not Found"))

    async def test_wrong_method_is_405_unrecognized(self) -> None:
        resp = await self.request("DELETE", "/_matrix/client/versions")
        self.assertMatrixError(resp, 405, "M_UNRECOGNIZED")
        self.assertIn("GET", resp.header("Allow"))

    async def test_security_and_cors_headers_on_every_response(self) -> None:
        for path in ("/_matrix/client/versions", "/_matrix/client/v3/nope"):
            resp = await self.request("GET", path)
            self.assertEqual(resp.header("X-Content-Type-Options"), "nosniff")
            self.assertEqual(resp.header("X-Frame-Options"), "DENY")
            self.assertEqual(resp.header("Referrer-Policy"), "no-referrer")
            self.assertIn("default-src 'none'", resp.header("Content-Security-Policy"))
            self.assertEqual(resp.header("Access-Control-Allow-Origin"), "*")
            # Plain HTTP: no HSTS (it is only meaningful, and only sent, over TLS).
            self.assertIsNone(resp.header("Strict-Transport-Security"))

    async def test_cors_preflight(self) -> None:
        resp = await self.request("OPTIONS", "/_matrix/client/v3/login",
                                  headers={"Origin": "https://app.example",
                                           "Access-Control-Request-Method": "POST"})
        self.assertEqual(resp.code, 200)
        self.assertEqual(resp.header("Access-Control-Allow-Origin"), "*")
        self.assertIn("POST", resp.header("Access-Control-Allow-Methods"))
        self.assertIn("Authorization", resp.header("Access-Control-Allow-Headers"))

    async def test_invalid_json_is_not_json(self) -> None:
        resp = await self.request("POST", "/_matrix/client/v3/login", raw_body=b"{nope")
        self.assertMatrixError(resp, 400, "M_NOT_JSON")

    async def test_json_array_is_bad_json(self) -> None:
        resp = await self.request("POST", "/_matrix/client/v3/login", raw_body=b"[1,2]")
        self.assertMatrixError(resp, 400, "M_BAD_JSON")

    async def test_nan_is_not_json(self) -> None:
        resp = await self.request("POST", "/_matrix/client/v3/login",
                                  raw_body=b'{"type": NaN}')
        self.assertMatrixError(resp, 400, "M_NOT_JSON")

    async def test_missing_required_field(self) -> None:
        resp = await self.request("POST", "/_matrix/client/v3/login", {})
        self.assertMatrixError(resp, 400, "M_MISSING_PARAM")
        self.assertIn("type", resp.json["error"])

    async def test_wrong_type(self) -> None:
        resp = await self.request("POST", "/_matrix/client/v3/login", {"type": 5})
        self.assertMatrixError(resp, 400, "M_BAD_JSON")

    async def test_oversized_body_is_413(self) -> None:
        resp = await self.request("POST", "/_matrix/client/v3/login",
                                  raw_body=b'{"type": "' + b"x" * 10000 + b'"}')
        self.assertMatrixError(resp, 413, "M_TOO_LARGE")

    async def test_health(self) -> None:
        resp = await self.request("GET", "/health")
        self.assertEqual(resp.code, 200)
        self.assertEqual(resp.raw, b"OK")

    async def test_versions(self) -> None:
        resp = await self.request("GET", "/_matrix/client/versions")
        self.assertEqual(resp.code, 200)
        self.assertIn("v1.15", resp.json["versions"])
        self.assertIsInstance(resp.json["unstable_features"], dict)

    async def test_well_known(self) -> None:
        resp = await self.request("GET", "/.well-known/matrix/client")
        self.assertEqual(resp.code, 200)
        self.assertEqual(resp.json["m.homeserver"]["base_url"], "http://127.0.0.1/")
        resp = await self.request("GET", "/.well-known/matrix/server")
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    async def test_capabilities_requires_auth(self) -> None:
        resp = await self.request("GET", "/_matrix/client/v3/capabilities")
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        reg = await self.register("capa")
        resp = await self.request("GET", "/_matrix/client/v3/capabilities",
                                  token=reg["access_token"])
        self.assertEqual(resp.code, 200)
        self.assertTrue(resp.json["capabilities"]["m.change_password"]["enabled"])


class HostileInputTest(HomeserverTestCase):
    """Inputs that databases or decoders choke on get a 400, never a 500."""

    async def test_bad_percent_encoding_and_nul_in_path(self) -> None:
        reg = await self.register("paths")
        for raw in ("%FF", "%00", "a%00b", "%C3%28"):
            resp = await self.request("GET", f"/_matrix/client/v3/devices/{raw}",
                                      token=reg["access_token"])
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")

    async def test_nul_in_query(self) -> None:
        resp = await self.request(
            "GET", "/_matrix/client/v1/register/m.login.registration_token/validity?token=%00")
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")

    async def test_nul_in_json_strings(self) -> None:
        reg = await self.register("nulls")
        resp = await self.request("PUT", f"/_matrix/client/v3/devices/{reg['device_id']}",
                                  raw_body=b'{"display_name": "a\\u0000b"}',
                                  token=reg["access_token"])
        self.assertMatrixError(resp, 400, "M_BAD_JSON")
        resp = await self.request("POST", "/_matrix/client/v3/login",
                                  raw_body=b'{"type": "m.login.password", "x\\u0000": 1}')
        self.assertMatrixError(resp, 400, "M_BAD_JSON")

    async def test_access_log_has_route_template_not_path(self) -> None:
        import logging

        lines: list[str] = []

        class Grab(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                lines.append(record.getMessage())

        handler = Grab()
        log = logging.getLogger("homeserver.http.server")
        old = log.level
        log.setLevel(logging.INFO)
        log.addHandler(handler)
        try:
            reg = await self.register("logme")
            await self.request("GET", f"/_matrix/client/v3/devices/{reg['device_id']}",
                               token=reg["access_token"])
        finally:
            log.removeHandler(handler)
            log.setLevel(old)
        text = "\n".join(lines)
        self.assertIn("/_matrix/client/v3/devices/{deviceId}", text)
        self.assertNotIn(reg["device_id"], text)

    async def test_lone_surrogates_and_deep_nesting(self) -> None:
        reg = await self.register("deep")
        resp = await self.request("PUT", f"/_matrix/client/v3/devices/{reg['device_id']}",
                                  raw_body=b'{"display_name": "\\ud800"}', token=reg["access_token"])
        self.assertMatrixError(resp, 400, "M_BAD_JSON")
        for depth in (150, 5000):
            body = b'{"display_name": "x", "deep": ' + b"[" * depth + b"]" * depth + b"}"
            resp = await self.request("PUT", f"/_matrix/client/v3/devices/{reg['device_id']}",
                                      raw_body=body, token=reg["access_token"])
            self.assertEqual(resp.code, 400, resp)
            self.assertIn(resp.json["errcode"], ("M_BAD_JSON", "M_NOT_JSON"))

"""The registration-token admin API, admin authorisation, and the client sign-up flow
that spends the tokens."""

from __future__ import annotations

from typing import Any

from tests.harness import TEST_PASSWORD, HomeserverTestCase, Response

BASE = "/_synapse/admin/v1/registration_tokens"
REGISTER = "/_matrix/client/v3/register"
VALIDITY = "/_matrix/client/v1/register/m.login.registration_token/validity"


class AdminTestCase(HomeserverTestCase):
    """Gives each test an admin (``self.admin``) and an ordinary user (``self.user``)."""

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        await self.hs.registration.create_account("admin", TEST_PASSWORD, is_admin=True)
        await self.hs.registration.create_account("user", TEST_PASSWORD)
        self.admin = (await self.login("admin")).json["access_token"]
        self.user = (await self.login("user")).json["access_token"]

    async def new_token(self, **body: Any) -> dict[str, Any]:
        resp = await self.request("POST", f"{BASE}/new", body, token=self.admin)
        self.assertEqual(resp.code, 200, resp)
        return resp.json

    def now_ms(self) -> int:
        return self.clock.time_msec()


class AdminAuthorisationTest(AdminTestCase):
    ENDPOINTS: list[tuple[str, str, Any]] = [
        ("GET", BASE, None),
        ("POST", f"{BASE}/new", {}),
        ("GET", f"{BASE}/abcd", None),
        ("PUT", f"{BASE}/abcd", {"uses_allowed": 1}),
        ("DELETE", f"{BASE}/abcd", None),
    ]

    def config_overrides(self) -> dict:
        return {"registration": {"allow_guests": True}}

    async def test_non_admin_is_forbidden(self) -> None:
        await self.new_token(token="abcd")
        for method, path, body in self.ENDPOINTS:
            resp = await self.request(method, path, body, token=self.user)
            self.assertMatrixError(resp, 403, "M_FORBIDDEN")
            self.assertEqual(resp.json["error"], "You are not a server admin")
        # Nothing changed.
        resp = await self.request("GET", f"{BASE}/abcd", token=self.admin)
        self.assertEqual(resp.json["uses_allowed"], None)
        events = await self.hs.stores.security_events.list_events(event_type="admin_action")
        denials = [e for e in events if e.outcome == "failure"]
        self.assertEqual(len(denials), len(self.ENDPOINTS))
        self.assertTrue(all(e.user_id == "@user:test.local" for e in denials))
        # Route templates, not raw paths: the token never reaches the trail.
        # (Only the recorded fields; hashes and ids are random hex.)
        recorded = [(e.details, e.target, e.reason) for e in denials]
        self.assertNotIn("abcd", repr(recorded))

    async def test_no_token_is_401(self) -> None:
        for method, path, body in self.ENDPOINTS:
            resp = await self.request(method, path, body)
            self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")

    async def test_revoking_admin_takes_effect_at_once(self) -> None:
        self.assertEqual((await self.request("GET", BASE, token=self.admin)).code, 200)
        await self.hs.stores.users.set_admin("@admin:test.local", False)
        self.assertMatrixError(await self.request("GET", BASE, token=self.admin), 403,
                               "M_FORBIDDEN")

    async def test_guest_is_refused(self) -> None:
        resp = await self.request("POST", REGISTER + "?kind=guest", {})
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("GET", BASE, token=resp.json["access_token"])
        self.assertMatrixError(resp, 403, "M_GUEST_ACCESS_FORBIDDEN")


class RegistrationTokenAdminTest(AdminTestCase):
    async def test_create_generated(self) -> None:
        body = await self.new_token()
        self.assertRegex(body["token"], r"^[A-Za-z0-9._~-]{16}$")
        self.assertEqual(body, {"token": body["token"], "uses_allowed": None, "pending": 0,
                                "completed": 0, "expiry_time": None})
        for length in (1, 64):
            self.assertEqual(len((await self.new_token(length=length))["token"]), length)

    async def test_generated_tokens_differ(self) -> None:
        tokens = {(await self.new_token())["token"] for _ in range(5)}
        self.assertEqual(len(tokens), 5)

    async def test_generation_space_exhausted_is_400(self) -> None:
        for ch in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-":
            await self.new_token(token=ch)
        resp = await self.request("POST", f"{BASE}/new", {"length": 1}, token=self.admin)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        self.assertEqual(len((await self.new_token(length=2))["token"]), 2)

    async def test_create_specific(self) -> None:
        expiry = self.now_ms() + 3_600_000
        body = await self.new_token(token="Ab0._~-z", uses_allowed=3, expiry_time=expiry)
        self.assertEqual(body, {"token": "Ab0._~-z", "uses_allowed": 3, "pending": 0,
                                "completed": 0, "expiry_time": expiry})
        resp = await self.request("GET", f"{BASE}/Ab0._~-z", token=self.admin)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, body)

    async def test_create_existing_is_invalid_param(self) -> None:
        await self.new_token(token="dup")
        resp = await self.request("POST", f"{BASE}/new", {"token": "dup", "uses_allowed": 5},
                                  token=self.admin)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        self.assertNotIn("dup", resp.json["error"])
        got = await self.request("GET", f"{BASE}/dup", token=self.admin)
        self.assertIsNone(got.json["uses_allowed"])

    async def test_create_rejects_bad_values(self) -> None:
        past = self.now_ms() - 1
        bad: list[dict[str, Any]] = [
            {"token": ""}, {"token": "a" * 65}, {"token": "has space"}, {"token": "slash/"},
            {"token": "ümlaut"}, {"token": 5}, {"token": None}, {"token": ["a"]},
            {"length": 0}, {"length": 65}, {"length": "16"}, {"length": True}, {"length": 1.5},
            {"length": None}, {"length": -3},
            {"uses_allowed": -1}, {"uses_allowed": "1"}, {"uses_allowed": True},
            {"uses_allowed": 1.5}, {"uses_allowed": 2**31}, {"uses_allowed": 10**30},
            {"expiry_time": past}, {"expiry_time": "soon"}, {"expiry_time": False},
            {"expiry_time": 2**53}, {"expiry_time": 10**30}, {"expiry_time": 1.5e15},
        ]
        for body in bad:
            resp = await self.request("POST", f"{BASE}/new", body, token=self.admin)
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        listed = await self.request("GET", BASE, token=self.admin)
        self.assertEqual(listed.json["registration_tokens"], [])

    async def test_create_accepts_edge_values(self) -> None:
        await self.new_token(uses_allowed=0)
        await self.new_token(uses_allowed=2**31 - 1)
        await self.new_token(uses_allowed=None, expiry_time=None)
        await self.new_token(expiry_time=2**53 - 1)

    async def test_create_bad_json(self) -> None:
        resp = await self.request("POST", f"{BASE}/new", raw_body=b"{nope", token=self.admin)
        self.assertMatrixError(resp, 400, "M_NOT_JSON")
        resp = await self.request("POST", f"{BASE}/new", raw_body=b"[1]", token=self.admin)
        self.assertMatrixError(resp, 400, "M_BAD_JSON")

    async def test_list_and_valid_filter(self) -> None:
        await self.new_token(token="a-unlimited")
        await self.new_token(token="b-used-up", uses_allowed=0)
        await self.new_token(token="c-expiring", expiry_time=self.now_ms() + 60_000)

        async def listed(query: str = "") -> list[str]:
            resp = await self.request("GET", BASE + query, token=self.admin)
            self.assertEqual(resp.code, 200, resp)
            return [t["token"] for t in resp.json["registration_tokens"]]

        self.assertEqual(await listed(), ["a-unlimited", "b-used-up", "c-expiring"])
        self.assertEqual(await listed("?valid=true"), ["a-unlimited", "c-expiring"])
        self.assertEqual(await listed("?valid=false"), ["b-used-up"])
        self.advance(61)
        self.assertEqual(await listed("?valid=true"), ["a-unlimited"])
        self.assertEqual(await listed("?valid=false"), ["b-used-up", "c-expiring"])
        resp = await self.request("GET", BASE + "?valid=maybe", token=self.admin)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")

    async def test_get_unknown(self) -> None:
        for name in ("nope", "new", "%20", "a%2Fb", "x" * 300):
            resp = await self.request("GET", f"{BASE}/{name}", token=self.admin)
            self.assertMatrixError(resp, 404, "M_NOT_FOUND")
            self.assertNotIn(name, resp.json["error"])
        # %00: NUL must not reach PostgreSQL (it cannot store it); the HTTP layer refuses it.
        resp = await self.request("GET", f"{BASE}/%00", token=self.admin)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")

    async def test_update(self) -> None:
        expiry = self.now_ms() + 3_600_000
        await self.new_token(token="upd", uses_allowed=1, expiry_time=expiry)

        async def put(body: Any) -> Response:
            return await self.request("PUT", f"{BASE}/upd", body, token=self.admin)

        resp = await put({"uses_allowed": 5})
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual((resp.json["uses_allowed"], resp.json["expiry_time"]), (5, expiry))
        later = expiry + 1000
        resp = await put({"expiry_time": later})
        self.assertEqual((resp.json["uses_allowed"], resp.json["expiry_time"]), (5, later))
        resp = await put({"uses_allowed": None, "expiry_time": None})
        self.assertEqual((resp.json["uses_allowed"], resp.json["expiry_time"]), (None, None))
        # Nothing to change: the token as it is (Synapse does the same).
        resp = await put({})
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, {"token": "upd", "uses_allowed": None, "pending": 0,
                                     "completed": 0, "expiry_time": None})
        for bad in ({"uses_allowed": -1}, {"uses_allowed": "2"}, {"uses_allowed": 2**40},
                    {"expiry_time": self.now_ms() - 5}, {"expiry_time": "x"},
                    {"expiry_time": True}):
            self.assertMatrixError(await put(bad), 400, "M_INVALID_PARAM")
        self.assertMatrixError(
            await self.request("PUT", f"{BASE}/upd", raw_body=b"{", token=self.admin),
            400, "M_NOT_JSON",
        )
        resp = await self.request("PUT", f"{BASE}/missing", {"uses_allowed": 1}, token=self.admin)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.request("PUT", f"{BASE}/missing", {}, token=self.admin)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    async def test_impossible_names_are_404_on_every_method(self) -> None:
        for name in ("%00", "%20", "x" * 65, "%C3%A4"):
            for method, body in (("PUT", {"uses_allowed": 1}), ("PUT", {}), ("DELETE", None)):
                resp = await self.request(method, f"{BASE}/{name}", body, token=self.admin)
                if name == "%00":
                    self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
                else:
                    self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    async def test_delete(self) -> None:
        await self.new_token(token="gone")
        resp = await self.request("DELETE", f"{BASE}/gone", token=self.admin)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, {})
        self.assertMatrixError(await self.request("GET", f"{BASE}/gone", token=self.admin),
                               404, "M_NOT_FOUND")
        self.assertMatrixError(await self.request("DELETE", f"{BASE}/gone", token=self.admin),
                               404, "M_NOT_FOUND")

    async def test_post_to_a_token_path_is_405(self) -> None:
        resp = await self.request("POST", f"{BASE}/abcd", {}, token=self.admin)
        self.assertMatrixError(resp, 405, "M_UNRECOGNIZED")

    async def test_admin_action_events(self) -> None:
        created = await self.new_token(uses_allowed=2)
        token = created["token"]
        await self.request("PUT", f"{BASE}/{token}", {"uses_allowed": 3}, token=self.admin)
        await self.request("PUT", f"{BASE}/{token}", {}, token=self.admin)  # no change: no event
        await self.request("DELETE", f"{BASE}/{token}", token=self.admin)
        await self.request("DELETE", f"{BASE}/{token}", token=self.admin)  # 404: no event
        events = await self.hs.stores.security_events.list_events(event_type="admin_action")
        events.reverse()  # newest first → oldest first
        self.assertEqual([(e.outcome, e.user_id, (e.details or {}).get("action")) for e in events], [
            ("success", "@admin:test.local", "registration_token_create"),
            ("success", "@admin:test.local", "registration_token_update"),
            ("success", "@admin:test.local", "registration_token_delete"),
        ])
        self.assertEqual(events[0].details, {"action": "registration_token_create",
                                             "generated": True, "uses_allowed": 2,
                                             "expiry_time": None})
        self.assertEqual(events[1].details, {"action": "registration_token_update",
                                             "uses_allowed": 3})
        self.assertNotIn(token, repr(events))


class RegistrationTokenFlowTest(AdminTestCase):
    """``registration.requires_token``: sign-up spends tokens made with the admin API."""

    def config_overrides(self) -> dict:
        return {"registration": {"requires_token": True}}

    async def start(self, username: str) -> str:
        resp = await self.request("POST", REGISTER,
                                  {"username": username, "password": TEST_PASSWORD})
        self.assertEqual(resp.code, 401, resp)
        self.assertEqual(resp.json["flows"], [{"stages": ["m.login.registration_token"]}])
        return resp.json["session"]

    async def finish(self, username: str, token: str) -> Response:
        session = await self.start(username)
        return await self.request("POST", REGISTER, {
            "username": username, "password": TEST_PASSWORD,
            "auth": {"type": "m.login.registration_token", "token": token, "session": session},
        })

    async def validity(self, token: str) -> bool:
        resp = await self.request("GET", f"{VALIDITY}?token={token}")
        self.assertEqual(resp.code, 200, resp)
        return resp.json["valid"]

    async def test_flow_is_offered_and_dummy_refused(self) -> None:
        session = await self.start("dummy")
        resp = await self.request("POST", REGISTER, {
            "username": "dummy", "password": TEST_PASSWORD,
            "auth": {"type": "m.login.dummy", "session": session},
        })
        self.assertEqual(resp.code, 401, resp)
        self.assertFalse(await self.hs.stores.users.user_exists("@dummy:test.local"))

    async def test_single_use_token(self) -> None:
        token = (await self.new_token(uses_allowed=1))["token"]
        self.assertTrue(await self.validity(token))
        first = await self.finish("first", token)
        self.assertEqual(first.code, 200, first)
        self.assertEqual(first.json["user_id"], "@first:test.local")
        info = await self.request("GET", f"{BASE}/{token}", token=self.admin)
        self.assertEqual((info.json["pending"], info.json["completed"]), (0, 1))
        self.assertFalse(await self.validity(token))

        second = await self.finish("second", token)
        self.assertEqual(second.code, 401, second)
        self.assertEqual(second.json["errcode"], "M_UNAUTHORIZED")
        self.assertIn("session", second.json)
        self.assertFalse(await self.hs.stores.users.user_exists("@second:test.local"))

        # Raising the limit through the admin API makes it usable again.
        await self.request("PUT", f"{BASE}/{token}", {"uses_allowed": 2}, token=self.admin)
        self.assertTrue(await self.validity(token))
        self.assertEqual((await self.finish("second", token)).code, 200)

    async def test_expired_token(self) -> None:
        token = (await self.new_token(expiry_time=self.now_ms() + 60_000))["token"]
        self.assertTrue(await self.validity(token))
        self.advance(61)
        self.assertFalse(await self.validity(token))
        resp = await self.finish("late", token)
        self.assertEqual(resp.code, 401, resp)
        self.assertEqual(resp.json["errcode"], "M_UNAUTHORIZED")
        self.assertFalse(await self.hs.stores.users.user_exists("@late:test.local"))

    async def test_deleted_and_unknown_tokens(self) -> None:
        token = (await self.new_token())["token"]
        await self.request("DELETE", f"{BASE}/{token}", token=self.admin)
        self.assertFalse(await self.validity(token))
        resp = await self.finish("nobody", token)
        self.assertEqual(resp.json.get("errcode"), "M_UNAUTHORIZED", resp)
        self.assertFalse(await self.validity("never-existed"))

    async def test_unlimited_token_serves_many(self) -> None:
        token = (await self.new_token(token="open-door"))["token"]
        for name in ("u1", "u2", "u3"):
            self.assertEqual((await self.finish(name, token)).code, 200)
        info = await self.request("GET", f"{BASE}/{token}", token=self.admin)
        self.assertEqual(info.json["completed"], 3)
        listed = await self.request("GET", BASE + "?valid=true", token=self.admin)
        self.assertEqual([t["token"] for t in listed.json["registration_tokens"]], ["open-door"])

    async def test_validity_needs_a_token(self) -> None:
        resp = await self.request("GET", VALIDITY)
        self.assertMatrixError(resp, 400, "M_MISSING_PARAM")

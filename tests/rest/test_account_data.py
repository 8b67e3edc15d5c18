"""GET/PUT /user/{userId}/account_data/{type} and the per-room variant, plus the
store's "what changed since" query that /sync uses."""

from __future__ import annotations

from urllib.parse import quote

from homeserver.handlers.account_data import AccountDataHandler
from tests.harness import HomeserverTestCase

ALICE = "@alice:test.local"
BOB = "@bob:test.local"
ROOM = "!room1:test.local"
ROOM_V12 = "!Nhcu5BS-UMnFX7hBVfVSoXiD7OgH6iRT-xyIuqDnpYQ"


def q(value: str) -> str:
    return quote(value, safe="")


def global_path(user_id: str, data_type: str, version: str = "v3") -> str:
    return f"/_matrix/client/{version}/user/{q(user_id)}/account_data/{q(data_type)}"


def room_path(user_id: str, room_id: str, data_type: str, version: str = "v3") -> str:
    return (f"/_matrix/client/{version}/user/{q(user_id)}/rooms/{q(room_id)}"
            f"/account_data/{q(data_type)}")


class AccountDataTest(HomeserverTestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.alice = (await self.register("alice"))["access_token"]
        self.bob = (await self.register("bob"))["access_token"]

    async def test_global_roundtrip_and_overwrite(self) -> None:
        content = {"theme": "dark", "nested": {"n": [1, 2.5, None, True]}, "uni": "ü🐇"}
        resp = await self.request("PUT", global_path(ALICE, "org.example.cfg"), content,
                                  token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, {})
        resp = await self.request("GET", global_path(ALICE, "org.example.cfg"), token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, content)
        # A second PUT replaces (not merges) the content.
        await self.request("PUT", global_path(ALICE, "org.example.cfg"), {"theme": "light"},
                           token=self.alice)
        resp = await self.request("GET", global_path(ALICE, "org.example.cfg"), token=self.alice)
        self.assertEqual(resp.json, {"theme": "light"})

    async def test_room_roundtrip_is_separate_from_global(self) -> None:
        await self.request("PUT", global_path(ALICE, "m.tag"), {"where": "global"},
                           token=self.alice)
        resp = await self.request("PUT", room_path(ALICE, ROOM, "m.tag"), {"where": "room"},
                                  token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("PUT", room_path(ALICE, ROOM_V12, "m.tag"), {"where": "v12"},
                                  token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        got = await self.request("GET", room_path(ALICE, ROOM, "m.tag"), token=self.alice)
        self.assertEqual(got.json, {"where": "room"})
        got = await self.request("GET", room_path(ALICE, ROOM_V12, "m.tag"), token=self.alice)
        self.assertEqual(got.json, {"where": "v12"})
        got = await self.request("GET", global_path(ALICE, "m.tag"), token=self.alice)
        self.assertEqual(got.json, {"where": "global"})
        got = await self.request("GET", room_path(ALICE, "!other:test.local", "m.tag"),
                                 token=self.alice)
        self.assertMatrixError(got, 404, "M_NOT_FOUND")

    async def test_empty_object_is_valid_content(self) -> None:
        resp = await self.request("PUT", global_path(ALICE, "x.empty"), {}, token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("GET", global_path(ALICE, "x.empty"), token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, {})

    async def test_r0_paths(self) -> None:
        resp = await self.request("PUT", global_path(ALICE, "x.r0", "r0"), {"a": 1},
                                  token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("GET", global_path(ALICE, "x.r0"), token=self.alice)
        self.assertEqual(resp.json, {"a": 1})
        resp = await self.request("GET", room_path(ALICE, ROOM, "x.r0", "r0"), token=self.alice)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    async def test_types_are_kept_apart_and_may_contain_slashes(self) -> None:
        await self.request("PUT", global_path(ALICE, "a/b"), {"v": 1}, token=self.alice)
        await self.request("PUT", global_path(ALICE, "a"), {"v": 2}, token=self.alice)
        self.assertEqual((await self.request("GET", global_path(ALICE, "a/b"),
                                             token=self.alice)).json, {"v": 1})
        self.assertEqual((await self.request("GET", global_path(ALICE, "a"),
                                             token=self.alice)).json, {"v": 2})

    async def test_missing_is_404(self) -> None:
        resp = await self.request("GET", global_path(ALICE, "never.set"), token=self.alice)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.request("GET", room_path(ALICE, ROOM, "never.set"), token=self.alice)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    async def test_other_users_data_is_forbidden(self) -> None:
        await self.request("PUT", global_path(ALICE, "secret"), {"s": 1}, token=self.alice)
        await self.request("PUT", room_path(ALICE, ROOM, "secret"), {"s": 1}, token=self.alice)
        for path in (global_path(ALICE, "secret"), room_path(ALICE, ROOM, "secret")):
            resp = await self.request("GET", path, token=self.bob)
            self.assertMatrixError(resp, 403, "M_FORBIDDEN")
            self.assertNotIn("s", resp.json)
            resp = await self.request("PUT", path, {"s": 2}, token=self.bob)
            self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        got = await self.request("GET", global_path(ALICE, "secret"), token=self.alice)
        self.assertEqual(got.json, {"s": 1})
        # Unknown and remote users are "other users" too.
        for user in ("@nobody:test.local", "@alice:elsewhere.example", "not-a-user"):
            resp = await self.request("PUT", global_path(user, "x"), {}, token=self.alice)
            self.assertMatrixError(resp, 403, "M_FORBIDDEN")

    async def test_no_token(self) -> None:
        for method, path in (("GET", global_path(ALICE, "x")), ("PUT", global_path(ALICE, "x")),
                             ("GET", room_path(ALICE, ROOM, "x")),
                             ("PUT", room_path(ALICE, ROOM, "x"))):
            resp = await self.request(method, path, {} if method == "PUT" else None)
            self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        global_data, rooms = await self.hs.stores.account_data.get_updated_account_data(ALICE, 0)
        self.assertEqual((global_data, rooms), ({}, {}))

    async def test_server_managed_types_are_refused(self) -> None:
        for data_type in ("m.fully_read", "m.push_rules"):
            for path in (global_path(ALICE, data_type), room_path(ALICE, ROOM, data_type)):
                resp = await self.request("PUT", path, {"event_id": "$x"}, token=self.alice)
                self.assertMatrixError(resp, 405, "M_BAD_JSON")
                self.assertIn(data_type, resp.json["error"])
        global_data, rooms = await self.hs.stores.account_data.get_updated_account_data(ALICE, 0)
        self.assertEqual((global_data, rooms), ({}, {}))

    async def test_server_can_still_write_managed_types(self) -> None:
        # /read_markers and /pushrules will write these through the handler directly.
        handler = AccountDataHandler(self.hs.stores.account_data)
        await handler.set_account_data(ALICE, ROOM, "m.fully_read", {"event_id": "$e"})
        resp = await self.request("GET", room_path(ALICE, ROOM, "m.fully_read"), token=self.alice)
        self.assertEqual(resp.json, {"event_id": "$e"})

    async def test_invalid_room_id(self) -> None:
        for bad in ("room1:test.local", "#alias:test.local", "!", "!:test.local", "!abc:",
                    "!a b:test.local", "!" + "a" * 300 + ":test.local"):
            for method in ("GET", "PUT"):
                resp = await self.request(method, room_path(ALICE, bad, "x"),
                                          {} if method == "PUT" else None, token=self.alice)
                self.assertMatrixError(resp, 400, "M_INVALID_PARAM")

    async def test_invalid_type(self) -> None:
        for bad in ("t" * 256, "bad\x00type", "new\nline"):
            resp = await self.request("PUT", global_path(ALICE, bad), {}, token=self.alice)
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
            resp = await self.request("GET", global_path(ALICE, bad), token=self.alice)
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.request("PUT", global_path(ALICE, "t" * 255), {"ok": 1}, token=self.alice)
        self.assertEqual(resp.code, 200, resp)

    async def test_body_must_be_a_json_object(self) -> None:
        path = global_path(ALICE, "x.body")
        for raw, errcode in ((b"[1]", "M_BAD_JSON"), (b'"text"', "M_BAD_JSON"), (b"12", "M_BAD_JSON"),
                             (b"null", "M_BAD_JSON"), (b"{oops", "M_NOT_JSON"),
                             (b'{"a": NaN}', "M_NOT_JSON"),
                             (b'{"big": 1e999}', "M_BAD_JSON"),
                             (b'{"s": "\\udc00"}', "M_BAD_JSON")):
            resp = await self.request("PUT", path, raw_body=raw, token=self.alice)
            self.assertMatrixError(resp, 400, errcode)
            resp = await self.request("PUT", room_path(ALICE, ROOM, "x.body"), raw_body=raw,
                                      token=self.alice)
            self.assertMatrixError(resp, 400, errcode)
        resp = await self.request("GET", path, token=self.alice)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    async def test_nesting_limit(self) -> None:
        def nested(depth: int) -> bytes:
            return b'{"a":' * (depth - 1) + b"[]" + b"}" * (depth - 1)

        path = global_path(ALICE, "x.deep")
        resp = await self.request("PUT", path, raw_body=nested(100), token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("GET", path, token=self.alice)
        self.assertEqual(resp.raw.count(b"{"), 99)
        resp = await self.request("PUT", path, raw_body=nested(101), token=self.alice)
        self.assertMatrixError(resp, 400, "M_BAD_JSON")

    async def test_nul_inside_content_is_refused(self) -> None:
        for body in ({"k\x00": "v"}, {"k": ["v\x00"]}):
            resp = await self.request("PUT", global_path(ALICE, "x.nul"), body, token=self.alice)
            self.assertMatrixError(resp, 400, "M_BAD_JSON")
        resp = await self.request("GET", global_path(ALICE, "x.nul"), token=self.alice)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    async def test_wrong_method(self) -> None:
        resp = await self.request("POST", global_path(ALICE, "x"), {}, token=self.alice)
        self.assertMatrixError(resp, 405, "M_UNRECOGNIZED")


class AccountDataStreamTest(HomeserverTestCase):
    """``get_updated_account_data``: the "changed since position X" query /sync will use."""

    async def test_changes_since_position(self) -> None:
        store = self.hs.stores.account_data
        self.assertEqual(await store.get_updated_account_data(ALICE, 0), ({}, {}))

        s1 = await store.set_account_data(ALICE, None, "a", '{"v":1}')
        s2 = await store.set_account_data(ALICE, ROOM, "r", '{"v":2}')
        s3 = await store.set_account_data(BOB, None, "a", '{"bob":true}')
        self.assertLess(s1, s2)
        self.assertLess(s2, s3)

        self.assertEqual(await store.get_updated_account_data(ALICE, 0),
                         ({"a": {"v": 1}}, {ROOM: {"r": {"v": 2}}}))
        self.assertEqual(await store.get_updated_account_data(ALICE, s1),
                         ({}, {ROOM: {"r": {"v": 2}}}))
        self.assertEqual(await store.get_updated_account_data(ALICE, s3), ({}, {}))
        self.assertEqual(await store.get_updated_account_data(BOB, 0), ({"a": {"bob": True}}, {}))

        # Rewriting an entry moves it to a new position, so it shows up again.
        s4 = await store.set_account_data(ALICE, None, "a", '{"v":3}')
        self.assertGreater(s4, s3)
        self.assertEqual(await store.get_updated_account_data(ALICE, s3), ({"a": {"v": 3}}, {}))
        self.assertEqual(await store.get_updated_account_data(ALICE, s4), ({}, {}))

    async def test_http_writes_advance_the_stream(self) -> None:
        token = (await self.register("alice"))["access_token"]
        store = self.hs.stores.account_data
        await self.request("PUT", global_path(ALICE, "one"), {"n": 1}, token=token)
        mark = await store.set_account_data(BOB, None, "mark", "{}")
        await self.request("PUT", room_path(ALICE, ROOM, "two"), {"n": 2}, token=token)
        self.assertEqual(await store.get_updated_account_data(ALICE, 0),
                         ({"one": {"n": 1}}, {ROOM: {"two": {"n": 2}}}))
        self.assertEqual(await store.get_updated_account_data(ALICE, mark),
                         ({}, {ROOM: {"two": {"n": 2}}}))

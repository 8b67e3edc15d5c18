"""POST /user/{userId}/filter and GET /user/{userId}/filter/{filterId}."""

from __future__ import annotations

from urllib.parse import quote

from twisted.internet import defer

from homeserver.handlers.filters import FilterHandler
from homeserver.http.errors import MatrixError
from tests.harness import HomeserverTestCase

ALICE = "@alice:test.local"
BOB = "@bob:test.local"

# The spec's example filter.
SPEC_FILTER = {
    "room": {
        "state": {"types": ["m.room.*"], "not_rooms": ["!726s6s6q:example.com"]},
        "timeline": {"limit": 10, "types": ["m.room.message"],
                     "not_rooms": ["!726s6s6q:example.com"], "not_senders": ["@spam:example.com"]},
        "ephemeral": {"types": ["m.receipt", "m.typing"], "not_rooms": ["!726s6s6q:example.com"],
                      "not_senders": ["@spam:example.com"]},
    },
    "presence": {"types": ["m.presence"], "not_senders": ["@alice:example.com"]},
    "event_format": "client",
    "event_fields": ["type", "content", "sender"],
}


def upload_path(user_id: str, version: str = "v3") -> str:
    return f"/_matrix/client/{version}/user/{quote(user_id, safe='')}/filter"


def filter_path(user_id: str, filter_id: str, version: str = "v3") -> str:
    return f"{upload_path(user_id, version)}/{quote(filter_id, safe='')}"


class FilterTest(HomeserverTestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.alice = (await self.register("alice"))["access_token"]
        self.bob = (await self.register("bob"))["access_token"]

    async def upload(self, body: dict, token: str | None = None, user: str = ALICE) -> str:
        resp = await self.request("POST", upload_path(user), body, token=token or self.alice)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(set(resp.json), {"filter_id"})
        self.assertIsInstance(resp.json["filter_id"], str)
        return resp.json["filter_id"]

    async def test_upload_and_download_spec_example(self) -> None:
        filter_id = await self.upload(SPEC_FILTER)
        self.assertFalse(filter_id.startswith("{"))
        resp = await self.request("GET", filter_path(ALICE, filter_id), token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, SPEC_FILTER)

    async def test_ids_increase_per_user(self) -> None:
        ids = [await self.upload({"room": {"timeline": {"limit": n}}}) for n in range(1, 4)]
        self.assertEqual(ids, ["0", "1", "2"])
        # Bob's numbering is his own.
        self.assertEqual(await self.upload({"presence": {"limit": 1}}, token=self.bob, user=BOB),
                         "0")
        for n, filter_id in enumerate(ids, start=1):
            resp = await self.request("GET", filter_path(ALICE, filter_id), token=self.alice)
            self.assertEqual(resp.json, {"room": {"timeline": {"limit": n}}})
        resp = await self.request("GET", filter_path(BOB, "0"), token=self.bob)
        self.assertEqual(resp.json, {"presence": {"limit": 1}})

    async def test_identical_filter_reuses_id(self) -> None:
        first = await self.upload({"room": {"timeline": {"limit": 5, "types": ["m.room.message"]}}})
        # Same filter, other key order: same id, nothing new stored.
        again = await self.upload({"room": {"timeline": {"types": ["m.room.message"], "limit": 5}}})
        self.assertEqual(first, again)
        other = await self.upload({"room": {"timeline": {"limit": 6}}})
        self.assertNotEqual(other, first)

    async def test_empty_filter_and_unknown_keys(self) -> None:
        empty = await self.upload({})
        resp = await self.request("GET", filter_path(ALICE, empty), token=self.alice)
        self.assertEqual(resp.json, {})
        body = {"room": {"timeline": {"limit": 0, "org.matrix.msc3874.not_rel_types": ["x"]},
                         "include_leave": True, "state": {"lazy_load_members": True}},
                "org.example.future": {"anything": [1, "two"]}}
        filter_id = await self.upload(body)
        resp = await self.request("GET", filter_path(ALICE, filter_id), token=self.alice)
        self.assertEqual(resp.json, body)

    async def test_r0_paths(self) -> None:
        resp = await self.request("POST", upload_path(ALICE, "r0"), {"presence": {"types": []}},
                                  token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("GET", filter_path(ALICE, resp.json["filter_id"], "r0"),
                                  token=self.alice)
        self.assertEqual(resp.json, {"presence": {"types": []}})

    async def test_invalid_filters(self) -> None:
        cases = [
            ({"room": {"timeline": {"limit": -1}}}, "M_INVALID_PARAM"),
            ({"room": {"timeline": {"limit": 1.5}}}, "M_BAD_JSON"),
            ({"room": {"timeline": {"limit": "10"}}}, "M_BAD_JSON"),
            ({"room": {"timeline": {"types": "m.room.message"}}}, "M_BAD_JSON"),
            ({"room": {"state": {"not_types": [1]}}}, "M_BAD_JSON"),
            ({"room": {"ephemeral": {"senders": ["alice"]}}}, "M_INVALID_PARAM"),
            ({"room": {"account_data": {"rooms": ["#alias:test.local"]}}}, "M_INVALID_PARAM"),
            ({"room": {"rooms": "!a:test.local"}}, "M_BAD_JSON"),
            ({"room": {"not_rooms": ["room"]}}, "M_INVALID_PARAM"),
            ({"room": {"include_leave": "yes"}}, "M_BAD_JSON"),
            ({"room": {"timeline": {"lazy_load_members": 1}}}, "M_BAD_JSON"),
            ({"room": {"timeline": {"contains_url": "true"}}}, "M_BAD_JSON"),
            ({"room": []}, "M_BAD_JSON"),
            ({"room": {"timeline": None}}, "M_BAD_JSON"),
            ({"presence": {"not_senders": [None]}}, "M_BAD_JSON"),
            ({"account_data": {"limit": -5}}, "M_INVALID_PARAM"),
            ({"event_format": "xml"}, "M_INVALID_PARAM"),
            ({"event_format": 1}, "M_BAD_JSON"),
            ({"event_fields": "content.body"}, "M_BAD_JSON"),
            ({"event_fields": [["content"]]}, "M_BAD_JSON"),
        ]
        for body, errcode in cases:
            resp = await self.request("POST", upload_path(ALICE), body, token=self.alice)
            self.assertMatrixError(resp, 400, errcode)
        # Nothing was stored: the next good filter still gets id 0.
        self.assertEqual(await self.upload({}), "0")

    async def test_unrepresentable_values(self) -> None:
        for raw, errcode in ((b'{"room": {"timeline": {"limit": 1e999}}}', "M_BAD_JSON"),
                             (b'{"x": 1e999}', "M_BAD_JSON"),
                             (b'{"x": "\\ud800"}', "M_BAD_JSON"),
                             (b'{"x": ' * 101 + b"1" + b"}" * 101, "M_BAD_JSON"),
                             (b"{bad json", "M_NOT_JSON"),
                             (b"[]", "M_BAD_JSON")):
            resp = await self.request("POST", upload_path(ALICE), raw_body=raw, token=self.alice)
            self.assertMatrixError(resp, 400, errcode)

    async def test_other_user_is_forbidden(self) -> None:
        filter_id = await self.upload(SPEC_FILTER)
        resp = await self.request("GET", filter_path(ALICE, filter_id), token=self.bob)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        self.assertNotIn("room", resp.json)
        resp = await self.request("POST", upload_path(ALICE), {}, token=self.bob)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        for user in ("@nobody:test.local", "@alice:elsewhere.example"):
            resp = await self.request("POST", upload_path(user), {}, token=self.alice)
            self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        # Bob got no filter of his own out of it.
        resp = await self.request("GET", filter_path(BOB, "0"), token=self.bob)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    async def test_unknown_and_malformed_ids_are_404(self) -> None:
        await self.upload({})
        for filter_id in ("1", "99", "abc", "-1", "01", "1.0", "{}", "9" * 19, " 0"):
            resp = await self.request("GET", filter_path(ALICE, filter_id), token=self.alice)
            self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    async def test_no_token(self) -> None:
        resp = await self.request("POST", upload_path(ALICE), {})
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        resp = await self.request("GET", filter_path(ALICE, "0"))
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")

    async def test_filters_are_immutable(self) -> None:
        filter_id = await self.upload({"room": {"timeline": {"limit": 1}}})
        resp = await self.request("PUT", filter_path(ALICE, filter_id), {}, token=self.alice)
        self.assertMatrixError(resp, 405, "M_UNRECOGNIZED")
        resp = await self.request("DELETE", filter_path(ALICE, filter_id), token=self.alice)
        self.assertMatrixError(resp, 405, "M_UNRECOGNIZED")

    async def test_handler_get_filter_for_sync(self) -> None:
        filter_id = await self.upload(SPEC_FILTER)
        handler = FilterHandler(self.hs.stores.filters)
        self.assertEqual(await handler.get_filter(ALICE, filter_id), SPEC_FILTER)
        self.assertEqual(await handler.get_filter(ALICE, int(filter_id)), SPEC_FILTER)
        for bad in ("7", "x", 7):
            with self.assertRaises(MatrixError) as ctx:
                await handler.get_filter(ALICE, bad)
            self.assertEqual((ctx.exception.code, ctx.exception.errcode), (404, "M_NOT_FOUND"))
        with self.assertRaises(MatrixError):
            await handler.get_filter(BOB, filter_id)


class FilterStoreTest(HomeserverTestCase):
    async def test_concurrent_uploads_get_distinct_ids(self) -> None:
        """On PostgreSQL these race for the same MAX()+1 and the losers retry."""
        store = self.hs.stores.filters
        ds = [defer.ensureDeferred(store.add_filter(ALICE, f'{{"n":{n}}}')) for n in range(8)]
        ids = await defer.gatherResults(ds, consumeErrors=True)
        self.assertEqual(sorted(ids), list(range(8)))
        for n, filter_id in enumerate(ids):
            self.assertEqual(await store.get_filter(ALICE, filter_id), {"n": n})

"""Out-of-range integers and garbage tokens are 400s, never 500s (issue 11, finding 10).

A sweep over every GET route with huge, negative, fractional and malformed values for
every integer and token parameter the client API uses, plus targeted checks of the
parameters that must be refused with 400 ``M_INVALID_PARAM``.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from homeserver.http.errors import MatrixError
from homeserver.http.opaque_tokens import encode_token
from homeserver.http.params import MAX_INT64, MAX_POSITION, parse_int
from tests.rest.room_helpers import CS, RoomTestCase, q

HUGE = "9" * 30
BIG = "9" * 20
# Each value of each parameter below is sent on its own, with timeout=0 (so long-polls
# answer at once) unless the parameter is the timeout itself.
SWEEP_VALUES = (HUGE, "-1", "1e400", "garbage")
PARAMS = ("since", "limit", "from", "to", "timeout", "ts", "max_depth", "timeout_ms",
          "width", "height", "version", "at", "next_batch", "dir", "filter")
TOKENS = {
    "from": ("t" + HUGE, "s" + HUGE + "_0", "s1_" + HUGE, "t-1", "W10", "WzEsMl0", "=" * 5),
    "to": ("t" + HUGE, "s" + HUGE + "_0"),
    "since": ("s" + HUGE + "_0", "s0_" + HUGE, "s1_2_3_4_5_6_" + HUGE, "W10", "eyJ9"),
    "at": ("s" + HUGE + "_0", "t" + HUGE),
    "next_batch": ("WyJyZWNlbnQiLDk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OSwwXQ",  # ["recent",9..9,0]
                   "WyJyYW5rIiwwLDEwMDAwMDAwMDAwMDAwMDAwMDAwMDAwXQ"),  # ["rank",0,1e22]
}
# Path segments by parameter name.
SEGMENTS = {"serverName": "test.local", "mediaId": "abcdefghijklmnop"}


class ParseIntTest(RoomTestCase):
    """The shared parser itself (no server needed, but cheap enough to run with one)."""

    def test_parse_int(self) -> None:
        self.assertEqual(parse_int("42", "n"), 42)
        self.assertEqual(parse_int(None, "n", 7), 7)
        self.assertEqual(parse_int(str(MAX_INT64), "n"), MAX_INT64)
        self.assertEqual(parse_int("-3", "n", minimum=-5), -3)
        for raw in (str(MAX_INT64 + 1), HUGE, "-1", "1e3", "1.0", "", " 1", "+", "1_0", "١",
                    "0x10"):
            with self.assertRaises(MatrixError, msg=raw) as ctx:
                parse_int(raw, "n")
            self.assertEqual((ctx.exception.code, ctx.exception.errcode), (400, "M_INVALID_PARAM"))
        with self.assertRaises(MatrixError):
            parse_int(str(MAX_POSITION + 1), "n", maximum=MAX_POSITION)


class SweepTest(RoomTestCase):
    timeout = 600
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.alice = await self.user("alice")
        self.room = await self.create_room(self.alice, preset="public_chat",
                                           room_alias_name="sweep")
        self.event = await self.send_ok(self.alice, self.room, "hello")

    def path_for(self, template: str) -> str:
        values = {"roomId": self.room, "eventId": self.event, "userId": "@alice:test.local",
                  "roomAlias": "#sweep:test.local", "roomIdOrAlias": self.room,
                  "parentId": self.event, "relType": "m.thread", "eventType": "m.room.message",
                  "type": "m.room.message", "stateKey": "", "txnId": "t1", **SEGMENTS}

        def fill(m: re.Match[str]) -> str:
            return quote(values.get(m.group(1), "x"), safe="") or "%20"
        return re.sub(r"\{([A-Za-z_]+)\}", fill, template)

    def check(self, resp: Any, what: str) -> None:
        self.assertLess(resp.code, 500, (what, resp))
        if resp.code >= 400 and resp.json is not None:
            self.assertTrue(str(resp.json.get("errcode", "")).startswith("M_"), (what, resp))

    async def test_every_get_route_survives_bad_integers_and_tokens(self) -> None:
        templates = sorted({r.template for r in self.hs.router.routes if r.method == "GET"
                            and "/r0/" not in r.template})
        self.assertGreater(len(templates), 40)
        problems: list[str] = []
        for template in templates:
            path = self.path_for(template)
            for name in PARAMS:
                for value in (*SWEEP_VALUES, *TOKENS.get(name, ())):
                    query = f"{name}={quote(value, safe='%')}"
                    if name != "timeout":
                        query += "&timeout=0"
                    resp = await self.request("GET", f"{path}?{query}", token=self.alice)
                    if resp.code >= 500 or (resp.code >= 400 and not str(
                            (resp.json or {}).get("errcode", "")).startswith("M_")):
                        problems.append(f"GET {template}?{query}: {resp.code}")
        self.assertEqual(problems, [])

    async def assert_invalid(self, path: str, method: str = "GET", body: Any = None) -> None:
        resp = await self.request(method, path, body, token=self.alice)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")

    async def test_sync_since_and_timeout(self) -> None:
        for query in (f"since=s{HUGE}_0", f"since=s0_{HUGE}", f"since=s1_1_1_1_1_1_{HUGE}",
                      "timeout=1e400", f"timeout={HUGE}", "timeout=-1", "since=s-1_0",
                      "since=garbage"):
            await self.assert_invalid(f"{CS}/sync?{query}")
        # A position from the future (but in range) is bounded to now, as Synapse does.
        now = (await self.request("GET", f"{CS}/sync?timeout=0", token=self.alice)).json
        future = "s" + "_".join([str(2**40)] * 7)
        resp = await self.request("GET", f"{CS}/sync?timeout=0&since={future}", token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["next_batch"], now["next_batch"])

    async def test_room_paths(self) -> None:
        room = q(self.room)
        for query in (f"limit={BIG}", "limit=-1", f"from=t{HUGE}", f"from=s{HUGE}_0",
                      f"to=t{HUGE}"):
            await self.assert_invalid(f"{CS}/rooms/{room}/messages?dir=b&{query}")
        await self.assert_invalid(f"{CS}/rooms/{room}/context/{q(self.event)}?limit={HUGE}")
        await self.assert_invalid(f"{CS}/rooms/{room}/members?at=s{HUGE}_0")
        await self.assert_invalid(f"/_matrix/client/v1/rooms/{room}/timestamp_to_event"
                                  f"?dir=f&ts={HUGE}")
        for query in (f"limit={HUGE}", f"from=t{HUGE}", f"to=s{HUGE}_0"):
            await self.assert_invalid(f"/_matrix/client/v1/rooms/{room}/relations/"
                                      f"{q(self.event)}?{query}")
        for query in (f"limit={HUGE}", "from=garbage", "from=WzEsMl0"):
            await self.assert_invalid(f"/_matrix/client/v1/rooms/{room}/threads?{query}")
        for query in (f"limit={HUGE}", f"max_depth={HUGE}", "from=garbage"):
            await self.assert_invalid(f"/_matrix/client/v1/rooms/{room}/hierarchy?{query}")

    async def test_lists_and_search(self) -> None:
        for query in (f"limit={HUGE}", "limit=-1", "since=garbage", f"since={HUGE}"):
            await self.assert_invalid(f"{CS}/publicRooms?{query}")
        for query in (f"limit={HUGE}", "from=garbage", f"from={HUGE}"):
            await self.assert_invalid(f"{CS}/notifications?{query}")
        for query in (f"from=s{HUGE}_0&to=s0_0", f"from=s0_0&to=s0_{HUGE}",
                      "from=s-1_0&to=s0_0", f"from={HUGE}&to={HUGE}"):
            await self.assert_invalid(f"{CS}/keys/changes?{query}")
        for cursor in ("%%%", "garbage", encode_token([HUGE]), encode_token(["!a\u0000"]),
                       encode_token([1]), "IiFhIg"):  # the last is a bare string, not a list
            await self.assert_invalid(f"/_matrix/client/v1/mutual_rooms?user_id=@bob:test.local"
                                      f"&from={q(cursor)}")
        # Opaque tokens with out-of-range integers inside.
        room = q(self.room)
        for token in (encode_token([int(HUGE), "$x"]), encode_token([-1, "$x"]),
                      encode_token([True, "$x"]), encode_token([1.5, "$x"])):
            await self.assert_invalid(f"/_matrix/client/v1/rooms/{room}/threads?from={q(token)}")
        for token in (encode_token([int(HUGE), self.room, False, None]),
                      encode_token([0, self.room, False, int(HUGE)])):
            await self.assert_invalid(f"/_matrix/client/v1/rooms/{room}/hierarchy?from={q(token)}")
        for token in (encode_token([2**31, self.room, True]), encode_token([0, self.room, 1])):
            await self.assert_invalid(f"{CS}/publicRooms?since={q(token)}")
        search = {"search_categories": {"room_events": {"search_term": "hello"}}}
        for token in (*TOKENS["next_batch"], encode_token(["recent", -1, 0]),
                      encode_token(["best", 0, 0]), encode_token(["rank", 0, int(HUGE)])):
            await self.assert_invalid(f"{CS}/search?next_batch={q(token)}", "POST", search)

    async def test_json_body_integers(self) -> None:
        """Integers in bodies: beyond 2**53-1 (canonical JSON's range) or not integers."""
        cases = [
            ("POST", f"{CS}/publicRooms", {"limit": 10**30}),
            ("POST", f"{CS}/user/@alice:test.local/filter",
             {"room": {"timeline": {"limit": 10**30}}}),
            ("POST", f"{CS}/user_directory/search", {"search_term": "a", "limit": 10**30}),
            ("POST", f"{CS}/search", {"search_categories": {"room_events": {
                "search_term": "a", "filter": {"limit": 10**30}}}}),
            ("POST", f"{CS}/search", {"search_categories": {"room_events": {
                "search_term": "a", "event_context": {"before_limit": 10**30}}}}),
            ("PUT", f"{CS}/rooms/{q(self.room)}/typing/@alice:test.local",
             {"typing": True, "timeout": 10**30}),
        ]
        for method, path, body in cases:
            resp = await self.request(method, path, body, token=self.alice)
            self.assertEqual(resp.code, 400, (method, path, resp))
            self.assertIn(resp.json["errcode"], ("M_INVALID_PARAM", "M_BAD_JSON"), resp)
        # Integer path segments.
        for value in (HUGE, "-1", "1e400"):
            resp = await self.request("GET", f"{CS}/user/@alice:test.local/filter/{value}",
                                      token=self.alice)
            self.check(resp, value)
            self.assertMatrixError(resp, 404, "M_NOT_FOUND")
            resp = await self.request("GET", f"{CS}/room_keys/version/{value}", token=self.alice)
            self.check(resp, value)
            self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        # Integral floats and booleans are not integers here.
        for body in ({"limit": 5.5}, {"limit": True}, {"limit": "5"}):
            resp = await self.request("POST", f"{CS}/publicRooms", body, token=self.alice)
            self.assertEqual(resp.code, 400, (body, resp))
        resp = await self.request("POST", f"{CS}/publicRooms", {"limit": 5.0}, token=self.alice)
        self.check(resp, "limit 5.0")
        resp = await self.request("POST", f"{CS}/user_directory/search",
                                  {"search_term": "a", "limit": 5.0}, token=self.alice)
        self.check(resp, "limit 5.0")
        # 1e400 is not a JSON integer anyone can store.
        for method, path in (("POST", f"{CS}/publicRooms"),
                             ("POST", f"{CS}/user_directory/search")):
            resp = await self.request(method, path, raw_body=b'{"search_term": "a", "limit": 1e400}',
                                      token=self.alice)
            self.check(resp, path)
            self.assertEqual(resp.code, 400, (path, resp))

    async def test_big_numbers_in_other_bodies(self) -> None:
        """Bodies that carry client numbers through to storage or events: never a 500."""
        room = q(self.room)
        me = q("@alice:test.local")
        problems: list[str] = []
        for number in (b"1" + b"0" * 30, b"-" + b"9" * 30, b"1e400", b"1e300", b"9007199254740993",
                       b"1.5"):
            n = number.decode()
            cases = [
                ("POST", f"{CS}/createRoom", f'{{"power_level_content_override": {{"ban": {n}}}}}'),
                ("PUT", f"{CS}/rooms/{room}/send/m.room.message/n{len(n)}{n[:3]}",
                 f'{{"msgtype": "m.text", "body": "x", "n": {n}}}'),
                ("PUT", f"{CS}/rooms/{room}/state/m.room.power_levels/",
                 f'{{"users": {{"@alice:test.local": {n}}}}}'),
                ("PUT", f"{CS}/user/{me}/account_data/org.example", f'{{"n": {n}}}'),
                ("PUT", f"{CS}/user/{me}/rooms/{room}/tags/u.x", f'{{"order": {n}}}'),
                ("POST", f"{CS}/rooms/{room}/receipt/m.read/{q(self.event)}", f'{{"ts": {n}}}'),
                ("POST", f"{CS}/rooms/{room}/read_markers", f'{{"m.fully_read": {n}}}'),
                ("PUT", f"{CS}/presence/{me}/status", f'{{"presence": "online", "last_active_ago": {n}}}'),
                ("PUT", f"{CS}/profile/{me}/displayname", f'{{"displayname": {n}}}'),
                ("POST", f"{CS}/keys/claim", f'{{"one_time_keys": {{}}, "timeout": {n}}}'),
                ("POST", f"{CS}/keys/query", f'{{"device_keys": {{}}, "timeout": {n}}}'),
                ("PUT", f"{CS}/sendToDevice/m.x/t{len(n)}{n[:3]}",
                 f'{{"messages": {{"@alice:test.local": {{"*": {{"n": {n}}}}}}}}}'),
                ("POST", f"{CS}/pushers/set", f'{{"kind": null, "app_id": "a", "pushkey": {n}}}'),
                ("PUT", f"{CS}/pushrules/global/override/r{len(n)}",
                 f'{{"actions": [{{"set_tweak": "x", "value": {n}}}]}}'),
                ("POST", f"{CS}/rooms/{room}/report/{q(self.event)}", f'{{"score": {n}}}'),
                ("POST", f"{CS}/user/{me}/openid/request_token", f'{{"n": {n}}}'),
                ("PUT", f"{CS}/devices/x", f'{{"display_name": {n}}}'),
            ]
            for method, path, raw in cases:
                resp = await self.request(method, path, raw_body=raw.encode(), token=self.alice,
                                          headers={"Content-Type": "application/json"})
                if resp.code >= 500:
                    problems.append(f"{method} {path} {raw}: {resp.code}")
                if "/rooms/" in path and ("/send/" in path or "/state/" in path) \
                        or path.endswith("/createRoom"):
                    self.assertMatrixError(resp, 400, "M_BAD_JSON")
        self.assertEqual("\n".join(problems), "")

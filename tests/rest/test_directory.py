"""Room aliases, canonical alias checks, room directory visibility and /publicRooms."""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.internet import reactor

from homeserver.app import build_homeserver
from tests.rest.room_helpers import CS, RoomTestCase, q

ALICE = "@alice:test.local"
BOB = "@bob:test.local"


def alias_path(alias: str) -> str:
    return f"{CS}/directory/room/{q(alias)}"


class DirectoryTestCase(RoomTestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")

    async def put_alias(self, token: str | None, alias: str, room_id: Any) -> Any:
        return await self.request("PUT", alias_path(alias), {"room_id": room_id}, token=token)

    async def canonical(self, room: str) -> dict:
        resp = await self.request(
            "GET", f"{CS}/rooms/{q(room)}/state/m.room.canonical_alias", token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        return resp.json


class AliasTest(DirectoryTestCase):
    async def test_create_resolve_list_delete(self) -> None:
        room = await self.create_room(self.alice)
        resp = await self.put_alias(self.alice, "#hall:test.local", room)
        self.assertEqual((resp.code, resp.json), (200, {}))
        # Resolving needs no token.
        got = await self.request("GET", alias_path("#hall:test.local"))
        self.assertEqual(got.json, {"room_id": room, "servers": ["test.local"]})
        listed = await self.request("GET", f"{CS}/rooms/{q(room)}/aliases", token=self.alice)
        self.assertEqual(listed.json, {"aliases": ["#hall:test.local"]})
        gone = await self.request("DELETE", alias_path("#hall:test.local"), token=self.alice)
        self.assertEqual((gone.code, gone.json), (200, {}))
        self.assertMatrixError(await self.request("GET", alias_path("#hall:test.local")),
                               404, "M_NOT_FOUND")
        self.assertMatrixError(
            await self.request("DELETE", alias_path("#hall:test.local"), token=self.alice),
            404, "M_NOT_FOUND")
        # The alias can be reused, and joining by it works.
        self.assertEqual((await self.put_alias(self.alice, "#hall:test.local", room)).code, 200)
        await self.request("PUT", f"{CS}/directory/list/room/{q(room)}", {}, token=self.alice)
        await self.put_state(self.alice, room, "m.room.join_rules", {"join_rule": "public"})
        self.assertEqual((await self.join(self.bob, "#hall:test.local")).code, 200)

    async def test_create_errors(self) -> None:
        room = await self.create_room(self.alice)
        for bad in ("hall:test.local", "#hall", "#:test.local", "#hall:", "#hall:bad server",
                    "#" + "a" * 260 + ":test.local"):
            self.assertMatrixError(await self.put_alias(self.alice, bad, room), 400,
                                   "M_INVALID_PARAM")
        self.assertMatrixError(await self.put_alias(self.alice, "#hall:other.org", room), 400,
                               "M_INVALID_PARAM")
        self.assertMatrixError(await self.put_alias(self.alice, "#a b:test.local", room), 400,
                               "M_INVALID_PARAM")
        self.assertMatrixError(await self.put_alias(self.alice, "#x:test.local", "nonsense"), 400,
                               "M_INVALID_PARAM")
        self.assertMatrixError(await self.put_alias(self.alice, "#x:test.local", 42), 400,
                               "M_BAD_JSON")
        missing = await self.request("PUT", alias_path("#x:test.local"), {}, token=self.alice)
        self.assertMatrixError(missing, 400, "M_MISSING_PARAM")
        not_json = await self.request("PUT", alias_path("#x:test.local"), raw_body=b"[1",
                                      token=self.alice)
        self.assertMatrixError(not_json, 400, "M_NOT_JSON")
        # Non-members may not, whether or not the room exists.
        self.assertMatrixError(await self.put_alias(self.bob, "#x:test.local", room), 403,
                               "M_FORBIDDEN")
        self.assertMatrixError(await self.put_alias(self.bob, "#x:test.local", "!nope:test.local"),
                               403, "M_FORBIDDEN")
        # An admin may alias a room they are not in, but not a room that does not exist.
        await self.hs.stores.users.set_admin(BOB, True)
        self.assertEqual((await self.put_alias(self.bob, "#x:test.local", room)).code, 200)
        self.assertMatrixError(await self.put_alias(self.bob, "#y:test.local", "!nope:test.local"),
                               404, "M_NOT_FOUND")
        # Duplicates: 409 M_UNKNOWN, as the spec and Synapse.
        dup = await self.put_alias(self.alice, "#x:test.local", room)
        self.assertMatrixError(dup, 409, "M_UNKNOWN")
        for method in ("PUT", "DELETE"):
            self.assertMatrixError(await self.request(method, alias_path("#x:test.local"),
                                                      {"room_id": room}), 401, "M_MISSING_TOKEN")
        self.assertMatrixError(await self.request("GET", f"{CS}/rooms/{q(room)}/aliases"),
                               401, "M_MISSING_TOKEN")

    async def test_resolve_errors(self) -> None:
        self.assertMatrixError(await self.request("GET", alias_path("#nope:test.local")), 404,
                               "M_NOT_FOUND")
        self.assertMatrixError(await self.request("GET", alias_path("#x:other.org")), 404,
                               "M_NOT_FOUND")
        for bad in ("nohash", "#nocolon", "#x:bad server"):
            self.assertMatrixError(await self.request("GET", alias_path(bad)), 400,
                                   "M_INVALID_PARAM")
            self.assertMatrixError(await self.request("DELETE", alias_path(bad), token=self.alice),
                                   400, "M_INVALID_PARAM")
        self.assertMatrixError(
            await self.request("DELETE", alias_path("#x:other.org"), token=self.alice),
            404, "M_NOT_FOUND")

    async def test_delete_permissions(self) -> None:
        carol = await self.user("carol")
        room = await self.create_room(self.alice, preset="public_chat")
        self.assertEqual((await self.join(self.bob, room)).code, 200)
        self.assertEqual((await self.put_alias(self.alice, "#a:test.local", room)).code, 200)
        self.assertEqual((await self.put_alias(self.bob, "#b:test.local", room)).code, 200)
        # Bob (power 0) may not delete Alice's alias; Carol is not even in the room.
        for token in (self.bob, carol):
            self.assertMatrixError(
                await self.request("DELETE", alias_path("#a:test.local"), token=token),
                403, "M_FORBIDDEN")
        # Bob deletes his own; Alice (power 100) may delete aliases she did not create.
        self.assertEqual((await self.put_alias(self.bob, "#b2:test.local", room)).code, 200)
        deleted = await self.request("DELETE", alias_path("#b:test.local"), token=self.bob)
        self.assertEqual(deleted.code, 200)
        deleted = await self.request("DELETE", alias_path("#b2:test.local"), token=self.alice)
        self.assertEqual(deleted.code, 200)
        # A server admin who is not in the room may delete any alias.
        await self.hs.stores.users.set_admin("@carol:test.local", True)
        deleted = await self.request("DELETE", alias_path("#a:test.local"), token=carol)
        self.assertEqual(deleted.code, 200)
        listed = await self.request("GET", f"{CS}/rooms/{q(room)}/aliases", token=self.alice)
        self.assertEqual(listed.json, {"aliases": []})
        # A member who left loses the moderator right.
        self.assertEqual((await self.put_alias(self.alice, "#c:test.local", room)).code, 200)
        self.assertEqual((await self.member(self.bob, room, "leave")).code, 200)
        self.assertMatrixError(
            await self.request("DELETE", alias_path("#c:test.local"), token=self.bob),
            403, "M_FORBIDDEN")

    async def test_delete_updates_canonical_alias(self) -> None:
        resp = await self.request("POST", f"{CS}/createRoom", {"room_alias_name": "lobby"},
                                  token=self.alice)
        room = resp.json["room_id"]
        self.assertEqual(await self.canonical(room), {"alias": "#lobby:test.local"})
        self.assertEqual((await self.put_alias(self.alice, "#alt:test.local", room)).code, 200)
        self.assertEqual((await self.put_alias(self.alice, "#alt2:test.local", room)).code, 200)
        content = {"alias": "#lobby:test.local",
                   "alt_aliases": ["#alt:test.local", "#alt2:test.local"]}
        self.assertEqual((await self.put_state(self.alice, room, "m.room.canonical_alias",
                                               content)).code, 200)
        await self.request("DELETE", alias_path("#alt:test.local"), token=self.alice)
        self.assertEqual(await self.canonical(room),
                         {"alias": "#lobby:test.local", "alt_aliases": ["#alt2:test.local"]})
        await self.request("DELETE", alias_path("#alt2:test.local"), token=self.alice)
        self.assertEqual(await self.canonical(room), {"alias": "#lobby:test.local"})
        await self.request("DELETE", alias_path("#lobby:test.local"), token=self.alice)
        self.assertEqual(await self.canonical(room), {})

    async def test_creator_without_power_still_deletes(self) -> None:
        room = await self.create_room(self.alice, preset="public_chat")
        await self.join(self.bob, room)
        self.assertEqual((await self.put_alias(self.bob, "#bobs:test.local", room)).code, 200)
        await self.put_state(self.alice, room, "m.room.canonical_alias",
                             {"alias": "#bobs:test.local"})
        # Bob may delete his alias but not edit the canonical alias event: the deletion
        # succeeds and the event stays as it was (the spec's recommendation).
        deleted = await self.request("DELETE", alias_path("#bobs:test.local"), token=self.bob)
        self.assertEqual(deleted.code, 200, deleted)
        self.assertMatrixError(await self.request("GET", alias_path("#bobs:test.local")), 404,
                               "M_NOT_FOUND")
        self.assertEqual(await self.canonical(room), {"alias": "#bobs:test.local"})

    async def test_room_aliases_access(self) -> None:
        carol = await self.user("carol")
        room = await self.create_room(self.alice, preset="public_chat")
        await self.put_alias(self.alice, "#one:test.local", room)
        await self.join(self.bob, room)
        self.assertEqual((await self.request("GET", f"{CS}/rooms/{q(room)}/aliases",
                                             token=self.bob)).json, {"aliases": ["#one:test.local"]})
        for token, target in ((carol, room), (carol, "!nope:test.local")):
            self.assertMatrixError(
                await self.request("GET", f"{CS}/rooms/{q(target)}/aliases", token=token),
                403, "M_FORBIDDEN")
        self.assertMatrixError(await self.request("GET", f"{CS}/rooms/nope/aliases", token=carol),
                               400, "M_INVALID_PARAM")
        await self.member(self.bob, room, "leave")
        self.assertMatrixError(
            await self.request("GET", f"{CS}/rooms/{q(room)}/aliases", token=self.bob),
            403, "M_FORBIDDEN")
        # World-readable rooms: anyone; server admins: always.
        await self.put_state(self.alice, room, "m.room.history_visibility",
                             {"history_visibility": "world_readable"})
        self.assertEqual((await self.request("GET", f"{CS}/rooms/{q(room)}/aliases",
                                             token=carol)).code, 200)
        private = await self.create_room(self.alice)
        await self.hs.stores.users.set_admin("@carol:test.local", True)
        self.assertEqual((await self.request("GET", f"{CS}/rooms/{q(private)}/aliases",
                                             token=carol)).json, {"aliases": []})


class CanonicalAliasTest(DirectoryTestCase):
    async def test_checks(self) -> None:
        room = await self.create_room(self.alice, preset="public_chat")
        other = await self.create_room(self.alice)
        await self.put_alias(self.alice, "#mine:test.local", room)
        await self.put_alias(self.alice, "#theirs:test.local", other)

        async def put(content: dict, token: str | None = None) -> Any:
            return await self.put_state(token or self.alice, room, "m.room.canonical_alias",
                                        content)

        self.assertMatrixError(await put({"alias": "#nope:test.local"}), 400, "M_BAD_ALIAS")
        self.assertMatrixError(await put({"alias": "#theirs:test.local"}), 400, "M_BAD_ALIAS")
        self.assertMatrixError(await put({"alias": "#remote:other.org"}), 400, "M_BAD_ALIAS")
        self.assertMatrixError(await put({"alt_aliases": ["#mine:test.local", "#nope:test.local"]}),
                               400, "M_BAD_ALIAS")
        for bad in ({"alias": 7}, {"alias": "not-an-alias"}, {"alt_aliases": "#mine:test.local"},
                    {"alt_aliases": [1]}, {"alt_aliases": ["#bad"]}, {"alias": ["#mine:test.local"]}):
            self.assertMatrixError(await put(bad), 400, "M_INVALID_PARAM")
        ok = await put({"alias": "#mine:test.local", "alt_aliases": ["#mine:test.local"]})
        self.assertEqual(ok.code, 200, ok)
        self.assertEqual((await put({})).code, 200)
        self.assertEqual((await put({"alias": ""})).code, 200)
        self.assertEqual((await put({"alias": None})).code, 200)
        # Authorisation comes first: a member without power gets 403 whatever the content.
        await self.join(self.bob, room)
        self.assertMatrixError(await put({"alias": "#nope:test.local"}, self.bob), 403,
                               "M_FORBIDDEN")
        # Only aliases this event adds are checked (as Synapse).
        await self.put_alias(self.alice, "#temp:test.local", room)
        self.assertEqual((await put({"alt_aliases": ["#temp:test.local"]})).code, 200)
        await self.hs.stores.room_aliases.delete_alias("#temp:test.local")
        kept = await put({"alias": "#mine:test.local", "alt_aliases": ["#temp:test.local"]})
        self.assertEqual(kept.code, 200, kept)
        # The state_key-less path and a non-empty state key are both covered.
        sk = await self.put_state(self.alice, room, "m.room.canonical_alias",
                                  {"alias": "#nope:test.local"}, state_key="x")
        self.assertMatrixError(sk, 400, "M_BAD_ALIAS")


class RoomVisibilityTest(DirectoryTestCase):
    def path(self, room: str) -> str:
        return f"{CS}/directory/list/room/{q(room)}"

    async def test_get_and_set(self) -> None:
        carol = await self.user("carol")
        room = await self.create_room(self.alice, preset="public_chat")
        published = await self.create_room(self.alice, visibility="public")
        self.assertEqual((await self.request("GET", self.path(room))).json, {"visibility": "private"})
        self.assertEqual((await self.request("GET", self.path(published))).json,
                         {"visibility": "public"})
        self.assertMatrixError(await self.request("GET", self.path("!nope:test.local")), 404,
                               "M_NOT_FOUND")
        self.assertMatrixError(await self.request("GET", self.path("nope")), 400,
                               "M_INVALID_PARAM")
        # Body defaults to public.
        resp = await self.request("PUT", self.path(room), {}, token=self.alice)
        self.assertEqual((resp.code, resp.json), (200, {}))
        self.assertEqual((await self.request("GET", self.path(room))).json, {"visibility": "public"})
        resp = await self.request("PUT", self.path(room), {"visibility": "private"}, token=self.alice)
        self.assertEqual(resp.code, 200)
        self.assertEqual((await self.request("GET", self.path(room))).json,
                         {"visibility": "private"})
        # Members without the canonical-alias power level, and non-members: 403.
        await self.join(self.bob, room)
        for token in (self.bob, carol):
            self.assertMatrixError(await self.request("PUT", self.path(room), {}, token=token),
                                   403, "M_FORBIDDEN")
        self.assertMatrixError(
            await self.request("PUT", self.path(room), {"visibility": "open"}, token=self.alice),
            400, "M_INVALID_PARAM")
        self.assertMatrixError(
            await self.request("PUT", self.path("!nope:test.local"), {}, token=self.alice),
            404, "M_NOT_FOUND")
        self.assertMatrixError(await self.request("PUT", self.path(room), {}), 401,
                               "M_MISSING_TOKEN")
        # Bob gets the power level; then a server admin outside the room.
        await self.put_state(self.alice, room, "m.room.power_levels", {
            "users": {ALICE: 100, BOB: 50}, "events": {"m.room.canonical_alias": 50}})
        self.assertEqual((await self.request("PUT", self.path(room), {}, token=self.bob)).code, 200)
        await self.hs.stores.users.set_admin("@carol:test.local", True)
        resp = await self.request("PUT", self.path(room), {"visibility": "private"}, token=carol)
        self.assertEqual(resp.code, 200)


class PublicRoomsTest(DirectoryTestCase):
    async def public_rooms(self, token: str | None = None, **params: Any) -> Any:
        query = "&".join(f"{k}={q(str(v))}" for k, v in params.items())
        return await self.request("GET", f"{CS}/publicRooms?{query}", token=token or self.alice)

    async def post(self, body: dict, token: str | None = None, query: str = "") -> Any:
        return await self.request("POST", f"{CS}/publicRooms{query}", body,
                                  token=token or self.alice)

    async def test_listing_and_chunk(self) -> None:
        carol = await self.user("carol")
        resp = await self.request("POST", f"{CS}/createRoom", {
            "visibility": "public", "name": "Cheese Lovers", "topic": "Tasty cheese",
            "room_alias_name": "cheese"}, token=self.alice)
        cheese = resp.json["room_id"]
        await self.put_state(self.alice, cheese, "m.room.avatar", {"url": "mxc://test.local/abc"})
        big = await self.create_room(self.alice, visibility="public")
        await self.join(self.bob, big)
        await self.join(carol, big)
        await self.create_room(self.alice, preset="public_chat")  # not published
        # Published but invite-only: not listed; invite-only and world-readable: listed.
        await self.create_room(self.alice, visibility="public", preset="private_chat")
        readable = await self.create_room(self.alice, visibility="public", preset="private_chat")
        await self.put_state(self.alice, readable, "m.room.history_visibility",
                             {"history_visibility": "world_readable"})
        space = await self.create_room(self.alice, visibility="public",
                                       creation_content={"type": "m.space"})

        resp = await self.public_rooms()
        self.assertEqual(resp.code, 200, resp)
        chunk = resp.json["chunk"]
        self.assertEqual(resp.json["total_room_count_estimate"], 4)
        self.assertNotIn("next_batch", resp.json)
        self.assertNotIn("prev_batch", resp.json)
        ids = [r["room_id"] for r in chunk]
        self.assertEqual(ids[0], big)
        self.assertEqual(sorted(ids[1:]), sorted([cheese, readable, space]))
        by_id = {r["room_id"]: r for r in chunk}
        self.assertEqual(by_id[cheese], {
            "room_id": cheese, "name": "Cheese Lovers", "topic": "Tasty cheese",
            "canonical_alias": "#cheese:test.local", "avatar_url": "mxc://test.local/abc",
            "num_joined_members": 1, "world_readable": False, "guest_can_join": False,
            "join_rule": "public"})
        self.assertEqual(by_id[big]["num_joined_members"], 3)
        self.assertEqual(by_id[readable]["world_readable"], True)
        self.assertEqual(by_id[readable]["join_rule"], "invite")
        self.assertEqual(by_id[readable]["guest_can_join"], True)
        self.assertEqual(by_id[space]["room_type"], "m.space")
        for entry in chunk:
            self.assertNotIn(None, entry.values())

        # Filters (POST): case-insensitive search over name, topic and alias; room types.
        async def found(body: dict) -> list[str]:
            resp = await self.post(body)
            self.assertEqual(resp.code, 200, resp)
            return [r["room_id"] for r in resp.json["chunk"]]

        for term in ("cheese", "LOVERS", "tasty", "#CHEESE:", "ese lov"):
            self.assertEqual(await found({"filter": {"generic_search_term": term}}), [cheese])
        self.assertEqual(await found({"filter": {"generic_search_term": "%"}}), [])
        self.assertEqual(await found({"filter": {"generic_search_term": "_"}}), [])
        self.assertEqual(await found({"filter": {"room_types": ["m.space"]}}), [space])
        self.assertEqual(sorted(await found({"filter": {"room_types": [None]}})),
                         sorted([big, cheese, readable]))
        self.assertEqual(len(await found({"filter": {"room_types": []}})), 4)
        self.assertEqual(len(await found({"filter": None, "since": None, "limit": None})), 4)
        resp = await self.post({"filter": {"generic_search_term": "cheese"}})
        self.assertEqual(resp.json["total_room_count_estimate"], 1)

        # Current state changes show up; rooms everyone left disappear.
        await self.put_state(self.alice, cheese, "m.room.name", {"name": "Fromage"})
        self.assertEqual(await found({"filter": {"generic_search_term": "fromage"}}), [cheese])
        await self.member(self.alice, cheese, "leave")
        self.assertNotIn(cheese, await found({}))
        await self.member(carol, big, "leave")
        resp = await self.post({"limit": 1})
        self.assertEqual(resp.json["chunk"][0]["num_joined_members"], 2)

    async def test_pagination(self) -> None:
        rooms = []
        for i in range(5):
            rooms.append(await self.create_room(self.alice, visibility="public", name=f"r{i}"))
        await self.join(self.bob, rooms[3])
        everything = [r["room_id"] for r in (await self.public_rooms()).json["chunk"]]
        self.assertEqual(len(everything), 5)
        self.assertEqual(everything[0], rooms[3])
        pages = []
        tokens: list[dict] = []
        since = None
        while True:
            params: dict[str, Any] = {"limit": 2}
            if since:
                params["since"] = since
            body = (await self.public_rooms(**params)).json
            pages.append([r["room_id"] for r in body["chunk"]])
            tokens.append(body)
            since = body.get("next_batch")
            if since is None:
                break
        self.assertEqual([len(p) for p in pages], [2, 2, 1])
        self.assertEqual([r for p in pages for r in p], everything)
        self.assertNotIn("prev_batch", tokens[0])
        self.assertIn("prev_batch", tokens[1])
        # Going back from page 2 gives page 1 again, with a next_batch and no prev_batch.
        back = (await self.public_rooms(limit=2, since=tokens[1]["prev_batch"])).json
        self.assertEqual([r["room_id"] for r in back["chunk"]], pages[0])
        self.assertIn("next_batch", back)
        self.assertNotIn("prev_batch", back)
        back = (await self.public_rooms(limit=2, since=tokens[2]["prev_batch"])).json
        self.assertEqual([r["room_id"] for r in back["chunk"]], pages[1])
        self.assertIn("prev_batch", back)
        # The same through POST, with limit 0 meaning "no limit".
        resp = await self.post({"limit": 2, "since": tokens[0]["next_batch"]})
        self.assertEqual([r["room_id"] for r in resp.json["chunk"]], pages[1])
        self.assertEqual(len((await self.public_rooms(limit=0)).json["chunk"]), 5)

    async def test_errors(self) -> None:
        # GET needs no token (spec); the POST search form does.
        self.assertEqual((await self.request("GET", f"{CS}/publicRooms")).code, 200)
        self.assertMatrixError(await self.request("POST", f"{CS}/publicRooms", {}), 401,
                               "M_MISSING_TOKEN")
        odd = [[10**30, "!a:test.local", True], [-1, "!a:test.local", True],
               [1, "!a\u0000", True], [1, "!\ud800", True], [1, "!" + "a" * 300, True]]
        tokens = [base64.urlsafe_b64encode(json.dumps(t).encode()).decode() for t in odd]
        for since in ("garbage", "e30", "WzEsMiwzXQ", "x" * 2000, "W3RydWUsIiEiLHRydWVd", "ü",
                      *tokens):
            self.assertMatrixError(await self.public_rooms(since=since), 400, "M_INVALID_PARAM")
            self.assertMatrixError(await self.post({"since": since}), 400, "M_INVALID_PARAM")
        self.assertMatrixError(await self.public_rooms(limit=-1), 400, "M_INVALID_PARAM")
        self.assertMatrixError(await self.public_rooms(limit="ten"), 400, "M_INVALID_PARAM")
        self.assertMatrixError(await self.post({"limit": -1}), 400, "M_INVALID_PARAM")
        self.assertMatrixError(await self.post({"limit": "1"}), 400, "M_BAD_JSON")
        self.assertMatrixError(await self.post({"filter": {"room_types": "m.space"}}), 400,
                               "M_BAD_JSON")
        self.assertMatrixError(await self.post({"filter": {"generic_search_term": 5}}), 400,
                               "M_BAD_JSON")
        self.assertMatrixError(await self.post({"include_all_networks": True,
                                                "third_party_instance_id": "irc"}), 400,
                               "M_INVALID_PARAM")
        resp = await self.post({"third_party_instance_id": "irc"})
        self.assertEqual(resp.json, {"chunk": [], "total_room_count_estimate": 0})
        # Our own name is fine; other servers need federation; junk names are refused.
        self.assertEqual((await self.public_rooms(server="test.local")).code, 200)
        self.assertMatrixError(await self.public_rooms(server="other.org"), 404, "M_NOT_FOUND")
        self.assertMatrixError(await self.post({}, query="?server=other.org"), 404, "M_NOT_FOUND")
        self.assertMatrixError(await self.public_rooms(server="bad server"), 400,
                               "M_INVALID_PARAM")

    async def test_unicode_search(self) -> None:
        room = await self.create_room(self.alice, visibility="public", name="Ünïcode Café")
        resp = await self.post({"filter": {"generic_search_term": "ÜNÏCODE café"}})
        self.assertEqual([r["room_id"] for r in resp.json["chunk"]], [room])

    async def test_summary_backfilled_at_start(self) -> None:
        room = await self.create_room(self.alice, visibility="public", name="Old room")
        await self.hs.db.execute("wipe", "DELETE FROM room_stats_state")
        self.assertEqual((await self.public_rooms()).json["chunk"], [])
        await self.hs.stop()
        self.hs = await build_homeserver(self.config, clock=self.clock)
        port = self.hs.listen(reactor)[0]
        self.base_url = f"http://127.0.0.1:{port.getHost().port}"
        chunk = (await self.public_rooms()).json["chunk"]
        self.assertEqual([(r["room_id"], r["name"]) for r in chunk], [(room, "Old room")])


class SummaryValuesTest(DirectoryTestCase):
    async def test_values_the_schema_rejects_are_left_out(self) -> None:
        room = await self.create_room(self.alice, visibility="public", name="Named")
        for event_type, content in (
                ("m.room.avatar", {"url": "https://example.org/a.png"}),
                ("m.room.topic", {"m.topic": {"m.text": [
                    {"mimetype": "text/html", "body": "<b>rich</b>"}, {"body": "plain"}]}}),
                ("m.room.guest_access", {"guest_access": 5})):
            self.assertEqual((await self.put_state(self.alice, room, event_type, content)).code, 200)
        # A state key other than "" is not the room's name.
        await self.put_state(self.alice, room, "m.room.name", {"name": "Other"}, state_key="x")
        await self.send_ok(self.alice, room)
        chunk = (await self.request("GET", f"{CS}/publicRooms", token=self.alice)).json["chunk"]
        self.assertEqual(chunk, [{"room_id": room, "name": "Named", "topic": "plain",
                                  "num_joined_members": 1, "world_readable": False,
                                  "guest_can_join": False, "join_rule": "public"}])
        await self.put_state(self.alice, room, "m.room.name", {"name": 12})
        await self.put_state(self.alice, room, "m.room.guest_access", {"guest_access": "can_join"})
        chunk = (await self.request("GET", f"{CS}/publicRooms", token=self.alice)).json["chunk"]
        self.assertNotIn("name", chunk[0])
        self.assertTrue(chunk[0]["guest_can_join"])


class GuestDirectoryTest(RoomTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"registration": {"allow_guests": True}}

    async def test_guests_list_but_do_not_edit(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice, visibility="public")
        reg = await self.request("POST", f"{CS}/register?kind=guest", {})
        self.assertEqual(reg.code, 200, reg)
        guest = reg.json["access_token"]
        listed = await self.request("GET", f"{CS}/publicRooms", token=guest)
        self.assertEqual([r["room_id"] for r in listed.json["chunk"]], [room])
        self.assertEqual((await self.request("POST", f"{CS}/publicRooms", {}, token=guest)).code, 200)
        for method, path, body in (
                ("PUT", alias_path("#g:test.local"), {"room_id": room}),
                ("DELETE", alias_path("#g:test.local"), None),
                ("PUT", f"{CS}/directory/list/room/{q(room)}", {}),
                ("GET", f"{CS}/rooms/{q(room)}/aliases", None),
                ("POST", f"{CS}/user_directory/search", {"search_term": "alice"})):
            resp = await self.request(method, path, body, token=guest)
            self.assertMatrixError(resp, 403, "M_GUEST_ACCESS_FORBIDDEN")

"""Space hierarchy, room summaries and server-side search (off by default)."""

from __future__ import annotations

from typing import Any

from homeserver.handlers.search import SearchIndexer
from tests.rest.room_helpers import CS, RoomTestCase, q

V1 = "/_matrix/client/v1"
ALICE = "@alice:test.local"
BOB = "@bob:test.local"


class TwoUsers(RoomTestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")


class HierarchyTest(TwoUsers):
    async def add_child(self, space: str, child: str, **content: Any) -> None:
        resp = await self.put_state(self.alice, space, "m.space.child",
                                    {"via": ["test.local"], **content}, state_key=child)
        self.assertEqual(resp.code, 200, resp)

    async def hierarchy(self, token: str | None, room: str, query: str = "") -> Any:
        return await self.request("GET", f"{V1}/rooms/{q(room)}/hierarchy" + (f"?{query}" if query else ""),
                                  token=token)

    async def build(self) -> dict[str, str]:
        """space (public) -> [a (public, suggested, order "a"), sub (public space) -> [c (public)],
        private, restricted (allow: space)]; plus a child without via."""
        r = {"space": await self.create_room(self.alice, preset="public_chat", name="Space",
                                             creation_content={"type": "m.space"})}
        r["a"] = await self.create_room(self.alice, preset="public_chat", name="A")
        r["sub"] = await self.create_room(self.alice, preset="public_chat",
                                          creation_content={"type": "m.space"})
        r["c"] = await self.create_room(self.alice, preset="public_chat", topic="see")
        r["private"] = await self.create_room(self.alice)
        r["restricted"] = await self.create_room(self.alice)
        await self.put_state(self.alice, r["restricted"], "m.room.join_rules", {
            "join_rule": "restricted",
            "allow": [{"type": "m.room_membership", "room_id": r["space"]}]})
        await self.add_child(r["space"], r["sub"], order="b")
        await self.add_child(r["space"], r["a"], order="a", suggested=True)
        await self.add_child(r["space"], r["private"], order="c")
        await self.add_child(r["space"], r["restricted"], order="d")
        await self.put_state(self.alice, r["space"], "m.space.child", {}, state_key="!novia:test.local")
        await self.add_child(r["sub"], r["c"])
        await self.add_child(r["c"], r["space"])  # a cycle back to the root
        return r

    async def test_walk_visibility_and_filters(self) -> None:
        r = await self.build()
        resp = await self.hierarchy(self.alice, r["space"])
        self.assertEqual(resp.code, 200, resp)
        order = [room["room_id"] for room in resp.json["rooms"]]
        self.assertEqual(order, [r["space"], r["a"], r["sub"], r["c"], r["private"], r["restricted"]])
        self.assertNotIn("next_batch", resp.json)
        root = resp.json["rooms"][0]
        self.assertEqual((root["name"], root["room_type"], root["join_rule"], root["num_joined_members"]),
                         ("Space", "m.space", "public", 1))
        self.assertFalse(root["world_readable"])
        self.assertEqual(root["room_version"], "10")
        children = root["children_state"]
        self.assertEqual([c["state_key"] for c in children],
                         [r["a"], r["sub"], r["private"], r["restricted"]])
        self.assertTrue(all(isinstance(c["origin_server_ts"], int) and c["type"] == "m.space.child"
                            for c in children))
        restricted = resp.json["rooms"][5]
        self.assertEqual(restricted["allowed_room_ids"], [r["space"]])

        # Bob: not in the private room; the restricted one needs him in the space.
        bob = await self.hierarchy(self.bob, r["space"])
        self.assertEqual([x["room_id"] for x in bob.json["rooms"]],
                         [r["space"], r["a"], r["sub"], r["c"]])
        await self.join(self.bob, r["space"])
        bob = await self.hierarchy(self.bob, r["space"])
        self.assertEqual([x["room_id"] for x in bob.json["rooms"]],
                         [r["space"], r["a"], r["sub"], r["c"], r["restricted"]])

        shallow = await self.hierarchy(self.alice, r["space"], "max_depth=0")
        self.assertEqual([x["room_id"] for x in shallow.json["rooms"]], [r["space"]])
        one = await self.hierarchy(self.alice, r["space"], "max_depth=1")
        self.assertNotIn(r["c"], [x["room_id"] for x in one.json["rooms"]])
        suggested = await self.hierarchy(self.alice, r["space"], "suggested_only=true")
        self.assertEqual([x["room_id"] for x in suggested.json["rooms"]], [r["space"], r["a"]])
        self.assertEqual([c["state_key"] for c in suggested.json["rooms"][0]["children_state"]],
                         [r["a"]])

    async def test_pages(self) -> None:
        r = await self.build()
        seen: list[str] = []
        token = None
        for _ in range(10):
            query = "limit=2" + (f"&from={q(token)}" if token else "")
            resp = await self.hierarchy(self.alice, r["space"], query)
            self.assertEqual(resp.code, 200, resp)
            seen += [x["room_id"] for x in resp.json["rooms"]]
            token = resp.json.get("next_batch")
            if token is None:
                break
        self.assertEqual(seen, [r["space"], r["a"], r["sub"], r["c"], r["private"], r["restricted"]])
        first = await self.hierarchy(self.alice, r["space"], "limit=1")
        token = q(first.json["next_batch"])
        self.assertMatrixError(await self.hierarchy(self.alice, r["space"], f"from={token}&max_depth=1"),
                               400, "M_INVALID_PARAM")
        self.assertMatrixError(await self.hierarchy(self.alice, r["a"], f"from={token}"), 400,
                               "M_INVALID_PARAM")

    async def test_errors(self) -> None:
        space = await self.create_room(self.alice, creation_content={"type": "m.space"})
        self.assertMatrixError(await self.hierarchy(None, space), 401, "M_MISSING_TOKEN")
        self.assertMatrixError(await self.hierarchy(self.bob, space), 403, "M_FORBIDDEN")
        self.assertMatrixError(await self.hierarchy(self.bob, "!unknown:test.local"), 403,
                               "M_FORBIDDEN")
        self.assertMatrixError(await self.hierarchy(self.alice, "nope"), 400, "M_INVALID_PARAM")
        for query in ("limit=0", "limit=-3", "max_depth=-1", "max_depth=x", "from=garbage",
                      "suggested_only=perhaps"):
            self.assertMatrixError(await self.hierarchy(self.alice, space, query), 400,
                                   "M_INVALID_PARAM")


class RoomSummaryTest(TwoUsers):
    async def summary(self, token: str | None, room: str) -> Any:
        return await self.request("GET", f"{V1}/room_summary/{q(room)}", token=token)

    async def test_summary(self) -> None:
        private = await self.create_room(self.alice, name="Private", initial_state=[
            {"type": "m.room.encryption", "state_key": "",
             "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
        got = await self.summary(self.alice, private)
        self.assertEqual(got.code, 200, got)
        self.assertEqual((got.json["name"], got.json["membership"], got.json["encryption"],
                          got.json["room_version"], got.json["join_rule"]),
                         ("Private", "join", "m.megolm.v1.aes-sha2", "10", "invite"))
        # Not visible to others, nor anonymously: the same 404 as an unknown room.
        self.assertMatrixError(await self.summary(self.bob, private), 404, "M_NOT_FOUND")
        self.assertMatrixError(await self.summary(None, private), 404, "M_NOT_FOUND")
        self.assertMatrixError(await self.summary(self.bob, "!unknown:test.local"), 404, "M_NOT_FOUND")
        # An invited user may see it.
        await self.member(self.alice, private, "invite", user_id=BOB)
        self.assertEqual((await self.summary(self.bob, private)).json["membership"], "invite")

        public = await self.create_room(self.alice, preset="public_chat", room_alias_name="pub")
        anon = await self.summary(None, "#pub:test.local")
        self.assertEqual(anon.code, 200, anon)
        self.assertEqual(anon.json["room_id"], public)
        self.assertNotIn("membership", anon.json)
        self.assertEqual((await self.summary(self.bob, public)).json["membership"], "leave")
        self.assertMatrixError(await self.summary(self.bob, "#nope:test.local"), 404, "M_NOT_FOUND")
        self.assertMatrixError(await self.summary(self.bob, "room"), 400, "M_INVALID_PARAM")
        self.assertMatrixError(await self.summary(self.bob, "#bad"), 400, "M_INVALID_PARAM")
        self.assertMatrixError(await self.summary("not-a-token", public), 401, "M_UNKNOWN_TOKEN")


SEARCH = f"{CS}/search"


def criteria(term: str, **extra: Any) -> dict[str, Any]:
    return {"search_categories": {"room_events": {"search_term": term, **extra}}}


class SearchDisabledTest(TwoUsers):
    async def test_off_by_default(self) -> None:
        room = await self.create_room(self.alice)
        await self.send_ok(self.alice, room, "findable words")
        resp = await self.request("POST", SEARCH, criteria("findable"), token=self.alice)
        self.assertEqual((resp.code, resp.json),
                         (200, {"search_categories": {"room_events": {"results": [], "count": 0}}}))
        self.assertEqual(await self.hs.db.query("rows", "SELECT * FROM event_search"), [])
        self.assertMatrixError(await self.request("POST", SEARCH, criteria("x")), 401,
                               "M_MISSING_TOKEN")
        self.assertMatrixError(await self.request("POST", SEARCH, {}, token=self.alice), 400,
                               "M_MISSING_PARAM")
        self.assertMatrixError(await self.request("POST", SEARCH, criteria("x", order_by="best"),
                                                  token=self.alice), 400, "M_INVALID_PARAM")


class SearchTest(TwoUsers):
    def config_overrides(self) -> dict[str, Any]:
        return {"search": {"enabled": True}}

    async def search(self, token: str | None, body: dict[str, Any], next_batch: str | None = None
                     ) -> Any:
        path = SEARCH + (f"?next_batch={q(next_batch)}" if next_batch else "")
        return await self.request("POST", path, body, token=token)

    def ids(self, resp: Any) -> list[str]:
        self.assertEqual(resp.code, 200, resp)
        return [r["result"]["event_id"] for r in resp.json["search_categories"]["room_events"]["results"]]

    async def test_search_recent_rank_and_pages(self) -> None:
        room = await self.create_room(self.alice, preset="public_chat")
        await self.join(self.bob, room)
        other = await self.create_room(self.alice)  # Bob is not in it
        m1 = await self.send_ok(self.alice, room, "Martians and men")
        await self.send_ok(self.alice, room, "nothing to see")
        m2 = await self.send_ok(self.bob, room, "MARTIANS martians everywhere")
        m3 = await self.send_ok(self.alice, other, "martians in the other room")

        recent = await self.search(self.alice, criteria("martians", order_by="recent"))
        self.assertEqual(self.ids(recent), [m3, m2, m1])
        events = recent.json["search_categories"]["room_events"]
        self.assertEqual((events["count"], events["highlights"]), (3, ["martians"]))
        self.assertIn("rank", events["results"][0])
        self.assertEqual(self.ids(await self.search(self.bob, criteria("martians", order_by="recent"))),
                         [m2, m1])
        # All terms must match, case-insensitively.
        self.assertEqual(self.ids(await self.search(self.alice, criteria("MEN martians"))), [m1])
        ranked = await self.search(self.alice, criteria("martians", order_by="rank"))
        self.assertEqual(self.ids(ranked)[0], m2)  # mentions it twice

        # Pages of one, by recency and by rank.
        for order in ("recent", "rank"):
            seen: list[str] = []
            token = None
            for _ in range(5):
                resp = await self.search(self.alice, criteria("martians", order_by=order,
                                                              filter={"limit": 1}), token)
                seen += self.ids(resp)
                token = resp.json["search_categories"]["room_events"].get("next_batch")
                if token is None:
                    break
            self.assertEqual(sorted(seen), sorted([m1, m2, m3]), order)
        rank_token = (await self.search(self.alice, criteria("martians", filter={"limit": 1}))
                      ).json["search_categories"]["room_events"]["next_batch"]
        self.assertMatrixError(await self.search(self.alice, criteria("martians", order_by="recent"),
                                                 rank_token), 400, "M_INVALID_PARAM")
        self.assertMatrixError(await self.search(self.alice, criteria("martians"), "garbage"), 400,
                               "M_INVALID_PARAM")

        # Filters.
        self.assertEqual(self.ids(await self.search(self.alice, criteria(
            "martians", order_by="recent", filter={"rooms": [other]}))), [m3])
        self.assertEqual(self.ids(await self.search(self.alice, criteria(
            "martians", order_by="recent", filter={"not_rooms": [other], "senders": [BOB]}))), [m2])
        self.assertEqual(self.ids(await self.search(self.alice, criteria(
            "martians", filter={"not_types": ["m.room.message"]}))), [])
        self.assertEqual(self.ids(await self.search(self.alice, criteria(
            "martians", keys=["content.topic"]))), [])
        self.assertEqual(self.ids(await self.search(self.alice, criteria("   "))), [])

    async def test_privacy(self) -> None:
        encrypted = await self.create_room(self.alice, initial_state=[
            {"type": "m.room.encryption", "state_key": "",
             "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
        await self.send_ok(self.alice, encrypted, "plaintext secret")
        room = await self.create_room(self.alice, preset="public_chat")
        await self.put_state(self.alice, room, "m.room.history_visibility",
                             {"history_visibility": "joined"})
        early = await self.send_ok(self.alice, room, "secret before bob")
        await self.join(self.bob, room)
        late = await self.send_ok(self.alice, room, "secret after bob")
        self.assertEqual(self.ids(await self.search(self.alice, criteria("secret", order_by="recent"))),
                         [late, early])
        self.assertEqual(self.ids(await self.search(self.bob, criteria("secret"))), [late])
        # Redacted: gone from the index.
        self._txn += 1
        resp = await self.request("PUT", f"{CS}/rooms/{q(room)}/redact/{q(late)}/r{self._txn}", {},
                                  token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(self.ids(await self.search(self.alice, criteria("secret"))), [early])
        # Turning encryption on drops the room's rows.
        await self.put_state(self.alice, room, "m.room.encryption",
                             {"algorithm": "m.megolm.v1.aes-sha2"})
        self.assertEqual(self.ids(await self.search(self.alice, criteria("secret"))), [])
        self.assertEqual(await self.hs.db.query("rows", "SELECT * FROM event_search"), [])

    async def test_context_state_and_groups(self) -> None:
        room = await self.create_room(self.alice, preset="public_chat", name="Old name")
        await self.join(self.bob, room)
        old_name = (await self.request("GET", f"{CS}/rooms/{q(room)}/state/m.room.name?format=event",
                                       token=self.alice)).json["event_id"]
        await self.put_state(self.alice, room, "m.room.name", {"name": "Hall"})
        self._txn += 1
        await self.request("PUT", f"{CS}/rooms/{q(room)}/redact/{q(old_name)}/r{self._txn}", {},
                           token=self.alice)
        before = await self.send_ok(self.alice, room, "first")
        hit = await self.send_ok(self.bob, room, "the needle")
        after = await self.send_ok(self.alice, room, "last")
        resp = await self.search(self.alice, criteria(
            "needle", event_context={"before_limit": 1, "after_limit": 1, "include_profile": True},
            include_state=True, groupings={"group_by": [{"key": "room_id"}, {"key": "sender"}]}))
        events = resp.json["search_categories"]["room_events"]
        context = events["results"][0]["context"]
        self.assertEqual([e["event_id"] for e in context["events_before"]], [before])
        self.assertEqual([e["event_id"] for e in context["events_after"]], [after])
        self.assertTrue(context["start"].startswith("t") and context["end"].startswith("t"))
        self.assertEqual(context["profile_info"][BOB], {"displayname": "bob"})
        names = [e for e in events["state"][room] if e["type"] == "m.room.name"]
        self.assertEqual(names[0]["content"], {"name": "Hall"})
        # The redacted old name does not come back through prev_content.
        self.assertEqual(names[0]["unsigned"]["prev_content"], {})
        self.assertEqual(events["groups"]["room_id"][room], {"results": [hit], "order": 0})
        self.assertEqual(events["groups"]["sender"][BOB]["results"], [hit])
        for bad in (criteria("x", event_context={"before_limit": "5"}), criteria(5),
                    criteria("x", filter={"rooms": ["nope"]}), criteria("x", keys=["content.x"]),
                    {"search_categories": {"room_events": {}}}):
            self.assertEqual((await self.search(self.alice, bad)).code, 400, bad)

    async def test_start_up_catch_up_and_disable(self) -> None:
        room = await self.create_room(self.alice)
        found = await self.send_ok(self.alice, room, "indexed later")
        await self.hs.db.execute("wipe", "DELETE FROM event_search")
        await self.hs.db.execute("wipe", "DELETE FROM event_index_progress WHERE name = 'search'")
        self.assertEqual(self.ids(await self.search(self.alice, criteria("indexed"))), [])
        stores = self.hs.stores
        position = await stores.events.max_stream_ordering()
        creation_like = _Snapshots()
        await SearchIndexer(True, stores.search, stores.relations, stores.events,
                            creation_like).start(position)  # type: ignore[arg-type]
        self.assertEqual(self.ids(await self.search(self.alice, criteria("indexed"))), [found])
        # Switched off: every copy is deleted.
        await SearchIndexer(False, stores.search, stores.relations, stores.events,
                            creation_like).start(position)  # type: ignore[arg-type]
        self.assertEqual(await self.hs.db.query("rows", "SELECT * FROM event_search"), [])


class _Snapshots:
    """The catch-up reads state from the store; it never asks the creation handler."""

"""Event relations: GET /relations, GET /threads, bundled aggregations on /event and
/sync, the relations index (redactions, start-up catch-up)."""

from __future__ import annotations

from typing import Any

from homeserver.handlers.relations import RelationsIndexer
from tests.rest.room_helpers import CS, RoomTestCase, q

V1 = "/_matrix/client/v1"
ALICE = "@alice:test.local"
BOB = "@bob:test.local"


def rel(rel_type: str, parent: str, body: str = "x", **extra: Any) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": body,
            "m.relates_to": {"rel_type": rel_type, "event_id": parent, **extra}}


def edit(parent: str, body: str) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": f"* {body}",
            "m.new_content": {"msgtype": "m.text", "body": body},
            "m.relates_to": {"rel_type": "m.replace", "event_id": parent}}


class RelationsTestCase(RoomTestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")
        self.room = await self.create_room(self.alice, preset="public_chat")
        self.assertEqual((await self.join(self.bob, self.room)).code, 200)

    async def send_rel(self, token: str, content: dict[str, Any], event_type: str = "m.room.message",
                       room: str | None = None) -> str:
        resp = await self.send(token, room or self.room, event_type=event_type, content=content)
        self.assertEqual(resp.code, 200, resp)
        return resp.json["event_id"]

    async def relations(self, token: str | None, event_id: str, suffix: str = "",
                        query: str = "", room: str | None = None) -> Any:
        path = f"{V1}/rooms/{q(room or self.room)}/relations/{q(event_id)}{suffix}"
        return await self.request("GET", path + (f"?{query}" if query else ""), token=token)

    async def redact(self, token: str, event_id: str) -> None:
        self._txn += 1
        resp = await self.request(
            "PUT", f"{CS}/rooms/{q(self.room)}/redact/{q(event_id)}/r{self._txn}", {}, token=token)
        self.assertEqual(resp.code, 200, resp)


class RelationsEndpointTest(RelationsTestCase):
    async def test_children_filters_and_pages(self) -> None:
        root = await self.send_ok(self.alice, self.room, "root")
        t1 = await self.send_rel(self.bob, rel("m.thread", root, "one"))
        react = await self.send_rel(self.bob, rel("m.annotation", root, key="👍"),
                                    event_type="m.reaction")
        ref = await self.send_rel(self.alice, rel("m.reference", root))
        t2 = await self.send_rel(self.alice, rel("m.thread", root, "two"))
        await self.send_ok(self.alice, self.room, "unrelated")

        resp = await self.relations(self.alice, root, query="limit=10")
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual([e["event_id"] for e in resp.json["chunk"]], [t2, ref, react, t1])
        self.assertNotIn("next_batch", resp.json)
        self.assertNotIn("prev_batch", resp.json)
        self.assertNotIn("recursion_depth", resp.json)
        self.assertEqual(resp.json["chunk"][0]["room_id"], self.room)

        threads = await self.relations(self.alice, root, "/m.thread")
        self.assertEqual([e["event_id"] for e in threads.json["chunk"]], [t2, t1])
        reactions = await self.relations(self.alice, root, "/m.annotation/m.reaction")
        self.assertEqual([e["event_id"] for e in reactions.json["chunk"]], [react])
        none = await self.relations(self.alice, root, "/m.annotation/m.room.message")
        self.assertEqual(none.json, {"chunk": []})

        # Backwards in pages of 2, then forwards.
        page1 = await self.relations(self.alice, root, query="limit=2")
        self.assertEqual([e["event_id"] for e in page1.json["chunk"]], [t2, ref])
        page2 = await self.relations(self.alice, root,
                                     query=f"limit=2&from={q(page1.json['next_batch'])}")
        self.assertEqual([e["event_id"] for e in page2.json["chunk"]], [react, t1])
        self.assertEqual(page2.json["prev_batch"], page1.json["next_batch"])
        self.assertNotIn("next_batch", page2.json)
        # "to" stops the page: from page 1's start to page 2's token is page 1 only.
        bounded = await self.relations(self.alice, root,
                                       query=f"limit=10&to={q(page1.json['next_batch'])}")
        self.assertEqual([e["event_id"] for e in bounded.json["chunk"]], [t2, ref])
        fwd = await self.relations(self.alice, root, query="dir=f&limit=3")
        self.assertEqual([e["event_id"] for e in fwd.json["chunk"]], [t1, react, ref])
        fwd2 = await self.relations(self.alice, root,
                                    query=f"dir=f&limit=3&from={q(fwd.json['next_batch'])}")
        self.assertEqual([e["event_id"] for e in fwd2.json["chunk"]], [t2])
        # A /sync token works as "from" too.
        since = (await self.sync(self.alice))["next_batch"]
        synced = await self.relations(self.alice, root, query=f"from={q(since)}&limit=10")
        self.assertEqual(len(synced.json["chunk"]), 4)

    async def test_recurse(self) -> None:
        root = await self.send_ok(self.alice, self.room, "root")
        child = await self.send_rel(self.bob, rel("m.thread", root))
        grandchild = await self.send_rel(self.alice, rel("m.annotation", child, key="x"),
                                         event_type="m.reaction")
        flat = await self.relations(self.alice, root, query="recurse=false")
        self.assertEqual([e["event_id"] for e in flat.json["chunk"]], [child])
        self.assertEqual(flat.json["recursion_depth"], 1)
        deep = await self.relations(self.alice, root, query="recurse=true")
        self.assertEqual([e["event_id"] for e in deep.json["chunk"]], [grandchild, child])
        self.assertEqual(deep.json["recursion_depth"], 3)
        only = await self.relations(self.alice, root, "/m.annotation", query="recurse=true")
        self.assertEqual([e["event_id"] for e in only.json["chunk"]], [grandchild])

    async def test_bad_input(self) -> None:
        root = await self.send_ok(self.alice, self.room, "root")
        no_token = await self.relations(None, root)
        self.assertMatrixError(no_token, 401, "M_MISSING_TOKEN")
        for query in ("dir=x", "from=nonsense", "to=t--1", "limit=abc", "limit=-1", "recurse=maybe"):
            self.assertMatrixError(await self.relations(self.alice, root, query=query), 400,
                                   "M_INVALID_PARAM")
        self.assertMatrixError(await self.relations(self.alice, "not-an-event"), 400,
                               "M_INVALID_PARAM")
        self.assertMatrixError(await self.relations(self.alice, root, room="bad"), 400,
                               "M_INVALID_PARAM")
        self.assertMatrixError(await self.relations(self.alice, "$unknown"), 404, "M_NOT_FOUND")
        # The event exists, but in another room than the one named.
        other = await self.create_room(self.alice)
        self.assertMatrixError(await self.relations(self.alice, root, room=other), 404, "M_NOT_FOUND")
        self.assertMatrixError(await self.relations(self.alice, root, room="!nope:test.local"), 404,
                               "M_NOT_FOUND")

    async def test_visibility(self) -> None:
        private = await self.create_room(self.alice)
        await self.put_state(self.alice, private, "m.room.history_visibility",
                             {"history_visibility": "joined"})
        root = await self.send_ok(self.alice, private, "secret root")
        early = await self.send_rel(self.alice, rel("m.thread", root, "early"), room=private)
        # Bob is not in the room: the parent does not exist for him.
        self.assertMatrixError(await self.relations(self.bob, root, room=private), 404, "M_NOT_FOUND")
        await self.member(self.alice, private, "invite", user_id=BOB)
        await self.join(self.bob, private)
        # Still hidden: sent before he joined, with joined-only history.
        self.assertMatrixError(await self.relations(self.bob, root, room=private), 404, "M_NOT_FOUND")
        late_root = await self.send_ok(self.alice, private, "visible root")
        late = await self.send_rel(self.alice, rel("m.thread", late_root, "late"), room=private)
        got = await self.relations(self.bob, late_root, room=private)
        self.assertEqual([e["event_id"] for e in got.json["chunk"]], [late])
        # The early reply is hidden on its own too.
        self.assertMatrixError(await self.get_event(self.bob, private, early), 404, "M_NOT_FOUND")

    async def test_send_checks(self) -> None:
        root = await self.send_ok(self.alice, self.room, "root")
        other = await self.create_room(self.alice)

        async def send(content: dict[str, Any], room: str | None = None, token: str | None = None,
                       event_type: str = "m.room.message", txn: str | None = None) -> Any:
            return await self.send(token or self.alice, room or self.room, event_type=event_type,
                                   content=content, txn=txn)

        # A parent in another room is answered as unknown (no hint that it exists).
        cross = await send(rel("m.thread", root), room=other)
        self.assertMatrixError(cross, 400, "M_INVALID_PARAM")
        self.assertMatrixError(await send(rel("m.thread", "$unknown")), 400, "M_INVALID_PARAM")
        self.assertMatrixError(await send(rel("m.annotation", root), event_type="m.reaction"), 400,
                               "M_INVALID_PARAM")
        self.assertMatrixError(await send(rel("m.annotation", root, key="k" * 501),
                                          event_type="m.reaction"), 400, "M_INVALID_PARAM")
        first = await send(rel("m.annotation", root, key="👍"), event_type="m.reaction", txn="r1")
        self.assertEqual(first.code, 200, first)
        # A retry of the same transaction is not a duplicate; a new one is.
        retry = await send(rel("m.annotation", root, key="👍"), event_type="m.reaction", txn="r1")
        self.assertEqual(retry.json, first.json)
        self.assertMatrixError(await send(rel("m.annotation", root, key="👍"), event_type="m.reaction"),
                               400, "M_DUPLICATE_ANNOTATION")
        self.assertEqual((await send(rel("m.annotation", root, key="👍"), event_type="m.reaction",
                                     token=self.bob)).code, 200)
        reply = await self.send_rel(self.bob, rel("m.thread", root))
        self.assertMatrixError(await send(rel("m.thread", reply)), 400, "M_INVALID_PARAM")
        # Non-members get the auth rules' answer, not a hint about event ids.
        carol = await self.user("carol")
        self.assertMatrixError(await send(rel("m.thread", "$unknown"), token=carol), 403,
                               "M_FORBIDDEN")
        self.assertMatrixError(await send(rel("m.thread", root), token=carol), 403, "M_FORBIDDEN")
        # A malformed m.relates_to is no relation at all: sent, not indexed.
        plain = await send({"body": "x", "m.relates_to": {"rel_type": 5, "event_id": root}})
        self.assertEqual(plain.code, 200, plain)
        kinds = {e["type"] for e in (await self.relations(self.alice, root)).json["chunk"]}
        self.assertEqual(kinds, {"m.reaction", "m.room.message"})


class BundledAggregationsTest(RelationsTestCase):
    async def test_edits_threads_references_on_event_and_sync(self) -> None:
        root = await self.send_ok(self.alice, self.room, "root")
        await self.send_rel(self.alice, edit(root, "first edit"))
        self.advance(1)
        second = await self.send_rel(self.alice, edit(root, "second edit"))
        self.advance(1)
        # Bob cannot edit Alice's message; nor is a different event type an edit.
        await self.send_rel(self.bob, edit(root, "hijack"))
        await self.send_rel(self.alice, {"m.relates_to": {"rel_type": "m.replace", "event_id": root},
                                         "m.new_content": {}}, event_type="m.sticker")
        t1 = await self.send_rel(self.bob, rel("m.thread", root, "reply 1"))
        t2 = await self.send_rel(self.bob, rel("m.thread", root, "reply 2"))
        t2_edit = await self.send_rel(self.bob, edit(t2, "reply 2 edited"))
        ref = await self.send_rel(self.alice, rel("m.reference", root))

        got = await self.get_event(self.alice, self.room, root)
        self.assertEqual(got.code, 200, got)
        relations = got.json["unsigned"]["m.relations"]
        self.assertEqual(relations["m.replace"]["event_id"], second)
        self.assertEqual(relations["m.replace"]["content"]["m.new_content"]["body"], "second edit")
        thread = relations["m.thread"]
        self.assertEqual(thread["count"], 2)
        self.assertEqual(thread["latest_event"]["event_id"], t2)
        self.assertTrue(thread["current_user_participated"])  # Alice sent the root
        self.assertEqual(thread["latest_event"]["unsigned"]["m.relations"]["m.replace"]["event_id"],
                         t2_edit)
        self.assertEqual(relations["m.reference"], {"chunk": [{"event_id": ref}]})
        # Bob replied in the thread.
        bob_view = await self.get_event(self.bob, self.room, root)
        self.assertTrue(bob_view.json["unsigned"]["m.relations"]["m.thread"]["current_user_participated"])
        # Edits and annotations carry no aggregations; thread replies no thread summary.
        reply = await self.get_event(self.alice, self.room, t1)
        self.assertNotIn("m.relations", reply.json["unsigned"])

        # The same bundle in /sync, without room ids.
        synced = await self.sync(self.alice)
        timeline = synced["rooms"]["join"][self.room]["timeline"]["events"]
        by_id = {e["event_id"]: e for e in timeline}
        bundled = by_id[root]["unsigned"]["m.relations"]
        self.assertEqual(bundled["m.replace"]["event_id"], second)
        self.assertNotIn("room_id", bundled["m.replace"])
        self.assertEqual(bundled["m.thread"]["latest_event"]["event_id"], t2)
        self.assertEqual(bundled["m.thread"]["count"], 2)

    async def test_messages_and_context(self) -> None:
        root = await self.send_ok(self.alice, self.room, "root")
        reply = await self.send_rel(self.bob, rel("m.thread", root, "reply"))
        resp = await self.request("GET", f"{CS}/rooms/{q(self.room)}/messages?dir=b&limit=10",
                                  token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        by_id = {e["event_id"]: e for e in resp.json["chunk"]}
        thread = by_id[root]["unsigned"]["m.relations"]["m.thread"]
        self.assertEqual((thread["latest_event"]["event_id"], thread["count"]), (reply, 1))
        ctx = await self.request("GET", f"{CS}/rooms/{q(self.room)}/context/{q(root)}",
                                 token=self.bob)
        self.assertEqual(ctx.code, 200, ctx)
        thread = ctx.json["event"]["unsigned"]["m.relations"]["m.thread"]
        self.assertTrue(thread["current_user_participated"])

    async def test_redactions(self) -> None:
        root = await self.send_ok(self.alice, self.room, "root")
        first = await self.send_rel(self.alice, edit(root, "first"))
        self.advance(1)
        second = await self.send_rel(self.alice, edit(root, "second"))
        # Redacting the latest edit brings back the previous one.
        await self.redact(self.alice, second)
        got = await self.get_event(self.alice, self.room, root)
        self.assertEqual(got.json["unsigned"]["m.relations"]["m.replace"]["event_id"], first)
        listed = await self.relations(self.alice, root)
        self.assertEqual([e["event_id"] for e in listed.json["chunk"]], [first])
        # A redacted original shows no edit (that would leak the redacted content).
        await self.redact(self.alice, root)
        got = await self.get_event(self.alice, self.room, root)
        self.assertIn("redacted_because", got.json["unsigned"])
        self.assertNotIn("m.relations", got.json["unsigned"])
        self.assertEqual((await self.relations(self.alice, root)).json["chunk"], [])

    async def test_hidden_replies_are_not_counted(self) -> None:
        await self.put_state(self.alice, self.room, "m.room.history_visibility",
                             {"history_visibility": "joined"})
        root = await self.send_ok(self.alice, self.room, "root")
        t1 = await self.send_rel(self.alice, rel("m.thread", root, "seen by bob"))
        self.assertEqual((await self.member(self.bob, self.room, "leave")).code, 200)
        await self.send_rel(self.alice, rel("m.thread", root, "after bob left"))
        thread = (await self.get_event(self.bob, self.room, root)).json["unsigned"]["m.relations"]["m.thread"]
        self.assertEqual((thread["latest_event"]["event_id"], thread["count"]), (t1, 1))
        self.assertFalse(thread["current_user_participated"])
        alice_thread = (await self.get_event(self.alice, self.room, root)).json
        self.assertEqual(alice_thread["unsigned"]["m.relations"]["m.thread"]["count"], 2)

    async def test_catch_up_indexes_missed_events(self) -> None:
        root = await self.send_ok(self.alice, self.room, "root")
        reply = await self.send_rel(self.bob, rel("m.thread", root))
        gone = await self.send_rel(self.bob, rel("m.reference", root))
        await self.redact(self.bob, gone)
        # Lose the index (as if the hooks never ran), then catch up as at start-up.
        await self.hs.db.execute("wipe", "DELETE FROM event_relations")
        await self.hs.db.execute("wipe", "DELETE FROM event_index_progress")
        self.assertEqual((await self.relations(self.alice, root)).json["chunk"], [])
        indexer = RelationsIndexer(self.hs.stores.relations, self.hs.stores.events)
        position = await self.hs.stores.events.max_stream_ordering()
        self.assertEqual(await indexer.catch_up(position), 2)
        got = await self.relations(self.alice, root)
        self.assertEqual([e["event_id"] for e in got.json["chunk"]], [reply])
        self.assertEqual(await self.hs.stores.relations.get_progress("relations"), position)
        self.assertEqual(await indexer.catch_up(position), 0)


class ThreadsTest(RelationsTestCase):
    async def threads(self, token: str | None, query: str = "", room: str | None = None) -> Any:
        path = f"{V1}/rooms/{q(room or self.room)}/threads"
        return await self.request("GET", path + (f"?{query}" if query else ""), token=token)

    async def test_list_order_participation_and_pages(self) -> None:
        a = await self.send_ok(self.alice, self.room, "thread a")
        b = await self.send_ok(self.bob, self.room, "thread b")
        c = await self.send_ok(self.bob, self.room, "thread c")
        await self.send_rel(self.bob, rel("m.thread", a))
        await self.send_rel(self.bob, rel("m.thread", b))
        await self.send_rel(self.bob, rel("m.thread", c))
        await self.send_rel(self.alice, rel("m.thread", b))  # b is now the most recent

        listed = await self.threads(self.alice)
        self.assertEqual(listed.code, 200, listed)
        self.assertEqual([e["event_id"] for e in listed.json["chunk"]], [b, c, a])
        self.assertNotIn("next_batch", listed.json)
        self.assertEqual(listed.json["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["count"], 2)
        # Alice sent a and replied to b; c is Bob's alone.
        mine = await self.threads(self.alice, "include=participated")
        self.assertEqual([e["event_id"] for e in mine.json["chunk"]], [b, a])

        first = await self.threads(self.alice, "limit=2")
        self.assertEqual([e["event_id"] for e in first.json["chunk"]], [b, c])
        rest = await self.threads(self.alice, f"limit=2&from={q(first.json['next_batch'])}")
        self.assertEqual(rest.code, 200, rest)
        self.assertEqual([e["event_id"] for e in rest.json["chunk"]], [a])
        self.assertNotIn("next_batch", rest.json)

    async def test_errors(self) -> None:
        self.assertMatrixError(await self.threads(None), 401, "M_MISSING_TOKEN")
        for query in ("include=mine", "limit=0", "limit=x", "from=%%%", "from=WzEsMl0"):
            self.assertMatrixError(await self.threads(self.alice, query), 400, "M_INVALID_PARAM")
        private = await self.create_room(self.alice)
        self.assertMatrixError(await self.threads(self.bob, room=private), 403, "M_FORBIDDEN")
        self.assertMatrixError(await self.threads(self.bob, room="!unknown:test.local"), 403,
                               "M_FORBIDDEN")
        self.assertMatrixError(await self.threads(self.bob, room="nope"), 400, "M_INVALID_PARAM")

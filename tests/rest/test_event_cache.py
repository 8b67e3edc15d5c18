"""/sync through the decoded-event cache (storage/stores/event_cache.py, issue 18).

A change made by another process (here: stores of its own on the same database, as a
worker has) must be seen by the next /sync, and serving events from the cache must
never change what is cached."""

from __future__ import annotations

import json

from homeserver.events.client_format import serialize_event
from homeserver.events.redaction import prune_event_dict
from storage.stores.erasure import ErasureStore
from storage.stores.events import EventStore
from tests.rest.room_helpers import CS, RoomTestCase, q

LAZY = json.dumps({"room": {"state": {"lazy_load_members": True}}})


def bodies(sync: dict, room: str) -> dict[str, object]:
    joined = sync["rooms"]["join"][room]
    return {e["event_id"]: e["content"].get("body")
            for e in joined["timeline"]["events"] if e["type"] == "m.room.message"}


def member_content(sync: dict, room: str, user: str) -> dict:
    joined = sync["rooms"]["join"][room]
    for e in joined["state"]["events"] + joined["timeline"]["events"]:
        if e["type"] == "m.room.member" and e["state_key"] == user:
            return e["content"]
    raise AssertionError(f"no member event of {user}")


class EventCacheSyncTest(RoomTestCase):
    async def test_erasure_by_another_process_is_seen_at_once(self) -> None:
        """bob's message and member event, cached by alice's first /sync, are pruned in
        the database by another process: alice's next /sync serves them pruned."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        self.assertEqual((await self.join(bob, room)).code, 200)
        resp = await self.request("PUT", f"{CS}/profile/{q('@bob:test.local')}/displayname",
                                  {"displayname": "Bob Secret"}, token=bob)
        self.assertEqual(resp.code, 200, resp)
        for _ in range(12):  # bob's member event falls out of the timeline: in the state
            await self.send_ok(alice, room, "filler")
        secret = await self.send_ok(bob, room, "the secret")
        first = await self.sync(alice)
        self.assertEqual(bodies(first, room)[secret], "the secret")
        self.assertEqual(member_content(first, room, "@bob:test.local")["displayname"],
                         "Bob Secret")
        events = self.hs.stores.events
        self.assertGreater(len(events.event_cache), 0)

        elsewhere = EventStore(self.hs.db)  # another worker's: its own (empty) cache
        found = await elsewhere.get_events([secret])
        member_id = [eid for eid, ev in (await elsewhere.get_events(
            e["event_id"] for e in first["rooms"]["join"][room]["state"]["events"])).items()
            if ev.type == "m.room.member" and ev.state_key == "@bob:test.local"]
        found.update(await elsewhere.get_events(member_id))
        await ErasureStore(self.hs.db).replace_events([
            (eid, json.dumps(prune_event_dict(ev.pdu, ev.room_version)))
            for eid, ev in found.items()])

        again = await self.sync(alice)
        self.assertIsNone(bodies(again, room)[secret])
        self.assertNotIn("displayname", member_content(again, room, "@bob:test.local"))
        lazy = await self.sync(alice, filter=LAZY)
        self.assertIsNone(bodies(lazy, room)[secret])

    async def test_served_twice_the_same_and_cache_untouched(self) -> None:
        """Initial syncs (full and lazy) answer the same from the cache as from the
        database, through redactions, edits, threads and replaced state; every cached
        PDU is still exactly what is stored."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat", name="first name")
        self.assertEqual((await self.join(bob, room)).code, 200)
        target = await self.send_ok(bob, room, "to be redacted")
        resp = await self.request("PUT", f"{CS}/rooms/{q(room)}/redact/{q(target)}/cache-r1",
                                  {"reason": "no"}, token=bob)
        self.assertEqual(resp.code, 200, resp)
        original = await self.send_ok(alice, room, "typo")
        resp = await self.request(
            "PUT", f"{CS}/rooms/{q(room)}/send/m.room.message/cache-e1",
            {"msgtype": "m.text", "body": "* fixed", "m.new_content": {
                "msgtype": "m.text", "body": "fixed"},
             "m.relates_to": {"rel_type": "m.replace", "event_id": original}}, token=alice)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.put_state(alice, room, "m.room.name", {"name": "second name"})
        self.assertEqual(resp.code, 200, resp)
        name_id = resp.json["event_id"]
        resp = await self.request("PUT", f"{CS}/rooms/{q(room)}/redact/{q(name_id)}/cache-r2",
                                  {}, token=alice)
        self.assertEqual(resp.code, 200, resp)

        def strip(sync: dict) -> dict:  # what depends on the time of the request
            out = json.loads(json.dumps(sync["rooms"]["join"]))
            for r in out.values():
                for e in r["timeline"]["events"] + r["state"]["events"]:
                    e.get("unsigned", {}).pop("age", None)
                    e.get("unsigned", {}).get("redacted_because", {}).get(
                        "unsigned", {}).pop("age", None)
            return out

        events = self.hs.stores.events
        for filt in (None, LAZY):
            cold = await self.sync(alice, filter=filt)
            hits = events.event_cache.hits
            warm = await self.sync(alice, filter=filt)
            self.assertGreater(events.event_cache.hits, hits)
            self.assertEqual(strip(warm), strip(cold))
        timeline = {e["event_id"]: e for e in warm["rooms"]["join"][room]["timeline"]["events"]}
        self.assertNotIn("body", timeline[target]["content"])  # served redacted
        stored = {r[0]: json.loads(r[1]) for r in await self.hs.db.query(
            "t", "SELECT event_id, json FROM events")}
        cached = list(events.event_cache._entries.items())  # noqa: SLF001
        self.assertGreater(len(cached), 10)
        for event_id, ev in cached:
            self.assertEqual(ev.pdu, stored[event_id], event_id)
        # The remembered client forms are serialize_event's, age and echo included
        # (alice's own sends carry her device's transaction id).
        serializer = self.hs.websockets.sync.serializer
        whoami = await self.request("GET", f"{CS}/account/whoami", token=alice)
        device = whoami.json["device_id"]
        echoed = 0
        for _event_id, ev in cached:
            for with_room in (False, True):
                for user, dev in (("@alice:test.local", device), ("@bob:test.local", None)):
                    for _ in range(2):  # made, then copied
                        form = serializer._form(ev, 5_000_000_000_000, user, dev,  # noqa: SLF001
                                                with_room)
                        self.assertEqual(form, serialize_event(
                            ev, 5_000_000_000_000, for_user=user, for_device=dev,
                            include_room_id=with_room))
                        echoed += "transaction_id" in form["unsigned"]
        self.assertGreater(echoed, 0)


class VisibilityRefsCacheTest(RoomTestCase):
    async def test_cached_refs_answer_as_the_database(self) -> None:
        """The (history visibility, member event) pairs cached per state group and user
        (state_reads.py ``_visibility_refs``) answer what the database does, for each
        user, across visibility and membership changes; a second read asks the database
        only for which group each event has."""
        from storage.stores.state_history import StateHistoryStore

        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        ids = [await self.send_ok(alice, room, "before bob")]
        self.assertEqual((await self.join(bob, room)).code, 200)
        ids.append(await self.send_ok(bob, room, "bob here"))
        resp = await self.request(
            "PUT", f"{CS}/rooms/{q(room)}/state/m.room.history_visibility/",
            {"history_visibility": "joined"}, token=alice)
        self.assertEqual(resp.code, 200, resp)
        ids.append(await self.send_ok(alice, room, "joined only"))
        resp = await self.request("POST", f"{CS}/rooms/{q(room)}/leave", {}, token=bob)
        self.assertEqual(resp.code, 200, resp)
        ids.append(await self.send_ok(alice, room, "bob gone"))
        cached = self.hs.stores.state_history
        self.assertIs(cached.state_cache, self.hs.stores.events.state_cache)
        plain = StateHistoryStore(self.hs.db)  # no cache: read from the database
        for user in ("@alice:test.local", "@bob:test.local", "@carol:test.local"):
            want = await plain.visibility_state_before(ids, user)
            self.assertEqual(await cached.visibility_state_before(ids, user), want)
            self.assertEqual(await cached.visibility_state_before(ids, user), want)  # cached
        # The second reads were answered from the cache: the pairs are held.
        self.assertEqual(len(cached.state_cache.refs(range(100_000), "@bob:test.local")),
                         len({g for g in await self._groups_before(ids)}))

    async def _groups_before(self, ids: list[str]) -> set[int]:
        groups = await self.hs.stores.events.get_state_groups(ids)
        return {before for _after, before in groups.values() if before is not None}

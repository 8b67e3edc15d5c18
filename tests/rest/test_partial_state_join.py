"""Faster joins (spec v1.6 ``omit_members``, issue 16 "Speed") between two in-process
servers: the resident side's send_join answer with and without ``omit_members``
checked against the spec, and the joining side (``federation.partial_state_joins``):
the room usable before its members are resynced, /joined_members waiting for the
resync, members complete after, a restart resuming the resync, and a resident that
ignores the flag changing nothing. /sync and sliding sync: the room is left out until
the resync unless the client lazy-loads members, then sent once with its full state
(a long-poll woken by the resync); a room purge removes the partial-state rows."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from twisted.internet import defer, reactor, task

import federation.client
import federation.membership as resident_module
from homeserver.app import build_homeserver
from homeserver.events.hashing import compute_event_id
from homeserver.events.signing import sign_event
from homeserver.handlers.partial_state import PartialStateHandler
from storage.stores.admin_rooms import AdminRoomStore
from tests.rest.e2e_helpers import OlmDevice
from tests.rest.federation_helpers import current_state
from tests.rest.test_federation_keys import federation_section
from tests.rest.test_federation_membership import MembershipTestCase
from tests.rest.test_federation_queries import CS, q

FED = "/_matrix/federation"
REMOTE = "remote.test"
SS = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
LAZY = "?filter=" + quote(json.dumps({"room": {"state": {"lazy_load_members": True}}}))


class ResidentTest(MembershipTestCase):
    """test.local is the resident; remote.test's bob joins with signed requests."""

    async def signed_join(self, room_id: str) -> tuple[str, dict[str, Any]]:
        path = f"{FED}/v1/make_join/{q(room_id)}/{q('@bob:remote.test')}?ver=10"
        resp = await self.remote_signed("GET", path)
        self.assertEqual(resp.code, 200, resp)
        pdu = dict(resp.json["event"])
        pdu["origin"] = REMOTE
        assert self.remote.federation is not None
        signed = sign_event(pdu, REMOTE, self.remote.federation.local_keys.signing_key, "10")
        return compute_event_id(signed, "10"), signed

    async def send_join(self, room_id: str, event_id: str, pdu: dict[str, Any],
                        query: str = "") -> dict[str, Any]:
        resp = await self.remote_signed(
            "PUT", f"{FED}/v2/send_join/{q(room_id)}/{q(event_id)}{query}", pdu)
        self.assertEqual(resp.code, 200, resp)
        return resp.json  # type: ignore[no-any-return]

    def check_chain_complete(self, answer: dict[str, Any], join: dict[str, Any]) -> None:
        """Every auth event of the join and of the returned state is in state or chain."""
        given = {compute_event_id(p, "10"): p for p in answer["state"] + answer["auth_chain"]}
        for pdu in [join, *given.values()]:
            for auth_id in pdu["auth_events"]:
                self.assertIn(auth_id, given)

    async def test_named_room_with_and_without_omit_members(self) -> None:
        alice = await self.account(self.hs, "alice")
        carol = await self.account(self.hs, "carol")
        room = await self.ok(self.hs, "POST", f"{CS}/createRoom",
                             {"preset": "public_chat", "name": "Big room"}, alice.token)
        room_id = room["room_id"]
        await self.ok(self.hs, "POST", f"{CS}/join/{q(room_id)}", {}, carol.token)
        event_id, pdu = await self.signed_join(room_id)

        full = await self.send_join(room_id, event_id, pdu)
        self.assertIs(full["members_omitted"], False)
        members = {p["state_key"] for p in full["state"] if p["type"] == "m.room.member"}
        self.assertEqual(members, {alice.user_id, carol.user_id})
        self.check_chain_complete(full, pdu)

        # The same join asked again with omit_members (the event is held already).
        partial = await self.send_join(room_id, event_id, pdu, "?omit_members=true")
        self.assertIs(partial["members_omitted"], True)
        self.assertEqual(partial["servers_in_room"], ["test.local"])
        types = sorted(p["type"] for p in partial["state"])
        self.assertNotIn("m.room.member", types)
        full_types = sorted(p["type"] for p in full["state"] if p["type"] != "m.room.member")
        self.assertEqual(types, full_types)
        # Nothing in state is repeated in the auth chain, and the chain is complete.
        state_ids = {compute_event_id(p, "10") for p in partial["state"]}
        chain_ids = {compute_event_id(p, "10") for p in partial["auth_chain"]}
        self.assertEqual(state_ids & chain_ids, set())
        self.check_chain_complete(partial, pdu)
        # The creator's join is in the chain (the power levels cite it); carol's is not.
        chain_members = {p["state_key"] for p in partial["auth_chain"]
                         if p["type"] == "m.room.member"}
        self.assertEqual(chain_members, {alice.user_id})
        self.assertLess(len(partial["state"]) + len(partial["auth_chain"]),
                        len(full["state"]) + len(full["auth_chain"]))
        # omit_members=false is the full answer; a bad value is 400.
        again = await self.send_join(room_id, event_id, pdu, "?omit_members=false")
        self.assertIs(again["members_omitted"], False)
        resp = await self.remote_signed(
            "PUT", f"{FED}/v2/send_join/{q(room_id)}/{q(event_id)}?omit_members=maybe", pdu)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")

    async def test_unnamed_room_keeps_heroes(self) -> None:
        alice = await self.account(self.hs, "alice")
        carol = await self.account(self.hs, "carol")
        room = await self.ok(self.hs, "POST", f"{CS}/createRoom", {"preset": "public_chat"},
                             alice.token)
        room_id = room["room_id"]
        await self.ok(self.hs, "POST", f"{CS}/join/{q(room_id)}", {}, carol.token)
        event_id, pdu = await self.signed_join(room_id)
        answer = await self.send_join(room_id, event_id, pdu, "?omit_members=true")
        members = {p["state_key"] for p in answer["state"] if p["type"] == "m.room.member"}
        self.assertEqual(members, {alice.user_id, carol.user_id})
        # Every member is a hero here: nothing was left out.
        self.assertIs(answer["members_omitted"], False)
        self.assertEqual(answer["servers_in_room"], ["test.local"])
        self.check_chain_complete(answer, pdu)


class PartialJoinTestCase(MembershipTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"federation": federation_section(partial_state_joins=True)}

    def handler(self) -> Any:
        assert self.hs.federation is not None and self.hs.federation.membership is not None
        return self.hs.federation.membership.partial_state

    def gate_resync(self) -> defer.Deferred[None]:
        """Hold the resync's state fetch until the returned Deferred fires."""
        gate: defer.Deferred[None] = defer.Deferred()
        handler = self.handler()
        real = handler.fetch_state

        async def gated(server: str, room_id: str, event_id: str) -> Any:
            await gate
            return await real(server, room_id, event_id)
        handler.fetch_state = gated
        return gate

    async def big_room(self) -> tuple[OlmDevice, OlmDevice, str]:
        bob = await self.account(self.remote, "bob")
        carol = await self.account(self.remote, "carol")
        room_id = await self.remote_room(bob, preset="public_chat", name="Big")
        await self.ok(self.remote, "POST", f"{CS}/join/{q(room_id)}", {}, carol.token)
        await self.send_text(self.remote, bob, room_id, "before alice")
        return bob, carol, room_id

    async def until(self, condition: Any, what: str) -> None:
        for _ in range(200):
            if await condition():
                return
            await task.deferLater(reactor, 0.05, lambda: None)
        self.fail(what)

    async def member_keys(self, room_id: str) -> set[str]:
        state = await current_state(self.hs, room_id)
        return {sk for (t, sk) in state if t == "m.room.member"}


class JoiningSideTest(PartialJoinTestCase):
    async def test_room_usable_before_resync_members_complete_after(self) -> None:
        bob, carol, room_id = await self.big_room()
        alice = await self.account(self.hs, "alice")
        gate = self.gate_resync()
        await self.ok(self.hs, "POST", f"{CS}/join/{q(room_id)}?via={REMOTE}", {}, alice.token)
        self.assertTrue(self.handler().is_partial(room_id))
        # Only our own member event is known yet.
        self.assertEqual(await self.member_keys(room_id), {alice.user_id})
        # A client lazy-loading members has the room at once (see SyncTest).
        await self.sync_until(self.hs, alice, lambda b: room_id in b["rooms"]["join"],
                              query=LAZY)
        # Sending works, and reaches the resident (a server in servers_in_room).
        await self.send_text(self.hs, alice, room_id, "hi from alice")
        await self.sync_until(self.remote, bob,
                              lambda b: "hi from alice" in self.bodies(b, room_id))
        # bob's messages are accepted here though his member event is not held yet.
        await self.send_text(self.remote, bob, room_id, "hi from bob")
        await self.sync_until(self.hs, alice,
                              lambda b: "hi from bob" in self.bodies(b, room_id), query=LAZY)
        messages = await self.ok(self.hs, "GET", f"{CS}/rooms/{q(room_id)}/messages?dir=b",
                                 token=alice.token)
        self.assertIn("hi from bob", [e["content"].get("body") for e in messages["chunk"]])
        # /joined_members waits for the resync.
        pending = defer.ensureDeferred(self.ok(
            self.hs, "GET", f"{CS}/rooms/{q(room_id)}/joined_members", token=alice.token))
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(pending.called)
        gate.callback(None)
        joined = await pending
        self.assertEqual(set(joined["joined"]), {alice.user_id, bob.user_id, carol.user_id})
        self.assertFalse(self.handler().is_partial(room_id))
        self.assertEqual(await self.member_keys(room_id),
                         {alice.user_id, bob.user_id, carol.user_id})
        self.assertEqual(await self.hs.db.query(
            "t", "SELECT room_id FROM partial_state_rooms"), [])
        # The room goes on as any other: a new member event of the resident's user.
        await self.ok(self.remote, "PUT", f"{CS}/rooms/{q(room_id)}/state/m.room.topic/",
                      {"topic": "after"}, bob.token)
        await self.sync_until(self.hs, alice, lambda b: any(
            e["type"] == "m.room.topic" for e in self.timeline(b, room_id)))
        members = await self.members(self.hs, alice, room_id)
        self.assertEqual(members, {alice.user_id: "join", bob.user_id: "join",
                                   carol.user_id: "join"})

    async def test_members_wait_is_bounded(self) -> None:
        _bob, _carol, room_id = await self.big_room()
        alice = await self.account(self.hs, "alice")
        self.gate_resync()  # never released
        await self.ok(self.hs, "POST", f"{CS}/join/{q(room_id)}?via={REMOTE}", {}, alice.token)
        pending = defer.ensureDeferred(self.members(self.hs, alice, room_id))
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(pending.called)
        self.advance(31)
        members = await pending
        self.assertEqual(members, {alice.user_id: "join"})  # what is known
        self.assertTrue(self.handler().is_partial(room_id))

    async def test_restart_resumes_the_resync(self) -> None:
        bob, carol, room_id = await self.big_room()
        alice = await self.account(self.hs, "alice")
        self.gate_resync()  # never released: the first process stops partial
        await self.ok(self.hs, "POST", f"{CS}/join/{q(room_id)}?via={REMOTE}", {}, alice.token)
        self.assertTrue(self.handler().is_partial(room_id))
        await self.hs.stop()
        # The new process: its start (which resumes resyncs) is run once the test's
        # server discovery is in place (no real DNS in tests).
        real_start = PartialStateHandler.start

        async def later(handler: PartialStateHandler) -> None:
            return None
        PartialStateHandler.start = later  # type: ignore[method-assign]
        self.patch(federation.client, "ServerDiscovery", lambda *a, **kw: self.discovery)
        try:
            self.hs = await build_homeserver(self.config, clock=self.clock)
        finally:
            PartialStateHandler.start = real_start  # type: ignore[method-assign]
        port = self.hs.listen(reactor)[0]
        self.base_url = f"http://127.0.0.1:{port.getHost().port}"
        self.discovery.ports["test.local"] = port.getHost().port
        self.assertFalse(self.handler().is_partial(room_id))  # not loaded yet
        await self.handler().start()
        self.assertTrue(self.handler().is_partial(room_id))

        async def done() -> bool:
            return not self.handler().is_partial(room_id)
        await self.until(done, "the resync never finished after the restart")
        self.assertEqual(await self.member_keys(room_id),
                         {alice.user_id, bob.user_id, carol.user_id})


class IgnoringResidentTest(PartialJoinTestCase):
    async def test_resident_ignoring_omit_members(self) -> None:
        # A resident that answers with every member (members_omitted false).
        self.patch(resident_module, "partial_join_state", lambda state, join: dict(state))
        bob, carol, room_id = await self.big_room()
        alice = await self.account(self.hs, "alice")
        await self.ok(self.hs, "POST", f"{CS}/join/{q(room_id)}?via={REMOTE}", {}, alice.token)
        self.assertFalse(self.handler().is_partial(room_id))
        self.assertEqual(await self.member_keys(room_id),
                         {alice.user_id, bob.user_id, carol.user_id})
        self.assertEqual(await self.hs.db.query(
            "t", "SELECT room_id FROM partial_state_rooms"), [])
        await self.send_text(self.remote, bob, room_id, "plain join")
        await self.sync_until(self.hs, alice, lambda b: "plain join" in self.bodies(b, room_id))


def state_of(room: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """A synced room's state entries, from its state and its timeline."""
    return {(e["type"], e["state_key"]): e for e in room["state"]["events"]
            + room["timeline"]["events"] if "state_key" in e}


class SyncTest(PartialJoinTestCase):
    async def joined_partially(self) -> tuple[OlmDevice, OlmDevice, OlmDevice, str,
                                              defer.Deferred[None]]:
        bob, carol, room_id = await self.big_room()
        alice = await self.account(self.hs, "alice")
        gate = self.gate_resync()
        await self.ok(self.hs, "POST", f"{CS}/join/{q(room_id)}?via={REMOTE}", {}, alice.token)
        self.assertTrue(self.handler().is_partial(room_id))
        return alice, bob, carol, room_id, gate

    async def has_message(self, user: OlmDevice, room_id: str, text: str) -> bool:
        got = await self.ok(self.hs, "GET", f"{CS}/rooms/{q(room_id)}/messages?dir=b",
                            token=user.token)
        return text in [e["content"].get("body") for e in got["chunk"]]

    async def test_left_out_until_resync_then_sent_with_full_state(self) -> None:
        alice, bob, carol, room_id, gate = await self.joined_partially()
        body = await self.ok(self.hs, "GET", f"{CS}/sync", token=alice.token)
        self.assertNotIn(room_id, body["rooms"]["join"])
        # An event in the room meanwhile: still left out of incremental syncs.
        await self.send_text(self.remote, bob, room_id, "while partial")
        await self.until(lambda: self.has_message(alice, room_id, "while partial"),
                         "bob's message never arrived")
        body = await self.ok(self.hs, "GET", f"{CS}/sync?since={body['next_batch']}",
                             token=alice.token)
        self.assertNotIn(room_id, body["rooms"]["join"])
        # A long-poll waits (the room's events do not wake it) until the resync does.
        since = body["next_batch"]
        pending = defer.ensureDeferred(self.ok(
            self.hs, "GET", f"{CS}/sync?since={since}&timeout=30000", token=alice.token))
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(pending.called)
        gate.callback(None)
        body = await pending
        room = body["rooms"]["join"][room_id]
        state = state_of(room)
        for user in (alice, bob, carol):
            self.assertEqual(state[("m.room.member", user.user_id)]["content"]["membership"],
                             "join")
        self.assertEqual(state[("m.room.name", "")]["content"]["name"], "Big")
        self.assertIn("while partial", self.bodies(body, room_id))
        self.assertEqual(room["summary"]["m.joined_member_count"], 3)
        # Sent once: the next incremental sync has nothing of it.
        again = await self.ok(self.hs, "GET", f"{CS}/sync?since={body['next_batch']}",
                              token=alice.token)
        self.assertNotIn(room_id, again["rooms"]["join"])
        # A client that syncs afresh gets it as any room.
        body = await self.ok(self.hs, "GET", f"{CS}/sync", token=alice.token)
        self.assertEqual(set(u for (t, u) in state_of(body["rooms"]["join"][room_id])
                             if t == "m.room.member"),
                         {alice.user_id, bob.user_id, carol.user_id})

    async def test_lazy_loading_client_gets_the_room_at_once(self) -> None:
        alice, bob, carol, room_id, gate = await self.joined_partially()
        body = await self.ok(self.hs, "GET", f"{CS}/sync{LAZY}", token=alice.token)
        room = body["rooms"]["join"][room_id]
        self.assertEqual(state_of(room)[("m.room.member", alice.user_id)]["content"]
                         ["membership"], "join")
        await self.send_text(self.remote, bob, room_id, "lazy hello")
        body = await self.sync_until(
            self.hs, alice, lambda b: "lazy hello" in self.bodies(b, room_id), query=LAZY)
        # The sender's membership comes with the message (from its auth events).
        self.assertIn(("m.room.member", bob.user_id), state_of(body["rooms"]["join"][room_id]))
        gate.callback(None)

        async def done() -> bool:
            return not self.handler().is_partial(room_id)
        await self.until(done, "the resync never finished")
        # Nothing is resent to a lazy-loading client: the room is not newly joined.
        again = await self.ok(self.hs, "GET", f"{CS}/sync{LAZY}&since={body['next_batch']}",
                              token=alice.token)
        self.assertNotIn(room_id, again["rooms"]["join"])

    async def test_sliding_sync_serves_partial_rooms_to_lazy_configs_only(self) -> None:
        alice, bob, carol, room_id, gate = await self.joined_partially()
        lists = {"all": {"ranges": [[0, 10]], "timeline_limit": 1,
                         "required_state": [["m.room.member", "*"]]},
                 "lazy": {"ranges": [[0, 10]], "timeline_limit": 1,
                          "required_state": [["m.room.member", "$LAZY"],
                                             ["m.room.name", ""]]}}
        out = await self.ok(self.hs, "POST", SS + "?timeout=0", {"lists": lists}, alice.token)
        self.assertEqual(out["lists"]["all"]["count"], 0)
        self.assertEqual(out["lists"]["lazy"]["ops"][0]["room_ids"], [room_id])
        self.assertEqual(out["rooms"][room_id]["name"], "Big")
        # The resync wakes the long-poll; the room then fills the members-wanting list.
        pending = defer.ensureDeferred(self.ok(
            self.hs, "POST", SS + f"?timeout=30000&pos={quote(out['pos'], safe='')}",
            {"lists": lists}, alice.token))
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(pending.called)
        gate.callback(None)
        out = await pending
        self.assertEqual(out["lists"]["all"]["ops"][0]["room_ids"], [room_id])
        members = {e["state_key"] for e in out["rooms"][room_id].get("required_state", [])
                   if e["type"] == "m.room.member"}
        self.assertEqual(members, {alice.user_id, bob.user_id, carol.user_id})

    async def test_room_purge_removes_partial_state_rows(self) -> None:
        _alice, _bob, _carol, room_id, _gate = await self.joined_partially()
        db = self.hs.db
        self.assertEqual(len(await db.query("t", "SELECT room_id FROM partial_state_rooms")), 1)
        await db.execute("t", "INSERT INTO partial_state_resynced (room_id, stream_ordering)"
                         " VALUES (?, ?)", room_id, 1)
        store = AdminRoomStore(db, "test.local")
        while await store.purge_room_batch(room_id, 100):
            pass
        await store.purge_room_rest(room_id)
        for table in ("partial_state_rooms", "partial_state_room_servers",
                      "partial_state_resynced"):
            self.assertEqual(await db.query("t", f"SELECT room_id FROM {table}"), [], table)

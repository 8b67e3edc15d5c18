"""Sliding sync (MSC4186) and invites from other servers, to rooms this server holds no
state of: listed with the stripped state the inviting server sent (the same source as
/sync's ``invite_state``), sorted by the invite's stream position, the list filters
(encryption, room type, DM) read from that stripped state, a long-poll woken by the
invite, and malformed or missing stripped state from the other server tolerated."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from twisted.internet import defer, reactor, task

from homeserver.events.hashing import compute_event_id
from homeserver.events.signing import sign_event
from tests.rest.e2e_helpers import OlmDevice
from tests.rest.federation_helpers import persister_of
from tests.rest.test_federation_membership import FED, MembershipTestCase, q
from tests.rest.test_federation_queries import CS

SS = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
ENCRYPTION = {"type": "m.room.encryption", "state_key": "",
              "content": {"algorithm": "m.megolm.v1.aes-sha2"}}


def pairs(events: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(e["type"], e["state_key"]) for e in events}


class RemoteInviteCase(MembershipTestCase):
    async def ss(self, user: OlmDevice, body: dict[str, Any], pos: str | None = None,
                 timeout: int = 0) -> dict[str, Any]:
        query = f"?timeout={timeout}" + (f"&pos={quote(pos, safe='')}" if pos else "")
        return dict(await self.ok(self.hs, "POST", SS + query, body, user.token))

    async def ids(self, user: OlmDevice, filters: dict[str, Any] | None = None) -> list[str]:
        out = await self.ss(user, {"lists": {"l": {"ranges": [[0, 50]], "timeline_limit": 0,
                                                   "filters": filters or {}}}})
        return list(out["lists"]["l"]["ops"][0]["room_ids"])

    async def invited(self, alice: OlmDevice, room_id: str) -> None:
        await self.sync_until(self.hs, alice, lambda b: room_id in b["rooms"]["invite"])


class RemoteInviteTest(RemoteInviteCase):
    async def test_listed_with_stripped_state_sorted_by_invite(self) -> None:
        bob = await self.account(self.remote, "bob")
        alice = await self.account(self.hs, "alice")
        local = await self.ok(self.hs, "POST", f"{CS}/createRoom", {"name": "Local"},
                              alice.token)
        local_id = local["room_id"]
        await self.send_text(self.hs, alice, local_id, "hello")
        remote_id = await self.remote_room(bob, preset="private_chat", name="Secret",
                                           initial_state=[ENCRYPTION, {
                                               "type": "m.room.avatar", "state_key": "",
                                               "content": {"url": "mxc://remote.test/av"}}])
        await self.ok(self.remote, "POST", f"{CS}/rooms/{q(remote_id)}/invite",
                      {"user_id": alice.user_id}, bob.token)
        await self.invited(alice, remote_id)
        out = await self.ss(alice, {"lists": {"all": {
            "ranges": [[0, 10]], "timeline_limit": 5, "required_state": [["*", "*"]]}}})
        # The newest first: the invite came after the local room's message.
        self.assertEqual(out["lists"]["all"]["ops"][0]["room_ids"], [remote_id, local_id])
        entry = out["rooms"][remote_id]
        self.assertTrue(entry["initial"])
        self.assertEqual(entry["name"], "Secret")
        self.assertEqual(entry["avatar"], "mxc://remote.test/av")
        self.assertNotIn("timeline", entry)
        self.assertNotIn("required_state", entry)
        self.assertNotIn("is_dm", entry)
        self.assertGreater(entry["bump_stamp"], out["rooms"][local_id]["bump_stamp"])
        by_key = {(e["type"], e["state_key"]): e for e in entry["invite_state"]}
        for key in [("m.room.create", ""), ("m.room.name", ""), ("m.room.avatar", ""),
                    ("m.room.join_rules", ""), ("m.room.encryption", ""),
                    ("m.room.member", bob.user_id), ("m.room.member", alice.user_id)]:
            self.assertIn(key, by_key)
        own = by_key[("m.room.member", alice.user_id)]
        self.assertEqual((own["sender"], own["content"]["membership"]), (bob.user_id, "invite"))
        self.assertEqual(by_key[("m.room.join_rules", "")]["content"]["join_rule"], "invite")
        # /sync shows the same stripped state.
        body = await self.ok(self.hs, "GET", f"{CS}/sync", token=alice.token)
        self.assertEqual(pairs(body["rooms"]["invite"][remote_id]["invite_state"]["events"]),
                         pairs(entry["invite_state"]))
        # Filters read the stripped state.
        self.assertEqual(await self.ids(alice, {"is_encrypted": True}), [remote_id])
        self.assertEqual(await self.ids(alice, {"is_encrypted": False}), [local_id])
        self.assertEqual(await self.ids(alice, {"is_invite": True}), [remote_id])
        self.assertEqual(await self.ids(alice, {"room_types": [None]}), [remote_id, local_id])
        self.assertEqual(await self.ids(alice, {"room_types": ["m.space"]}), [])
        # A new message in the local room sorts it first again.
        await self.send_text(self.hs, alice, local_id, "again")
        self.assertEqual(await self.ids(alice), [local_id, remote_id])

    async def test_space_and_direct_invites(self) -> None:
        bob = await self.account(self.remote, "bob")
        alice = await self.account(self.hs, "alice")
        space = await self.remote_room(bob, name="Space", creation_content={"type": "m.space"})
        plain = await self.remote_room(bob, name="Plain")
        for room_id in (space, plain):
            await self.ok(self.remote, "POST", f"{CS}/rooms/{q(room_id)}/invite",
                          {"user_id": alice.user_id}, bob.token)
        dm = await self.remote_room(bob, preset="trusted_private_chat", is_direct=True,
                                    invite=[alice.user_id])
        for room_id in (space, plain, dm):
            await self.invited(alice, room_id)
        self.assertEqual(await self.ids(alice, {"room_types": ["m.space"]}), [space])
        # (remote.test sends createRoom's invites with no stripped state: the DM's type
        # is unknown here, so it is in neither list.)
        self.assertEqual(await self.ids(alice, {"not_room_types": ["m.space"]}), [plain])
        self.assertEqual(await self.ids(alice, {"is_dm": True}), [dm])
        self.assertEqual(set(await self.ids(alice, {"is_dm": False})), {space, plain})
        out = await self.ss(alice, {"room_subscriptions": {dm: {"timeline_limit": 1}}})
        self.assertIs(out["rooms"][dm]["is_dm"], True)

    async def test_long_poll_woken_by_remote_invite_then_rejected(self) -> None:
        bob = await self.account(self.remote, "bob")
        alice = await self.account(self.hs, "alice")
        room_id = await self.remote_room(bob, preset="private_chat", name="Later")
        body = {"lists": {"all": {"ranges": [[0, 10]], "timeline_limit": 1}}}
        start = await self.ss(alice, body)
        self.assertEqual(start["rooms"], {})
        waiting = defer.ensureDeferred(self.ss(alice, body, pos=start["pos"], timeout=30000))
        await task.deferLater(reactor, 0.1, lambda: None)
        self.assertFalse(waiting.called)
        await self.ok(self.remote, "POST", f"{CS}/rooms/{q(room_id)}/invite",
                      {"user_id": alice.user_id}, bob.token)
        result = await waiting
        self.assertEqual(result["rooms"][room_id]["name"], "Later")
        self.assertIn("invite_state", result["rooms"][room_id])
        # Nothing new: the invite is not sent again.
        again = await self.ss(alice, body, pos=result["pos"])
        self.assertNotIn(room_id, again["rooms"])
        # Rejected: the room leaves the list (a leave of one's own, already seen).
        await self.ok(self.hs, "POST", f"{CS}/rooms/{q(room_id)}/leave", {}, alice.token)
        await self.members_until(self.remote, bob, room_id, {alice.user_id: "leave"})
        after = await self.ss(alice, body, pos=again["pos"])
        self.assertEqual(after["rooms"].get(room_id, {}).get("invite_state"), None)
        self.assertEqual(await self.ids(alice), [])


class MalformedStrippedStateTest(RemoteInviteCase):
    async def invite_with(self, alice: OlmDevice, bob: OlmDevice, room_id: str,
                          invite_room_state: Any | None) -> None:
        """A hand-made invite from remote.test carrying ``invite_room_state``."""
        assert self.remote.federation is not None
        snap = await persister_of(self.remote).snapshot(room_id)
        event = {"room_id": room_id, "type": "m.room.member", "state_key": alice.user_id,
                 "sender": bob.user_id, "content": {"membership": "invite"},
                 "origin": "remote.test", "origin_server_ts": self.clock.time_msec(),
                 "depth": 5, "prev_events": snap.extremities,
                 "auth_events": list(snap.state_ids.values())[:3],
                 "hashes": {"sha256": "x"}, "signatures": {}}
        signed = sign_event(event, "remote.test",
                            self.remote.federation.local_keys.signing_key, "10")
        eid = compute_event_id(signed, "10")
        body: dict[str, Any] = {"room_version": "10", "event": signed}
        if invite_room_state is not None:
            body["invite_room_state"] = invite_room_state
        resp = await self.remote_signed("PUT", f"{FED}/v2/invite/{q(room_id)}/{q(eid)}", body)
        self.assertEqual(resp.code, 200, resp)

    async def test_junk_entries_dropped_and_no_state_is_unknown(self) -> None:
        bob = await self.account(self.remote, "bob")
        alice = await self.account(self.hs, "alice")
        junk_room = await self.remote_room(bob, preset="private_chat")
        await self.invite_with(alice, bob, junk_room, [
            {"type": "m.room.name", "state_key": "", "content": {"name": "Fine"},
             "sender": bob.user_id},
            {"type": "m.room.topic"},
            {"type": "m.room.avatar", "state_key": "", "content": "not a dict",
             "sender": bob.user_id},
            {"type": 5, "state_key": "", "content": {}, "sender": bob.user_id},
            {"type": "m.room.encryption", "state_key": None, "content": {},
             "sender": bob.user_id}])
        bare_room = await self.remote_room(bob, preset="private_chat")
        await self.invite_with(alice, bob, bare_room, None)
        out = await self.ss(alice, {"lists": {"all": {"ranges": [[0, 10]],
                                                      "timeline_limit": 1}}})
        junk = out["rooms"][junk_room]
        self.assertEqual(junk["name"], "Fine")
        self.assertNotIn("avatar", junk)
        self.assertEqual(pairs(junk["invite_state"]),
                         {("m.room.name", ""), ("m.room.member", alice.user_id)})
        bare = out["rooms"][bare_room]
        self.assertEqual(pairs(bare["invite_state"]), {("m.room.member", alice.user_id)})
        self.assertEqual(set(await self.ids(alice)), {junk_room, bare_room})
        # Nothing known of the bare one's encryption or type: in no filtered list.
        self.assertEqual(await self.ids(alice, {"is_encrypted": False}), [junk_room])
        self.assertEqual(await self.ids(alice, {"is_encrypted": True}), [])
        self.assertEqual(await self.ids(alice, {"room_types": [None]}), [])
        self.assertEqual(set(await self.ids(alice, {"is_invite": True})),
                         {junk_room, bare_room})
        body = await self.ok(self.hs, "GET", f"{CS}/sync", token=alice.token)
        self.assertEqual(pairs(body["rooms"]["invite"][junk_room]["invite_state"]["events"]),
                         pairs(junk["invite_state"]))

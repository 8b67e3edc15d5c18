"""Spam checks on other servers' events and invites (issue 16): a plugin's
``check_event_for_spam`` refusing a remote event soft-fails it (kept redacted as an
outlier: not in /sync or /messages of local users, the room state unchanged, no error
to the sender), through the ingest and over ``PUT /send``; ``user_may_invite`` refuses
a remote inviter with 403; each refusal is a ``policy_rejection`` security event
without content."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from federation.x_matrix import sign_request
from tests.rest.test_event_dag import ALICE, DagTestCase

PLUGIN = "tests.rest.fed_spam_plugin"


class FedSpamTestCase(DagTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {**super().config_overrides(), "plugins": [PLUGIN]}

    async def rejections(self) -> list[Any]:
        return list(await self.hs.stores.security_events.list_events(
            event_type="policy_rejection"))

    async def remote_put(self, path: str, body: Any) -> Any:
        header = sign_request(self.remote.signing_key, self.remote.name, "test.local",
                              "PUT", path, body)
        return await self.request("PUT", path, body, headers={"Authorization": header})


class RemoteSpamTest(FedSpamTestCase):
    async def test_spam_message_soft_failed(self) -> None:
        join = await self.bob_joins()
        since = (await self.sync(self.alice))["next_batch"]
        spam = await self.remote_event("m.room.message", {"msgtype": "m.text",
                                                          "body": "buy spam now"})
        self.assertIsNone(await self.receive(spam))  # soft failure: no error to the sender
        self.assertNotIn(spam.event_id, await self.message_ids(self.alice))
        synced = await self.sync(self.alice, since)
        timeline = synced.get("rooms", {}).get("join", {}).get(self.room, {}) \
            .get("timeline", {}).get("events", [])
        self.assertNotIn(spam.event_id, [e["event_id"] for e in timeline])
        resp = await self.get_event(self.alice, self.room, spam.event_id)
        self.assertEqual(resp.code, 404, resp)
        outlier, reason, _soft, position = await self.row(spam.event_id)
        self.assertEqual((outlier, reason), (True, None))
        self.assertLess(position, 0)
        self.assertEqual(await self.extremities(), {join.event_id})
        # Only the redacted form is kept: no spam content in the database.
        stored = await self.hs.stores.events.get_event(spam.event_id)
        assert stored is not None
        self.assertEqual(dict(stored.content), {})
        # Audited with identifiers only.
        (entry,) = await self.rejections()
        self.assertEqual(entry.user_id, self.bob)
        self.assertEqual(entry.reason, "check_event_for_spam")
        self.assertEqual(entry.target, self.room)
        self.assertEqual(entry.details["origin"], self.remote.name)
        self.assertEqual(entry.details["event_type"], "m.room.message")
        self.assertNotIn("spam now", json.dumps(entry.details))
        # A good message is still accepted and shown.
        good = await self.remote_event("m.room.message", {"msgtype": "m.text", "body": "hi"})
        self.assertIsNone(await self.receive(good))
        self.assertEqual((await self.message_ids(self.alice))[0], good.event_id)

    async def test_spam_state_leaves_room_state_unchanged(self) -> None:
        await self.bob_joins()
        await self.set_power({self.bob: 100})
        topic = await self.remote_event("m.room.topic", {"topic": "calm"}, "")
        self.assertIsNone(await self.receive(topic))
        self.assertEqual((await self.state_content("m.room.topic"))["topic"], "calm")
        spam = await self.remote_event("m.room.topic", {"topic": "spam spam"}, "")
        self.assertIsNone(await self.receive(spam))
        self.assertEqual((await self.state_content("m.room.topic"))["topic"], "calm")
        self.assertNotIn(spam.event_id, await self.message_ids(self.alice))
        self.assertEqual(await self.extremities(), {topic.event_id})

    async def test_spam_over_send_transaction(self) -> None:
        await self.bob_joins()
        spam = await self.remote_event("m.room.message", {"msgtype": "m.text",
                                                          "body": "more spam"})
        path = "/_matrix/federation/v1/send/spam1"
        body = {"origin": self.remote.name, "origin_server_ts": self.clock.time_msec(),
                "pdus": [self.remote.pdu(spam)]}
        resp = await self.remote_put(path, body)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["pdus"], {spam.event_id: {}})
        self.assertNotIn(spam.event_id, await self.message_ids(self.alice))
        self.assertEqual(len(await self.rejections()), 1)

    async def test_local_senders_not_checked_again(self) -> None:
        # An event of our own user coming back (e.g. through gap filling) was checked
        # when it was made: the gate skips it.
        assert self.ingest is not None and self.ingest.spam is not None
        msg = await self.remote_event("m.room.message", {"body": "spam"}, sender=ALICE)
        state = (await self.persister.snapshot(self.room)).state_ids
        self.assertIsNone(await self.ingest.spam.policy_refusing("x.test", msg, state))
        self.assertEqual(await self.rejections(), [])


class RemoteInviteTest(FedSpamTestCase):
    async def invite(self, inviter: str) -> Any:
        room_id = f"!elsewhere{len(inviter)}:{self.remote.name}"
        event = self.remote.event(room_id, "10", inviter, "m.room.member",
                                  {"membership": "invite"}, [], [], state_key=ALICE,
                                  ts=self.clock.time_msec())
        path = f"/_matrix/federation/v2/invite/{quote(room_id)}/{quote(event.event_id)}"
        body = {"room_version": "10", "event": self.remote.pdu(event),
                "invite_room_state": []}
        return room_id, await self.remote_put(path, body)

    async def test_user_may_invite_refuses_remote_inviter(self) -> None:
        spammer = self.remote.user("spammer")
        room_id, resp = await self.invite(spammer)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        synced = await self.sync(self.alice)
        self.assertNotIn(room_id, synced.get("rooms", {}).get("invite", {}))
        (entry,) = await self.rejections()
        self.assertEqual((entry.user_id, entry.reason, entry.target),
                         (spammer, "user_may_invite", room_id))
        self.assertEqual(entry.details["origin"], self.remote.name)
        self.assertEqual(entry.details["invitee"], ALICE)

    async def test_other_remote_inviter_allowed(self) -> None:
        room_id, resp = await self.invite(self.remote.user("carol"))
        self.assertEqual(resp.code, 200, resp)
        synced = await self.sync(self.alice)
        self.assertIn(room_id, synced.get("rooms", {}).get("invite", {}))
        self.assertEqual(await self.rejections(), [])


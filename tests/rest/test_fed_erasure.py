"""Erased senders over federation (issue 16): once a local user is erased (GDPR,
deactivated with ``erase``), every history endpoint serving another server (/event,
/state, /event_auth, /get_missing_events, /backfill) serves their events redacted (the
room version's redaction algorithm), as Synapse does, even before the purge job
rewrites them here; the graph links, ids and signatures stay valid, and the other
users' events are served whole."""

from __future__ import annotations

from typing import Any

from homeserver.events.hashing import compute_event_id
from homeserver.events.room_versions import get_room_version
from tests.harness import TEST_PASSWORD
from tests.rest.room_helpers import CS
from tests.rest.test_federation_history import FED, HistoryTestCase, fq

DEACTIVATE = f"{CS}/account/deactivate"
SECRET = "carol-secret-4411"


class ErasedSenderTest(HistoryTestCase):
    async def erase(self, token: str, name: str) -> None:
        first = await self.request("POST", DEACTIVATE, {"erase": True}, token=token)
        self.assertEqual(first.code, 401, first)
        resp = await self.request("POST", DEACTIVATE, {"erase": True, "auth": {
            "type": "m.login.password", "session": first.json["session"],
            "identifier": {"type": "m.id.user", "user": name}, "password": TEST_PASSWORD}},
            token=token)
        self.assertEqual(resp.code, 200, resp)

    def ids(self, pdus: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        version = get_room_version("10")
        assert version is not None
        return {compute_event_id(p, version): p for p in pdus}

    async def test_erased_sender_served_redacted_everywhere(self) -> None:
        alice, room = await self.local_room()
        carol = await self.user("carol")
        resp = await self.request("PUT", f"{CS}/profile/@carol:test.local/displayname",
                                  {"displayname": "Carol Secretname"}, token=carol)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual((await self.join(carol, room)).code, 200)
        carol_join = (await self.hs.stores.room_members.get_membership(
            "@carol:test.local", room))
        assert carol_join is not None
        await self.bob_joins(room)
        secret_id = await self.send_ok(carol, room, SECRET)
        plain_id = await self.send_ok(alice, room, "alice speaks")

        # Before the erasure: served whole.
        resp = await self.remote_signed("GET", f"{FED}/event/{fq(secret_id)}")
        self.assertEqual(resp.json["pdus"][0]["content"]["body"], SECRET)

        await self.erase(carol, "carol")
        stored = await self.event_of(secret_id)
        self.assertEqual(stored.content["body"], SECRET)  # the purge has not run yet

        # /event: pruned (content gone), its id and signatures still valid.
        resp = await self.remote_signed("GET", f"{FED}/event/{fq(secret_id)}")
        self.assertEqual(resp.code, 200, resp)
        pdu = resp.json["pdus"][0]
        self.assertEqual(pdu["content"], {})
        self.assertEqual(list(self.ids([pdu])), [secret_id])
        self.assertIn("test.local", pdu["signatures"])
        self.assertEqual(pdu["prev_events"], stored.pdu["prev_events"])
        resp = await self.remote_signed("GET", f"{FED}/event/{fq(plain_id)}")
        self.assertEqual(resp.json["pdus"][0]["content"]["body"], "alice speaks")

        # /backfill and /get_missing_events.
        resp = await self.remote_signed("GET", f"{FED}/backfill/{fq(room)}"
                                        f"?v={fq(plain_id)}&limit=10")
        self.assertEqual(resp.code, 200, resp)
        served = self.ids(resp.json["pdus"])
        self.assertEqual(served[secret_id]["content"], {})
        self.assertEqual(served[plain_id]["content"]["body"], "alice speaks")
        self.assertNotIn(SECRET, str(resp.json))
        later = await self.send_ok(alice, room, "after")
        body = {"earliest_events": [], "latest_events": [later], "limit": 10}
        resp = await self.remote_signed("POST", f"{FED}/get_missing_events/{fq(room)}", body)
        self.assertEqual(resp.code, 200, resp)
        served = self.ids(resp.json["events"])
        self.assertEqual(served[secret_id]["content"], {})
        self.assertEqual(served[plain_id]["content"]["body"], "alice speaks")

        # /state and /event_auth: carol's join keeps its membership, loses her profile.
        resp = await self.remote_signed("GET", f"{FED}/state/{fq(room)}?event_id={fq(later)}")
        self.assertEqual(resp.code, 200, resp)
        state = self.ids(resp.json["pdus"])
        carol_member = [p for p in state.values() if p.get("state_key") == "@carol:test.local"]
        self.assertEqual(len(carol_member), 1)
        self.assertNotIn("displayname", carol_member[0]["content"])
        self.assertIn("membership", carol_member[0]["content"])
        alice_member = [p for p in state.values() if p.get("state_key") == "@alice:test.local"]
        self.assertIn("displayname", alice_member[0]["content"])
        resp = await self.remote_signed("GET", f"{FED}/event_auth/{fq(room)}/{fq(secret_id)}")
        self.assertEqual(resp.code, 200, resp)
        chain = self.ids(resp.json["auth_chain"])
        self.assertEqual(chain[carol_join.event_id]["content"], {"membership": "join"})
        self.assertNotIn("Carol Secretname", str(resp.json))

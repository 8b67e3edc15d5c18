"""Reports admin API: listing (filters, pagination, kinds), details without content,
resolve and delete, roles, audit entries; content only with the opt-in and only for an
unencrypted room."""

from __future__ import annotations

from typing import Any

from tests.rest.room_helpers import CS, RoomTestCase, q

SA = "/_synapse/admin/v1"
PA = "/_parley/admin/v1"
SECRET = "the secret message text"


class ReportsBase(RoomTestCase):
    async def _setup(self) -> None:
        await self.staff()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")

    async def _reported_event(self, **room: Any) -> tuple[str, str]:
        """Bob says something in Alice's room; Alice reports it."""
        room_id = await self.create_room(self.alice, preset="public_chat", name="Town Square",
                                         **room)
        self.assertEqual((await self.join(self.bob, room_id)).code, 200)
        if room.get("initial_state"):
            sent = await self.send(self.bob, room_id, event_type="m.room.encrypted", content={
                "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AAAA",
                "sender_key": "x", "session_id": "y", "device_id": "D"})
            self.assertEqual(sent.code, 200, sent)
            event_id = sent.json["event_id"]
        else:
            event_id = await self.send_ok(self.bob, room_id, SECRET)
        resp = await self.request("POST", f"{CS}/rooms/{q(room_id)}/report/{q(event_id)}",
                                  {"reason": "spam", "score": -100}, token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        return room_id, event_id

    async def _actions(self) -> list[dict[str, Any]]:
        events = await self.hs.stores.security_events.list_events(event_type="admin_action")
        return [e.details for e in events if e.outcome == "success"]


class AdminReportsTest(ReportsBase):
    async def test_list_filters_and_kinds(self) -> None:
        await self._setup()
        room_id, event_id = await self._reported_event()
        self.advance(1)
        resp = await self.request("POST", f"{CS}/rooms/{q(room_id)}/report",
                                  {"reason": "bad room"}, token=self.bob)
        self.assertEqual(resp.code, 200, resp)
        self.advance(1)
        resp = await self.request("POST", f"{CS}/users/{q('@bob:test.local')}/report",
                                  {"reason": "bad user"}, token=self.alice)
        self.assertEqual(resp.code, 200, resp)

        resp = await self.request("GET", f"{SA}/event_reports", token=self.auditor)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["total"], 3)
        self.assertNotIn(SECRET, resp.raw.decode())
        reports = resp.json["event_reports"]
        self.assertEqual([r["kind"] for r in reports], ["user", "room", "event"])  # newest first
        ev = reports[2]
        self.assertEqual(ev["event_id"], event_id)
        self.assertEqual(ev["room_id"], room_id)
        self.assertEqual(ev["sender"], "@bob:test.local")
        self.assertEqual(ev["event_type"], "m.room.message")
        self.assertEqual(ev["user_id"], "@alice:test.local")
        self.assertEqual(ev["reason"], "spam")
        self.assertEqual(ev["score"], -100)
        self.assertEqual(ev["name"], "Town Square")
        self.assertFalse(ev["resolved"])
        self.assertNotIn("event_json", ev)
        self.assertEqual(reports[0]["target_user_id"], "@bob:test.local")

        async def ids(query: str) -> list[str]:
            r = await self.request("GET", f"{SA}/event_reports?{query}", token=self.mod)
            self.assertEqual(r.code, 200, r)
            return [x["kind"] for x in r.json["event_reports"]]

        self.assertEqual(await ids("dir=f"), ["event", "room", "user"])
        self.assertEqual(await ids(f"room_id={q(room_id)}"), ["room", "event"])
        self.assertEqual(await ids("user_id=ALI"), ["user", "event"])  # reporter substring
        self.assertEqual(await ids("kind=room"), ["room"])
        self.assertEqual(await ids(f"event_sender_user_id={q('@bob:test.local')}"),
                         ["user", "event"])
        page = await self.request("GET", f"{SA}/event_reports?limit=2", token=self.mod)
        self.assertEqual(page.json["next_token"], 2)
        rest = await self.request("GET", f"{SA}/event_reports?limit=2&from=2", token=self.mod)
        self.assertEqual([x["kind"] for x in rest.json["event_reports"]], ["event"])
        self.assertNotIn("next_token", rest.json)
        for bad in ("dir=x", "limit=0", "limit=100000", "from=-1", "kind=other",
                    "resolved=maybe", "user_id=" + "x" * 300):
            r = await self.request("GET", f"{SA}/event_reports?{bad}", token=self.mod)
            self.assertMatrixError(r, 400, "M_INVALID_PARAM")
        r = await self.request("GET", f"{SA}/event_reports", token=self.support)
        self.assertMatrixError(r, 403, "M_FORBIDDEN")
        r = await self.request("GET", f"{SA}/event_reports")
        self.assertMatrixError(r, 401, "M_MISSING_TOKEN")

    async def test_details_resolve_delete(self) -> None:
        await self._setup()
        room_id, event_id = await self._reported_event()
        listing = await self.request("GET", f"{SA}/event_reports", token=self.admin)
        report_id = listing.json["event_reports"][0]["id"]
        resp = await self.request("GET", f"{SA}/event_reports/{report_id}", token=self.auditor)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["event_id"], event_id)
        self.assertEqual(resp.json["sender"], "@bob:test.local")
        self.assertNotIn("event_json", resp.json)
        self.assertNotIn(SECRET, resp.raw.decode())
        for bad, code, errcode in (("abc", 400, "M_INVALID_PARAM"),
                                   ("99999999999999999999", 400, "M_INVALID_PARAM"),
                                   ("424242", 404, "M_NOT_FOUND")):
            r = await self.request("GET", f"{SA}/event_reports/{bad}", token=self.admin)
            self.assertMatrixError(r, code, errcode)

        resolve = f"{PA}/event_reports/{report_id}/resolve"
        r = await self.request("POST", resolve, {"resolution": "warned"}, token=self.auditor)
        self.assertMatrixError(r, 403, "M_FORBIDDEN")
        r = await self.request("POST", resolve, {"resolution": "x" * 1001}, token=self.mod)
        self.assertEqual(r.code, 400, r)
        r = await self.request("POST", resolve, {"resolution": "warned the sender"},
                               token=self.mod)
        self.assertEqual(r.code, 200, r)
        self.assertTrue(r.json["resolved"])
        self.assertEqual(r.json["resolved_by"], "@mo:test.local")
        self.assertEqual(r.json["resolution"], "warned the sender")
        self.assertEqual(r.json["resolved_ts"], self.clock.time_msec())
        r = await self.request("POST", f"{PA}/event_reports/424242/resolve", {},
                               token=self.mod)
        self.assertMatrixError(r, 404, "M_NOT_FOUND")
        await self.request("POST", f"{CS}/users/{q('@bob:test.local')}/report",
                           {"reason": "again"}, token=self.alice)
        done = await self.request("GET", f"{SA}/event_reports?resolved=true", token=self.mod)
        self.assertEqual([x["id"] for x in done.json["event_reports"]], [report_id])
        todo = await self.request("GET", f"{SA}/event_reports?resolved=false", token=self.mod)
        self.assertEqual([x["kind"] for x in todo.json["event_reports"]], ["user"])

        r = await self.request("DELETE", f"{SA}/event_reports/{report_id}", token=self.auditor)
        self.assertMatrixError(r, 403, "M_FORBIDDEN")
        r = await self.request("DELETE", f"{SA}/event_reports/{report_id}", token=self.mod)
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", f"{SA}/event_reports/{report_id}", token=self.mod)
        self.assertMatrixError(r, 404, "M_NOT_FOUND")
        r = await self.request("DELETE", f"{SA}/event_reports/{report_id}", token=self.mod)
        self.assertMatrixError(r, 404, "M_NOT_FOUND")
        actions = await self._actions()
        self.assertIn({"action": "resolve_report", "role": "moderator",
                       "report_id": report_id}, actions)
        self.assertIn({"action": "delete_report", "role": "moderator",
                       "report_id": report_id}, actions)
        # The resolution note (admin free text) is not copied into the audit trail.
        self.assertNotIn("warned the sender", repr(actions))
        self.assertFalse([a for a in actions if a["action"] == "read_report_content"])


class ReportContentOptInTest(ReportsBase):
    def config_overrides(self) -> dict[str, Any]:
        return {"admin": {"reports_show_content": True}}

    async def test_content_only_for_unencrypted_rooms(self) -> None:
        await self._setup()
        _, event_id = await self._reported_event()
        _, enc_event = await self._reported_event(initial_state=[{
            "type": "m.room.encryption", "state_key": "",
            "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
        listing = await self.request("GET", f"{SA}/event_reports", token=self.mod)
        by_event = {r["event_id"]: r["id"] for r in listing.json["event_reports"]}
        # The list never carries content, even with the opt-in.
        self.assertNotIn(SECRET, listing.raw.decode())
        resp = await self.request("GET", f"{SA}/event_reports/{by_event[event_id]}",
                                  token=self.mod)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["event_json"]["content"]["body"], SECRET)
        resp = await self.request("GET", f"{SA}/event_reports/{by_event[enc_event]}",
                                  token=self.mod)
        self.assertEqual(resp.code, 200, resp)
        self.assertNotIn("event_json", resp.json)
        self.assertEqual(resp.json["event_type"], "m.room.encrypted")
        reads = [a for a in await self._actions() if a["action"] == "read_report_content"]
        self.assertEqual(reads, [{"action": "read_report_content", "role": "moderator",
                                  "report_id": by_event[event_id], "event_id": event_id}])

    async def test_redacted_event_content_not_shown(self) -> None:
        await self._setup()
        room_id, event_id = await self._reported_event()
        resp = await self.request(
            "PUT", f"{CS}/rooms/{q(room_id)}/redact/{q(event_id)}/r1", {}, token=self.bob)
        self.assertEqual(resp.code, 200, resp)
        listing = await self.request("GET", f"{SA}/event_reports", token=self.mod)
        report_id = listing.json["event_reports"][0]["id"]
        resp = await self.request("GET", f"{SA}/event_reports/{report_id}", token=self.mod)
        self.assertNotIn("event_json", resp.json)
        self.assertNotIn(SECRET, resp.raw.decode())

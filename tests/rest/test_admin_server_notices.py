"""``send_server_notice`` (POST and the idempotent PUT): the notice reaches the user's
notices room; roles, validation, errors; the audit entry names the user, not the text."""

from __future__ import annotations

from typing import Any

from tests.rest.room_helpers import RoomTestCase

SA = "/_synapse/admin/v1"
PATH = f"{SA}/send_server_notice"
TEXT = "Your account will be reviewed"


def notice(user_id: str = "@alice:test.local", **content: Any) -> dict[str, Any]:
    return {"user_id": user_id, "content": {"msgtype": "m.text", "body": TEXT, **content}}


class AdminServerNoticesTest(RoomTestCase):
    async def _setup(self) -> None:
        await self.staff(support=False)
        self.alice = await self.user("alice")

    def notices_in(self, sync: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for room in sync["rooms"].get("join", {}).values():
            out += [e for e in room["timeline"]["events"]
                    if e["type"] == "m.room.message"
                    and e["content"].get("msgtype") == "m.server_notice"]
        return out

    async def test_send_and_idempotent_put(self) -> None:
        await self._setup()
        resp = await self.request("POST", PATH, notice(formatted_body="<b>Your</b> account",
                                                       format="org.matrix.custom.html"),
                                  token=self.mod)
        self.assertEqual(resp.code, 200, resp)
        first = resp.json["event_id"]
        sync = await self.sync(self.alice)
        got = self.notices_in(sync)
        self.assertEqual([e["event_id"] for e in got], [first])
        self.assertEqual(got[0]["content"]["body"], TEXT)
        self.assertEqual(got[0]["content"]["formatted_body"], "<b>Your</b> account")
        self.assertEqual(got[0]["sender"], "@server:test.local")

        put1 = await self.request("PUT", f"{PATH}/txn1", notice(), token=self.admin)
        put2 = await self.request("PUT", f"{PATH}/txn1", notice(), token=self.admin)
        self.assertEqual(put1.code, 200, put1)
        self.assertEqual(put1.json, put2.json)
        put3 = await self.request("PUT", f"{PATH}/txn2", notice(), token=self.admin)
        self.assertNotEqual(put3.json["event_id"], put1.json["event_id"])
        later = await self.sync(self.alice, sync["next_batch"])
        self.assertEqual(len(self.notices_in(later)), 2)

        events = await self.hs.stores.security_events.list_events(event_type="admin_action")
        sent = [e for e in events if e.outcome == "success"
                and e.details["action"] == "send_server_notice"]
        self.assertEqual(len(sent), 3)
        self.assertEqual({e.target for e in sent}, {"@alice:test.local"})
        self.assertEqual(sorted(e.user_id for e in sent),
                         ["@ada:test.local", "@ada:test.local", "@mo:test.local"])
        self.assertNotIn(TEXT, repr([e.details for e in events]))

    async def test_refusals(self) -> None:
        await self._setup()
        resp = await self.request("POST", PATH, notice(), token=self.auditor)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.request("POST", PATH, notice(), token=self.alice)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.request("POST", PATH, notice())
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        resp = await self.request("POST", PATH, notice("@x:elsewhere.example"), token=self.mod)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.request("POST", PATH, notice("nonsense"), token=self.mod)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.request("POST", PATH, notice("@nobody:test.local"), token=self.mod)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        for body in ({"user_id": "@alice:test.local"},
                     {"user_id": "@alice:test.local", "content": {"msgtype": "m.text"}},
                     {"user_id": "@alice:test.local", "content": {"body": "x" * 20000}},
                     {**notice(), "type": "m.room.topic"}):
            resp = await self.request("POST", PATH, body, token=self.mod)
            self.assertEqual(resp.code, 400, resp)
        resp = await self.request("PUT", f"{PATH}/{'t' * 300}", notice(), token=self.mod)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")


class NoticesDisabledTest(RoomTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"server_notices": {"enabled": False}}

    async def test_disabled(self) -> None:
        admin = await self.user_with_role("ada", "admin")
        await self.user("alice")
        resp = await self.request("POST", PATH, notice(), token=admin)
        self.assertMatrixError(resp, 400, "M_UNKNOWN")

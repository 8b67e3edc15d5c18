"""Push actions in a room whose members mostly run the server-default rules (issue 18):
the bulk path (homeserver/push/bulk.py) records exactly what evaluating every member
one by one records, through display name changes, leaves, power level changes,
invites, custom and disabled rules and a rule changed mid-way; and it never reads the
rules of a member who has none of their own."""

from __future__ import annotations

from typing import Any

from homeserver.handlers.push_actions import ROOM_REFRESH_MS, PushActionsHandler, RoomPushInfo
from tests.rest.room_helpers import CS, RoomTestCase, q

SERVER = "test.local"
NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "gina", "henry", "ivan")
RULES = f"{CS}/pushrules/global"


def uid(name: str) -> str:
    return f"@{name}:{SERVER}"


class PushBulkRoomTest(RoomTestCase):
    def _handler(self) -> PushActionsHandler:
        subs = dict(self.hs.fanout._batch_subscribers)  # noqa: SLF001
        handler = subs["push_actions"].__self__  # type: ignore[attr-defined]
        assert isinstance(handler, PushActionsHandler)
        return handler

    async def _ok(self, method: str, path: str, body: Any, token: str) -> Any:
        resp = await self.request(method, path, body, token=token)
        self.assertEqual(resp.code, 200, resp)
        return resp.json

    async def _users(self) -> dict[str, str]:
        tokens = {n: await self.user(n) for n in NAMES}
        # carol: an override muting "secret" messages; dave: the message rule disabled;
        # erin: a keyword. The others run the defaults.
        await self._ok("PUT", f"{RULES}/override/hush", {
            "actions": ["dont_notify"],
            "conditions": [{"kind": "event_match", "key": "content.body",
                            "pattern": "*secret*"}]}, tokens["carol"])
        await self._ok("PUT", f"{RULES}/underride/.m.rule.message/enabled", {"enabled": False},
                       tokens["dave"])
        await self._ok("PUT", f"{RULES}/content/lunch", {
            "actions": ["notify", {"set_tweak": "highlight"}], "pattern": "lunch"},
            tokens["erin"])
        return tokens

    async def _scenario(self, t: dict[str, str]) -> tuple[str, dict[str, str]]:
        """Run the story in a new room; returns (room, event id -> label)."""
        labels: dict[str, str] = {}

        async def say(who: str, label: str, content: dict[str, Any] | None = None) -> None:
            resp = await self.send(t[who], room, label, content=content)
            self.assertEqual(resp.code, 200, resp)
            labels[resp.json["event_id"]] = label

        room = await self.create_room(t["alice"], preset="public_chat")
        for name in NAMES:
            if name not in ("alice", "henry"):
                self.assertEqual((await self.join(t[name], room)).code, 200)
        await say("alice", "hello")
        await say("alice", "secret plan")
        await say("alice", "lunch time")
        await say("alice", "hey bob")
        await say("alice", "mention dave", {"msgtype": "m.text", "body": "mention dave x",
                                            "m.mentions": {"user_ids": [uid("dave")]}})
        resp = await self.put_state(t["frank"], room, "m.room.member",
                                    {"membership": "join", "displayname": "Frankie Fish"},
                                    uid("frank"))
        self.assertEqual(resp.code, 200, resp)
        await say("alice", "ask Frankie Fish")
        self.assertEqual((await self.member(t["gina"], room, "leave")).code, 200)
        await say("alice", "after gina left")
        await say("bob", "@room first")
        pl = await self._ok("GET", f"{CS}/rooms/{q(room)}/state/m.room.power_levels/", None,
                            t["alice"])
        pl["notifications"] = {"room": 0}
        self.assertEqual((await self.put_state(t["alice"], room, "m.room.power_levels",
                                               pl)).code, 200)
        await say("bob", "@room second")
        resp = await self.member(t["alice"], room, "invite", user_id=uid("henry"))
        self.assertEqual(resp.code, 200, resp)
        await self._ok("PUT", f"{RULES}/override/all", {"actions": [], "conditions": []},
                       t["ivan"])
        await say("alice", "muted ivan")
        resp = await self.request("DELETE", f"{RULES}/override/all", token=t["ivan"])
        self.assertEqual(resp.code, 200, resp)
        await say("alice", "unmuted ivan")
        await say("alice", "a notice", {"msgtype": "m.notice", "body": "a notice"})
        resp = await self.put_state(t["alice"], room, "org.example.custom", {"n": 1}, "k")
        self.assertEqual(resp.code, 200, resp)
        await say("erin", "lunch from erin")
        return room, labels

    async def _rows(self, room: str, labels: dict[str, str]) -> dict[tuple[str, str], Any]:
        rows = await self.hs.db.query(
            "test_rows", "SELECT user_id, event_id, highlight, actions FROM event_push_actions"
            " WHERE room_id = ?", room)
        out: dict[tuple[str, str], Any] = {}
        for user_id, event_id, highlight, actions in rows:
            out[(user_id, labels.get(event_id, "invite"))] = (bool(highlight), actions)
        return out

    async def test_bulk_equals_one_by_one(self) -> None:
        tokens = await self._users()
        handler = self._handler()
        read: list[str] = []
        real_get_ruleset = handler._push_rules.get_ruleset  # noqa: SLF001

        async def counting_get_ruleset(user_id: str) -> Any:
            read.append(user_id)
            return await real_get_ruleset(user_id)

        handler._push_rules.get_ruleset = counting_get_ruleset  # type: ignore[method-assign]  # noqa: SLF001
        room, labels = await self._scenario(tokens)
        bulk = await self._rows(room, labels)
        # Only members with rules of their own (and the invitee, for their invite).
        self.assertEqual(set(read), {uid("carol"), uid("dave"), uid("erin"), uid("ivan"),
                                     uid("henry")})

        async def everyone(info: RoomPushInfo) -> set[str]:
            return set(info.local)

        handler._members_with_own_rules = everyone  # type: ignore[method-assign]  # noqa: SLF001
        room2, labels2 = await self._scenario(tokens)
        one_by_one = await self._rows(room2, labels2)
        self.assertEqual(bulk, one_by_one)

        # And the story did exercise each path.
        def has(name: str, label: str) -> bool:
            return (uid(name), label) in bulk

        def lit(name: str, label: str) -> bool:
            return bulk[(uid(name), label)][0]

        self.assertTrue(has("bob", "hello") and has("carol", "hello"))
        self.assertFalse(has("dave", "hello"))  # .m.rule.message disabled
        self.assertFalse(has("alice", "hello"))  # own message
        self.assertFalse(has("carol", "secret plan"))
        self.assertTrue(has("bob", "secret plan"))
        self.assertTrue(lit("erin", "lunch time") and not lit("bob", "lunch time"))
        self.assertTrue(lit("bob", "hey bob") and not lit("carol", "hey bob"))
        self.assertTrue(lit("dave", "mention dave"))
        self.assertTrue(lit("frank", "ask Frankie Fish"))
        self.assertFalse(has("gina", "after gina left"))
        self.assertTrue(has("gina", "hello"))
        self.assertFalse(lit("alice", "@room first"))
        self.assertTrue(lit("alice", "@room second") and lit("frank", "@room second"))
        self.assertTrue(has("henry", "invite"))
        self.assertFalse(has("bob", "invite"))
        self.assertFalse(has("ivan", "muted ivan"))
        self.assertTrue(has("ivan", "unmuted ivan") and has("ivan", "hello"))
        self.assertFalse(has("bob", "a notice"))
        self.assertFalse(has("erin", "lunch from erin"))  # own message
        self.assertTrue(has("bob", "lunch from erin"))
        self.assertFalse(any(label == "invite" and user != uid("henry")
                             for user, label in bulk))

    async def test_room_entry_is_read_afresh_after_a_while(self) -> None:
        """A change made without an event (a partial-state resync) is seen within
        ROOM_REFRESH_MS; before that the entry is kept (not re-read per event)."""
        alice, bob = await self.user("alice"), await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        self.assertEqual((await self.join(bob, room)).code, 200)
        handler = self._handler()
        await self.send_ok(alice, room, "warm")
        info = handler._rooms.get(room)  # noqa: SLF001
        assert info is not None
        # Pretend the entry missed Bob (as a state swap with no event would leave it).
        info.joined.pop(uid("bob"))
        info.local.pop(uid("bob"))

        async def bob_rows() -> int:
            rows = await self.hs.db.query(
                "test_rows", "SELECT COUNT(*) FROM event_push_actions WHERE user_id = ?"
                " AND room_id = ?", uid("bob"), room)
            return int(rows[0][0])

        before = await bob_rows()
        await self.send_ok(alice, room, "kept entry")
        self.assertEqual(await bob_rows(), before)
        self.reactor_time.advance(ROOM_REFRESH_MS / 1000 + 1)
        await self.send_ok(alice, room, "entry read again")
        self.assertEqual(await bob_rows(), before + 1)

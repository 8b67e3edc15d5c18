"""Counts, orderings and tokens derived only from what the requester may see (issue 11,
findings 3 and 9): server-side search ``count`` / ``next_batch``, thread summaries
(``count``, ``latest_event``, ``current_user_participated``) and the /threads listing."""

from __future__ import annotations

from typing import Any

from homeserver.events.model import Event
from homeserver.handlers.visibility import VisibilityHandler
from tests.rest.room_helpers import CS, RoomTestCase, q

V1 = "/_matrix/client/v1"
BOB = "@bob:test.local"


def criteria(term: str, **extra: Any) -> dict[str, Any]:
    return {"search_categories": {"room_events": {"search_term": term, **extra}}}


def thread_reply(root: str, body: str) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": body,
            "m.relates_to": {"rel_type": "m.thread", "event_id": root}}


class HiddenHistoryCase(RoomTestCase):
    """Alice's room with ``joined`` history; Bob joins late, leaves, and comes back."""

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")
        self.room = await self.create_room(self.alice, preset="public_chat")
        resp = await self.put_state(self.alice, self.room, "m.room.history_visibility",
                                    {"history_visibility": "joined"})
        self.assertEqual(resp.code, 200, resp)

    async def send_content(self, token: str, content: dict[str, Any]) -> str:
        resp = await self.send(token, self.room, content=content)
        self.assertEqual(resp.code, 200, resp)
        return resp.json["event_id"]


class SearchCountsTest(HiddenHistoryCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"search": {"enabled": True}}

    async def search(self, token: str, body: dict[str, Any], next_batch: str | None = None) -> Any:
        path = f"{CS}/search" + (f"?next_batch={q(next_batch)}" if next_batch else "")
        resp = await self.request("POST", path, body, token=token)
        self.assertEqual(resp.code, 200, resp)
        return resp.json["search_categories"]["room_events"]

    async def all_pages(self, token: str, order: str) -> tuple[list[str], list[int]]:
        """Every result id over pages of one, and the count each page reported."""
        seen: list[str] = []
        counts: list[int] = []
        next_batch = None
        for _ in range(20):
            page = await self.search(token, criteria("pin", order_by=order, filter={"limit": 1}),
                                     next_batch)
            seen += [r["result"]["event_id"] for r in page["results"]]
            counts.append(page["count"])
            next_batch = page.get("next_batch")
            if next_batch is None:
                break
        return seen, counts

    async def test_count_and_pages_cover_visible_matches_only(self) -> None:
        # Before Bob joins: hidden from him.
        for i in range(3):
            await self.send_ok(self.alice, self.room, f"pin {100000 + i}")
        await self.join(self.bob, self.room)
        seen1 = await self.send_ok(self.alice, self.room, "pin while bob is here")
        self.assertEqual((await self.member(self.bob, self.room, "leave")).code, 200)
        # While Bob is away: hidden too, and between two visible stretches.
        for i in range(2):
            await self.send_ok(self.alice, self.room, f"pin away {i}")
        await self.join(self.bob, self.room)
        seen2 = await self.send_ok(self.alice, self.room, "pin after bob is back")

        for order in ("recent", "rank"):
            first = await self.search(self.bob, criteria("pin", order_by=order))
            self.assertEqual(first["count"], 2, order)
            self.assertEqual(sorted(r["result"]["event_id"] for r in first["results"]),
                             sorted([seen1, seen2]), order)
            self.assertNotIn("next_batch", first, order)
            # Pages of one: exactly the two visible matches, then no further token.
            ids, counts = await self.all_pages(self.bob, order)
            self.assertEqual(sorted(ids), sorted([seen1, seen2]), order)
            self.assertEqual(len(ids), 2, order)
            self.assertEqual(set(counts), {2}, order)
        # A term only in hidden messages: nothing, not even a count.
        hidden_only = await self.search(self.bob, criteria("100001"))
        self.assertEqual((hidden_only["count"], hidden_only["results"]), (0, []))
        self.assertNotIn("next_batch", hidden_only)
        # Alice sees all seven.
        self.assertEqual((await self.search(self.alice, criteria("pin")))["count"], 7)

    async def test_secret_digits_cannot_be_probed(self) -> None:
        """The review's attack: guessing a number sent before the join, a digit at a time."""
        await self.send_ok(self.alice, self.room, "the code is 4711")
        await self.join(self.bob, self.room)
        for guess in ("4711", "47", "the code"):
            found = await self.search(self.bob, criteria(guess))
            self.assertEqual((found["count"], found["results"]), (0, []), guess)
            found = await self.search(self.bob, criteria(guess, order_by="recent"))
            self.assertEqual((found["count"], found["results"]), (0, []), guess)


class ThreadSummaryTest(HiddenHistoryCase):
    async def bundle(self, token: str, event_id: str) -> dict[str, Any]:
        resp = await self.get_event(token, self.room, event_id)
        self.assertEqual(resp.code, 200, resp)
        return resp.json["unsigned"]["m.relations"]["m.thread"]

    async def test_summary_counts_visible_replies_only(self) -> None:
        # The root is world-visible for Bob only if sent while he is joined.
        await self.join(self.bob, self.room)
        root = await self.send_ok(self.alice, self.room, "root")
        mine = await self.send_content(self.bob, thread_reply(root, "bob replies"))
        self.assertEqual((await self.member(self.bob, self.room, "leave")).code, 200)
        for i in range(4):
            await self.send_content(self.alice, thread_reply(root, f"while away {i}"))
        await self.join(self.bob, self.room)
        last = await self.send_content(self.alice, thread_reply(root, "after bob is back"))

        thread = await self.bundle(self.bob, root)
        self.assertEqual(thread["latest_event"]["event_id"], last)
        self.assertEqual(thread["count"], 2)  # his own reply and the last one, not 6
        self.assertTrue(thread["current_user_participated"])
        relations = await self.request(
            "GET", f"{V1}/rooms/{q(self.room)}/relations/{q(root)}/m.thread?limit=50",
            token=self.bob)
        self.assertEqual([e["event_id"] for e in relations.json["chunk"]], [last, mine])
        self.assertEqual((await self.bundle(self.alice, root))["count"], 6)

        # The same summary rides along in /sync and /messages.
        sync = await self.sync(self.bob)
        timeline = sync["rooms"]["join"][self.room]["timeline"]["events"]
        for ev in timeline:
            if ev["event_id"] == root:
                self.assertEqual(ev["unsigned"]["m.relations"]["m.thread"]["count"], 2)

    async def test_thread_with_hidden_replies_only_has_no_summary(self) -> None:
        await self.join(self.bob, self.room)
        root = await self.send_ok(self.alice, self.room, "root")
        self.assertEqual((await self.member(self.bob, self.room, "leave")).code, 200)
        await self.send_content(self.alice, thread_reply(root, "while bob is away"))
        await self.join(self.bob, self.room)
        resp = await self.get_event(self.bob, self.room, root)
        self.assertEqual(resp.code, 200, resp)
        self.assertNotIn("m.relations", resp.json.get("unsigned", {}))

    async def test_threads_list_orders_by_visible_activity(self) -> None:
        await self.join(self.bob, self.room)
        a = await self.send_ok(self.alice, self.room, "thread a")
        b = await self.send_ok(self.alice, self.room, "thread b")
        await self.send_content(self.alice, thread_reply(a, "a1"))
        await self.send_content(self.alice, thread_reply(b, "b1"))
        quiet = await self.send_ok(self.alice, self.room, "thread with hidden replies only")
        self.assertEqual((await self.member(self.bob, self.room, "leave")).code, 200)
        # Hidden from Bob: a is bumped, and the quiet root gets its only replies.
        await self.send_content(self.alice, thread_reply(a, "a2 hidden"))
        await self.send_content(self.alice, thread_reply(quiet, "quiet hidden"))
        await self.join(self.bob, self.room)

        path = f"{V1}/rooms/{q(self.room)}/threads"
        bob = await self.request("GET", path, token=self.bob)
        self.assertEqual(bob.code, 200, bob)
        self.assertEqual([e["event_id"] for e in bob.json["chunk"]], [b, a])
        alice = await self.request("GET", path, token=self.alice)
        self.assertEqual([e["event_id"] for e in alice.json["chunk"]], [quiet, a, b])
        # Pages of one: the same order, and the tokens carry visible positions only.
        seen: list[str] = []
        token = None
        for _ in range(5):
            query = "limit=1" + (f"&from={q(token)}" if token else "")
            page = await self.request("GET", f"{path}?{query}", token=self.bob)
            self.assertEqual(page.code, 200, page)
            seen += [e["event_id"] for e in page.json["chunk"]]
            token = page.json.get("next_batch")
            if token is None:
                break
        self.assertEqual(seen, [b, a])


class VisibleRangesTest(HiddenHistoryCase):
    """``visible_ranges`` agrees with ``filter_events`` at every position of the room."""

    async def test_ranges_match_the_event_filter(self) -> None:
        await self.send_ok(self.alice, self.room, "before")
        await self.member(self.alice, self.room, "invite", user_id=BOB)
        await self.send_ok(self.alice, self.room, "invited")
        await self.join(self.bob, self.room)
        await self.send_ok(self.alice, self.room, "joined")
        await self.put_state(self.alice, self.room, "m.room.history_visibility",
                             {"history_visibility": "invited"})
        await self.member(self.bob, self.room, "leave")
        await self.send_ok(self.alice, self.room, "left")
        await self.put_state(self.alice, self.room, "m.room.history_visibility",
                             {"history_visibility": "world_readable"})
        await self.send_ok(self.alice, self.room, "world")
        visibility = VisibilityHandler(self.hs.stores.state_history, self.hs.stores.room_members)
        events = self.hs.stores.events
        top = await events.max_stream_ordering()
        ranges = await visibility.visible_ranges(BOB, self.room)
        rows = await self.hs.db.query("ids", "SELECT event_id FROM events WHERE room_id = ?",
                                      self.room)
        found = await events.get_events(r[0] for r in rows)
        checked = 0
        for ev in found.values():
            if ev.type == "m.room.member" and ev.state_key == BOB:
                continue  # always visible to him, outside the ranges' rule
            pos = ev.internal.stream_ordering or 0
            in_ranges = any(after < pos and (upto is None or pos <= upto) for after, upto in ranges)
            self.assertEqual(in_ranges, bool(await visibility.filter_events(BOB, [ev])),
                             (pos, ev.type, ranges))
            checked += 1
        self.assertGreater(checked, 8)
        self.assertLessEqual(max(p for _, u in ranges for p in ([u] if u else [])), top + 1)
        self.assertIsInstance(next(iter(found.values())), Event)


class VisibilityContentsTest(HiddenHistoryCase):
    """The history-visibility and member contents the rules read are kept in memory as
    their visibility keys only: redacting those events changes no answer, and nothing
    else of a content (a display name) is kept."""

    async def messages(self, token: str) -> list[str]:
        resp = await self.request(
            "GET", f"{CS}/rooms/{q(self.room)}/messages?dir=b&limit=50", token=token)
        self.assertEqual(resp.code, 200, resp)
        return [e["event_id"] for e in resp.json["chunk"] if e["type"] == "m.room.message"]

    async def test_redacted_visibility_events_change_nothing(self) -> None:
        hidden = await self.send_content(self.alice, {"msgtype": "m.text", "body": "before"})
        resp = await self.request("POST", f"{CS}/join/{q(self.room)}", {}, token=self.bob)
        self.assertEqual(resp.code, 200, resp)
        shown = await self.send_content(self.alice, {"msgtype": "m.text", "body": "after"})
        first = await self.messages(self.bob)
        self.assertIn(shown, first)
        self.assertNotIn(hidden, first)
        store = self.hs.stores.state_history
        state = await self.request("GET", f"{CS}/rooms/{q(self.room)}/state", token=self.alice)
        ids = {(e["type"], e["state_key"]): e["event_id"] for e in state.json}
        vis_id = ids[("m.room.history_visibility", "")]
        bob_id = ids[("m.room.member", BOB)]
        kept = await store._contents([vis_id, bob_id])  # noqa: SLF001
        self.assertEqual(kept, {vis_id: {"history_visibility": "joined"},
                                bob_id: {"membership": "join"}})  # no displayname
        for event_id in (vis_id, bob_id):
            resp = await self.request(
                "PUT", f"{CS}/rooms/{q(self.room)}/redact/{q(event_id)}/r-{event_id[1:9]}",
                {}, token=self.alice)
            self.assertEqual(resp.code, 200, resp)
        self.assertEqual(await self.messages(self.bob), first)
        store._vis_contents.clear()  # noqa: SLF001  (as read from the database)
        self.assertEqual(await self.messages(self.bob), first)

"""Admin history purge (``/_synapse/admin/v1/purge_history``), as SyTest 48admin.pl uses
it: background job with a status, purged events gone from /sync, /messages, /context
and /event, state kept, and new messages still notifying afterwards."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from homeserver.clock import Clock
from homeserver.handlers import purge_history
from homeserver.handlers.purge_history import FAILED_MESSAGE, PurgeHistoryHandler, PurgeRequest
from homeserver.http.errors import MatrixError
from storage.stores.purge_history import PurgeBatch
from tests.harness import TEST_PASSWORD
from tests.rest.room_helpers import CS, RoomTestCase, q

ADMIN = "/_synapse/admin/v1"


class PurgeHistoryTest(RoomTestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        await self.hs.registration.create_account("admin", TEST_PASSWORD, is_admin=True)
        self.admin = (await self.login("admin")).json["access_token"]

    # -- helpers --------------------------------------------------------------------------

    async def purge(self, room_id: str, event_id: str | None = None, token: str | None = None,
                    **body: Any) -> Any:
        path = f"{ADMIN}/purge_history/{q(room_id)}"
        if event_id is not None:
            path += f"/{q(event_id)}"
        return await self.request("POST", path, body, token=token or self.admin)

    async def purge_ok(self, room_id: str, event_id: str | None = None, **body: Any) -> str:
        resp = await self.purge(room_id, event_id, **body)
        self.assertEqual(resp.code, 200, resp)
        purge_id = resp.json["purge_id"]
        self.assertIsInstance(purge_id, str)
        self.assertEqual(await self.await_status(purge_id), "complete")
        return purge_id

    async def await_status(self, purge_id: str) -> str:
        for _ in range(500):
            resp = await self.request("GET", f"{ADMIN}/purge_history_status/{q(purge_id)}",
                                      token=self.admin)
            self.assertEqual(resp.code, 200, resp)
            if resp.json["status"] != "active":
                return resp.json["status"]
            await task.deferLater(reactor, 0.01, lambda: None)
        self.fail("purge never finished")

    async def messages(self, token: str, room_id: str) -> list[dict]:
        resp = await self.request("GET", f"{CS}/rooms/{q(room_id)}/messages?dir=b&limit=100",
                                  token=token)
        self.assertEqual(resp.code, 200, resp)
        return resp.json["chunk"]

    async def room_with_messages(self, token: str, count: int, **create: Any
                                 ) -> tuple[str, list[str]]:
        room = await self.create_room(token, **create)
        resp = await self.put_state(token, room, "m.room.name", {"name": "A room name"})
        self.assertEqual(resp.code, 200, resp)
        ids = [await self.send_ok(token, room, f"Message {i}") for i in range(1, count + 1)]
        return room, ids

    def message_ids(self, events: list[dict]) -> list[str]:
        return [e["event_id"] for e in events if e["type"] == "m.room.message"]

    # -- SyTest "/purge_history" ----------------------------------------------------------

    async def test_purge_up_to_event(self) -> None:
        alice = await self.user("alice")
        room, ids = await self.room_with_messages(alice, 10)
        last = ids[-1]
        before = await self.sync(alice)
        # Must be a server admin.
        self.assertMatrixError(await self.purge(room, last, token=alice), 403, "M_FORBIDDEN")
        await self.purge_ok(room, last)

        # An existing sync token still works, and an initial sync shows only the last
        # message, with the state intact.
        await self.sync(alice, since=before["next_batch"])
        body = await self.sync(alice)
        joined = body["rooms"]["join"][room]
        self.assertEqual(self.message_ids(joined["timeline"]["events"]), [last])
        state_types = {e["type"] for e in joined["state"]["events"]} | {
            e["type"] for e in joined["timeline"]["events"] if "state_key" in e}
        for t in ("m.room.create", "m.room.member", "m.room.power_levels", "m.room.name"):
            self.assertIn(t, state_types)

        # Gone from /messages, /context and /event; the kept event still has context.
        self.assertEqual(self.message_ids(await self.messages(alice, room)), [last])
        for gone in ids[:-1]:
            resp = await self.request("GET", f"{CS}/rooms/{q(room)}/context/{q(gone)}",
                                      token=alice)
            self.assertMatrixError(resp, 404, "M_NOT_FOUND")
            self.assertMatrixError(await self.get_event(alice, room, gone), 404, "M_NOT_FOUND")
        resp = await self.request("GET", f"{CS}/rooms/{q(room)}/context/{q(last)}", token=alice)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(self.message_ids(resp.json["events_before"]), [])
        # Current state is still served, and the room takes new events.
        resp = await self.request("GET", f"{CS}/rooms/{q(room)}/state/m.room.name", token=alice)
        self.assertEqual(resp.json, {"name": "A room name"})
        new = await self.send_ok(alice, room, "after the purge")
        self.assertEqual(self.message_ids(await self.messages(alice, room)), [new, last])
        # Local events are hidden, not deleted, unless delete_local_events is set.
        kept = await self.hs.stores.events.get_event(ids[0])
        assert kept is not None
        self.assertTrue(kept.internal.outlier)

    async def test_purge_up_to_ts(self) -> None:
        alice = await self.user("alice")
        room, ids = await self.room_with_messages(alice, 9)
        self.advance(5)
        cut = self.clock.time_msec()
        self.advance(1)
        last = await self.send_ok(alice, room, "Message 10")
        await self.purge_ok(room, purge_up_to_ts=cut)
        body = await self.sync(alice)
        self.assertEqual(self.message_ids(body["rooms"]["join"][room]["timeline"]["events"]),
                         [last])
        self.assertEqual(self.message_ids(await self.messages(alice, room)), [last])

    async def test_ts_after_everything_keeps_the_latest_event(self) -> None:
        alice = await self.user("alice")
        room, ids = await self.room_with_messages(alice, 3)
        self.advance(10)
        await self.purge_ok(room, purge_up_to_ts=self.clock.time_msec())
        self.assertEqual(self.message_ids(await self.messages(alice, room)), [ids[-1]])
        await self.send_ok(alice, room, "still works")

    async def test_event_id_in_body_and_delete_local_events(self) -> None:
        alice = await self.user("alice")
        room, ids = await self.room_with_messages(alice, 4)
        await self.purge_ok(room, purge_up_to_event_id=ids[2], delete_local_events=True)
        events = self.hs.stores.events
        for gone in ids[:2]:
            self.assertIsNone(await events.get_event(gone))
        self.assertIsNotNone(await events.get_event(ids[2]))
        # State events are never deleted: they are hidden from the timeline.
        state = await events.get_current_state_ids(room)
        for event_id in state.values():
            found = await events.get_event(event_id)
            assert found is not None
            self.assertTrue(found.internal.outlier)
        self.assertEqual(self.message_ids(await self.messages(alice, room)), ids[:1:-1])

    async def test_redaction_of_a_kept_event_is_kept(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        resp = await self.put_state(alice, room, "m.room.topic", {"topic": "secret"})
        topic_id = resp.json["event_id"]
        resp = await self.request("PUT", f"{CS}/rooms/{q(room)}/redact/{q(topic_id)}/r1",
                                  {}, token=alice)
        self.assertEqual(resp.code, 200, resp)
        redaction_id = resp.json["event_id"]
        msg = await self.send_ok(alice, room, "hello")
        gone = await self.send_ok(alice, room, "deleted")
        last = await self.send_ok(alice, room, "last")
        await self.purge_ok(room, last, delete_local_events=True)
        events = self.hs.stores.events
        self.assertIsNone(await events.get_event(msg))
        self.assertIsNone(await events.get_event(gone))
        kept = await events.get_event(redaction_id)
        assert kept is not None
        self.assertTrue(kept.internal.outlier)
        self.assertEqual(await events.get_redaction_ids([topic_id]), {topic_id: redaction_id})

    # -- SyTest "After /purge_history users still get pushed for new messages" --------------

    async def test_notifications_after_purge(self) -> None:
        alice, bob = await self.user("alice"), await self.user("bob")
        room = await self.create_room(alice, preset="private_chat", invite=["@bob:test.local"])
        self.assertEqual((await self.join(bob, room)).code, 200)
        old = [await self.send_ok(alice, room, f"old {i}") for i in range(3)]
        body = await self.sync(bob)
        # Bob's invite and the three messages.
        self.assertEqual(body["rooms"]["join"][room]["unread_notifications"]["notification_count"],
                         4)
        await self.purge_ok(room, old[-1])
        body = await self.sync(bob)
        self.assertEqual(body["rooms"]["join"][room]["unread_notifications"]["notification_count"],
                         1)
        new = await self.send_ok(alice, room, "new message")
        body = await self.sync(bob, since=body["next_batch"])
        joined = body["rooms"]["join"][room]
        self.assertEqual(self.message_ids(joined["timeline"]["events"]), [new])
        self.assertEqual(joined["unread_notifications"]["notification_count"], 2)
        resp = await self.request("GET", f"{CS}/notifications", token=bob)
        self.assertEqual([n["event"]["event_id"] for n in resp.json["notifications"]],
                         [new, old[-1]])

    # -- errors ---------------------------------------------------------------------------

    async def test_errors(self) -> None:
        alice = await self.user("alice")
        room, ids = await self.room_with_messages(alice, 2)
        other, other_ids = await self.room_with_messages(alice, 1)
        self.assertMatrixError(await self.purge(room), 400, "M_BAD_JSON")
        self.assertMatrixError(await self.purge("!nope:test.local", ids[0]), 404, "M_NOT_FOUND")
        self.assertMatrixError(await self.purge(room, "$nope"), 404, "M_NOT_FOUND")
        self.assertMatrixError(await self.purge(room, other_ids[0]), 400, "M_INVALID_PARAM")
        self.assertMatrixError(await self.purge(room, "not-an-id"), 400, "M_INVALID_PARAM")
        self.assertMatrixError(await self.purge("x" * 300, ids[0]), 400, "M_INVALID_PARAM")
        self.assertMatrixError(await self.purge(room, purge_up_to_ts="soon"), 400, "M_BAD_JSON")
        self.assertMatrixError(await self.purge(room, purge_up_to_ts=-1), 400, "M_INVALID_PARAM")
        self.assertMatrixError(await self.purge(room, purge_up_to_ts=2**70), 400,
                               "M_INVALID_PARAM")
        self.assertMatrixError(await self.purge(room, ids[0], delete_local_events="yes"), 400,
                               "M_BAD_JSON")
        resp = await self.request("POST", f"{ADMIN}/purge_history/{q(room)}",
                                  {"purge_up_to_ts": 1})
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        resp = await self.request("GET", f"{ADMIN}/purge_history_status/unknown", token=self.admin)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        purge_id = await self.purge_ok(room, ids[1])
        resp = await self.request("GET", f"{ADMIN}/purge_history_status/{purge_id}", token=alice)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        # Every purge is an audited admin action.
        audit = await self.hs.stores.security_events.list_events(event_type="admin_action")
        self.assertTrue(any(e.details.get("action") == "purge_history" for e in audit))
        # Nothing before the first event: a no-op purge that still completes.
        await self.purge_ok(room, purge_up_to_ts=0)


class SmallBatchPurgeTest(PurgeHistoryTest):
    """The same, with batches of two events: a purge spans many transactions."""

    async def setUp(self) -> None:  # type: ignore[override]
        self.patch(purge_history, "BATCH_SIZE", 2)
        await super().setUp()


class _FakeRooms:
    async def get_room_version(self, room_id: str) -> str | None:
        return "11" if room_id == "!r:test.local" else None


class _FakeEvents:
    async def get_event(self, event_id: str) -> Any:
        return None


class _SlowStore:
    """A purge store whose batches wait until released, to observe a running purge."""

    def __init__(self, fail: bool = False) -> None:
        self.release: defer.Deferred[None] = defer.Deferred()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.fail = fail
        self.stale_failed: list[int] = []
        self.expired_before: list[int] = []

    async def first_position_at_or_after_ts(self, room_id: str, ts: int) -> int | None:
        return 10

    async def latest_position(self, room_id: str) -> int | None:
        return 10

    async def create_job(self, purge_id: str, room_id: str, requested_by: str, before: int,
                         delete_local: bool, now_ms: int) -> None:
        self.jobs[purge_id] = {"status": "active"}

    async def purge_batch(self, *args: Any) -> PurgeBatch:
        await self.release
        if self.fail:
            raise RuntimeError("disk on fire")
        return PurgeBatch(0, 0, 0)

    async def add_progress(self, *args: Any) -> None:
        pass

    async def finish_job(self, purge_id: str, status: str, error: str | None,
                         now_ms: int) -> None:
        self.jobs[purge_id] = {"status": status, "error": error}

    async def fail_stale_jobs(self, created_before_ms: int, error: str, now_ms: int) -> int:
        self.stale_failed.append(created_before_ms)
        return 0

    async def delete_finished_before(self, ts_ms: int) -> int:
        self.expired_before.append(ts_ms)
        return 0


class PurgeJobHandlingTest(unittest.TestCase):
    def handler(self, store: _SlowStore) -> PurgeHistoryHandler:
        clock = Clock(task.Clock())
        return PurgeHistoryHandler("test.local", clock, store,  # type: ignore[arg-type]
                                   _FakeEvents(), _FakeRooms())  # type: ignore[arg-type]

    def request(self, room: str = "!r:test.local") -> PurgeRequest:
        return PurgeRequest(room, "@admin:test.local", None, 5, False)

    async def test_one_purge_per_room_and_in_background(self) -> None:
        store = _SlowStore()
        handler = self.handler(store)
        purge_id = await handler.start(self.request())  # returns while the purge waits
        self.assertEqual(store.jobs[purge_id]["status"], "active")
        with self.assertRaises(MatrixError) as cm:
            await handler.start(self.request())
        self.assertEqual(cm.exception.code, 400)
        store.release.callback(None)
        self.assertEqual(store.jobs[purge_id]["status"], "complete")
        second = await handler.start(self.request())  # the room is free again
        self.assertEqual(store.jobs[second]["status"], "complete")
        # Stale jobs are failed once per process; expired ones go on every call.
        self.assertEqual(len(store.stale_failed), 1)
        self.assertEqual(len(store.expired_before), 3)

    async def test_failure_is_reported_without_details(self) -> None:
        store = _SlowStore(fail=True)
        handler = self.handler(store)
        purge_id = await handler.start(self.request())
        store.release.callback(None)
        self.assertEqual(store.jobs[purge_id], {"status": "failed", "error": FAILED_MESSAGE})
        with self.assertRaises(MatrixError) as cm:
            await handler.start(self.request("!unknown:test.local"))
        self.assertEqual(cm.exception.code, 404)

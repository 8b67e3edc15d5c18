"""Faster remote joins (issue 16 "Speed"): backfill after a join whose newest prior
event is a state event, keys for a batch fetched together (notary first, one POST),
each PDU parsed once, and the join's per-phase timings.

Uses the two in-process servers of tests/rest/test_federation_history.py (test.local,
this one, and remote.test, whose key FakeRemote signs with)."""

from __future__ import annotations

from typing import Any

from federation.pdu_checks import parse_pdu
from homeserver.events.model import Event
from homeserver.events.room_versions import get_room_version
from homeserver.handlers.event_persister import PersistKind
from tests.rest.federation_helpers import persister_of
from tests.rest.room_helpers import q
from tests.rest.test_federation_history import ALICE, BOB, SHARED, HistoryTestCase
from tests.rest.test_federation_keys import FederationTestCase
from tests.rest.test_federation_membership import CS, REMOTE, MembershipTestCase

CAROL = "@carol:remote.test"


class BackfillAfterStateEventTest(HistoryTestCase):
    async def joined_after_a_leave(self, messages: int = 6) -> tuple[str, dict[str, Any]]:
        """alice's token and the room: bob's history on remote.test, then carol joins
        and leaves, and alice joins with carol's leave as her prev event; this server
        holds the state (carol's leave included) as outliers, as a join leaves it."""
        alice = await self.user("alice")
        f, ts = self.fake_r, self.clock.time_msec()
        create = f.event(SHARED, "10", BOB, "m.room.create",
                         {"creator": BOB, "room_version": "10"}, [], [], "", ts=ts)
        join = f.event(SHARED, "10", BOB, "m.room.member", {"membership": "join"}, [create],
                       [create], BOB, ts=ts)
        pl = f.event(SHARED, "10", BOB, "m.room.power_levels", {"users": {BOB: 100}}, [join],
                     [create, join], "", ts=ts)
        jr = f.event(SHARED, "10", BOB, "m.room.join_rules", {"join_rule": "public"}, [pl],
                     [create, join, pl], "", ts=ts)
        hv = f.event(SHARED, "10", BOB, "m.room.history_visibility",
                     {"history_visibility": "shared"}, [jr], [create, join, pl], "", ts=ts)
        msgs: list[Event] = []
        for i in range(messages):
            msgs.append(f.event(SHARED, "10", BOB, "m.room.message",
                                {"msgtype": "m.text", "body": f"old {i}"},
                                [msgs[-1] if msgs else hv], [create, join, pl], ts=ts + i))
        carol_join = f.event(SHARED, "10", CAROL, "m.room.member", {"membership": "join"},
                             [msgs[-1]], [create, jr, pl], CAROL, ts=ts + messages)
        carol_leave = f.event(SHARED, "10", CAROL, "m.room.member", {"membership": "leave"},
                              [carol_join], [create, pl, carol_join], CAROL,
                              ts=ts + messages + 1)
        alice_join = self.fake_l.event(SHARED, "10", ALICE, "m.room.member",
                                       {"membership": "join"}, [carol_leave],
                                       [create, jr, pl], ALICE, ts=ts + messages + 2)
        await self.remote.stores.rooms.store_room(SHARED, "10", BOB, False, ts)
        outcomes = await persister_of(self.remote).persist_remote(
            SHARED, [create, join, pl, jr, hv, *msgs, carol_join, carol_leave, alice_join],
            PersistKind.REMOTE)
        self.assertEqual({o.status for o in outcomes}, {"accepted"}, outcomes)
        # This server: the state at the join (carol's leave in it) as outliers.
        state = [create, join, pl, jr, hv, carol_leave]
        await self.hs.stores.rooms.store_room(SHARED, "10", BOB, False, 0)
        persister = persister_of(self.hs)
        outcomes = await persister.persist_remote(SHARED, [*state, carol_join],
                                                  PersistKind.OUTLIER)
        self.assertEqual({o.status for o in outcomes}, {"outlier"})
        outcome = await persister.persist_remote(
            SHARED, [alice_join], PersistKind.REMOTE,
            state_before={e.state_pair: e.event_id for e in state})
        self.assertEqual(outcome[0].status, "accepted")
        return alice, {"msgs": msgs, "carol_leave": carol_leave, "carol_join": carol_join}

    async def test_backfill_when_the_newest_prior_event_is_an_outlier(self) -> None:
        alice, room = await self.joined_after_a_leave()
        seen: list[dict[str, Any]] = []
        page = await self.messages(alice, SHARED, limit=20)
        seen += page["chunk"]
        for _ in range(5):
            if "end" not in page:
                break
            page = await self.messages(alice, SHARED, from_token=page["end"], limit=20)
            seen += page["chunk"]
        bodies = [e["content"].get("body") for e in seen if e["type"] == "m.room.message"]
        self.assertEqual(bodies, [f"old {i}" for i in range(5, -1, -1)])
        members = [(e["state_key"], e["content"]["membership"]) for e in seen
                   if e["type"] == "m.room.member"]
        self.assertEqual(members[:3], [(ALICE, "join"), (CAROL, "leave"), (CAROL, "join")])
        # The leave (an outlier since the join) was promoted into the timeline.
        leave = await self.event_of(room["carol_leave"].event_id)
        self.assertFalse(leave.internal.outlier)
        self.assertLess(leave.internal.stream_ordering or 0, 0)
        # And the room's current state still holds it (promotion by backfill keeps the
        # current state as it was).
        rows = await self.hs.stores.events.get_state_groups([leave.event_id])
        self.assertIn(leave.event_id, rows)

    async def test_backfill_fetcher_sees_the_outlier_gap(self) -> None:
        await self.joined_after_a_leave(messages=2)
        assert self.hs.federation is not None
        fetcher = self.hs.federation.ingest.fetcher  # type: ignore[union-attr]
        self.assertGreater(await fetcher.backfill(SHARED, 10), 0)


class ParseOnceTest(HistoryTestCase):
    def test_signature_check_reuses_the_event_id_bytes(self) -> None:
        """The redacted canonical form hashed for a v3+ event id is the one its
        signatures cover: parse_pdu keeps it for the signature check."""
        from federation import pdu_checks

        version = get_room_version("10")
        assert version is not None
        ev = self.fake_r.event(SHARED, "10", BOB, "m.room.message", {"body": "x"}, [], [],
                               ts=1)
        parsed = parse_pdu(self.fake_r.pdu(ev), version, SHARED)
        self.assertEqual(parsed.event_id, ev.event_id)
        self.assertIsNotNone(pdu_checks.signed_bytes_of(parsed))
        key = self.fake_r.signing_key.verify_key
        self.assertTrue(pdu_checks.verify_with_key(parsed, "remote.test",
                                                   self.fake_r.key_id, key))
        # A tampered copy under the same id is no longer trusted with the cached form.
        tampered = Event(parsed.event_id, {**parsed.pdu, "depth": 99}, version)
        self.assertFalse(pdu_checks.verify_with_key(tampered, "remote.test",
                                                    self.fake_r.key_id, key))


class BatchedKeyFetchTest(FederationTestCase):
    """Keys of many servers for one batch of PDUs: the trusted notary (remote.test) is
    asked first, once, for all of them; only what it cannot vouch for is fetched
    directly, and those fetches run together."""

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.third = await self.start_remote("third.test", {})
        assert self.third.federation is not None and self.remote.federation is not None
        self.third.federation.client.discovery = self.discovery  # type: ignore[assignment]
        self.discovery.ports["third.test"] = self.port_of(self.third)
        from homeserver.config.federation import TrustedKeyServer
        from homeserver.events.hashing import encode_base64

        assert self.hs.federation is not None
        notary = self.remote.federation.local_keys
        self.keyring = self.hs.federation.keyring
        self.keyring._notaries = (TrustedKeyServer("remote.test", {  # noqa: SLF001
            notary.key_id: encode_base64(notary.verify_key.encode())}),)
        client = self.hs.federation.client
        self.calls: list[tuple[str, str, str, Any]] = []
        real_get, real_post = client.get_json, client.post_json

        async def get_json(server: str, path: str, *a: Any, **kw: Any) -> Any:
            self.calls.append(("GET", server, path, None))
            return await real_get(server, path, *a, **kw)

        async def post_json(server: str, path: str, body: Any, *a: Any, **kw: Any) -> Any:
            self.calls.append(("POST", server, path, body))
            return await real_post(server, path, body, *a, **kw)

        client.get_json = get_json  # type: ignore[method-assign]
        client.post_json = post_json  # type: ignore[method-assign]

    async def test_notary_first_in_one_query_then_the_rest_directly(self) -> None:
        assert self.third.federation is not None
        third_kid = self.third.federation.local_keys.key_id
        wanted = {"third.test": {third_kid}, "gone.test": {"ed25519:a"},
                  "gone2.test": {"ed25519:b"}, "test.local": {"ed25519:x"}}
        await self.keyring.prefetch(wanted)
        posts = [c for c in self.calls if c[0] == "POST"]
        self.assertEqual(len(posts), 1, self.calls)
        self.assertEqual(posts[0][1:3], ("remote.test", "/_matrix/key/v2/query"))
        self.assertEqual(set(posts[0][3]["server_keys"]),
                         {"third.test", "gone.test", "gone2.test"})
        # third.test came from the notary; the gone servers were then asked directly.
        rec = await self.keyring._store.remote_key("third.test", third_kid)  # noqa: SLF001
        assert rec is not None
        self.assertEqual(rec.from_server, "remote.test")
        direct = sorted(c[1] for c in self.calls if c[0] == "GET")
        self.assertEqual(direct, ["gone.test", "gone2.test"])
        # Held now: a second prefetch asks nobody (and the gone ones not within a minute).
        self.calls.clear()
        await self.keyring.prefetch(wanted)
        self.assertEqual(self.calls, [])
        signed = self.third.federation.local_keys.sign({"x": 1})
        await self.keyring.verify_json_for_server("third.test", signed,
                                                  self.clock.time_msec())
        self.assertEqual(self.calls, [])

    async def test_single_lookup_asks_the_notary_first(self) -> None:
        assert self.third.federation is not None
        signed = self.third.federation.local_keys.sign({"x": 1})
        await self.keyring.verify_json_for_server("third.test", signed,
                                                  self.clock.time_msec())
        self.assertEqual([(c[0], c[1]) for c in self.calls], [("POST", "remote.test")])


class JoinPhaseTimingTest(MembershipTestCase):
    async def test_join_phases_logged_and_in_the_histogram(self) -> None:
        import logging

        from federation.remote_join import JOIN_PHASES

        bob = await self.account(self.remote, "bob")
        alice = await self.account(self.hs, "alice")
        room_id = await self.remote_room(bob, preset="public_chat")
        logger = logging.getLogger("federation.remote_join")
        records: list[logging.LogRecord] = []
        handler = logging.Handler(logging.DEBUG)
        handler.emit = records.append  # type: ignore[method-assign]
        level = logger.level
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
        try:
            await self.ok(self.hs, "POST", f"{CS}/join/{q(room_id)}?via={REMOTE}", {},
                          alice.token)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
        registry = self.hs.metrics_registry
        for phase in JOIN_PHASES:
            count = registry.get_sample_value("parley_federation_join_phase_seconds_count",
                                              {"phase": phase})
            self.assertEqual(count, 1.0, phase)
        lines = [r.getMessage() for r in records if r.levelno == logging.DEBUG]
        self.assertTrue(any("send_join=" in line and "persist_join=" in line
                            for line in lines), lines)
        self.assertFalse(any(alice.user_id in line for line in lines))  # no user ids


class JoinWritesTogetherTest(MembershipTestCase):
    """A join's state and auth chain are written as outliers in one transaction, and
    each server's block status is read once for the whole answer, not per event."""

    async def test_one_outlier_transaction_and_block_reads_per_server(self) -> None:
        batches = await self.join_counting_batches()
        self.assertEqual(len(batches), 1, batches)
        self.assertGreaterEqual(batches[0], 6)  # create, member, PLs, rules, topic, name...

    async def test_outlier_transactions_bounded(self) -> None:
        from homeserver.handlers import event_dag

        self.patch(event_dag, "OUTLIER_BATCH", 3)
        batches = await self.join_counting_batches()
        self.assertGreater(len(batches), 1, batches)
        self.assertLessEqual(max(batches), 3, batches)

    async def join_counting_batches(self) -> list[int]:
        """Join a room with a few state events; the sizes of the outlier writes."""
        bob = await self.account(self.remote, "bob")
        alice = await self.account(self.hs, "alice")
        room_id = await self.remote_room(bob, preset="public_chat")
        for name in ("topic", "name"):
            await self.ok(self.remote, "PUT",
                          f"{CS}/rooms/{q(room_id)}/state/m.room.{name}/",
                          {name: "x"}, bob.token)
        store = self.hs.stores.events
        batches: list[int] = []
        real_batch, real_one = store.persist_events, store.persist_event
        outliers_alone: list[str] = []

        async def persist_events(reqs: Any) -> Any:
            batches.append(len(reqs))
            return await real_batch(reqs)

        async def persist_event(req: Any) -> Any:
            if req.mode == "outlier":
                outliers_alone.append(req.event.event_id)
            return await real_one(req)

        store.persist_events = persist_events  # type: ignore[method-assign]
        store.persist_event = persist_event  # type: ignore[method-assign]
        assert self.hs.federation is not None and self.hs.federation.ingest is not None
        ingest = self.hs.federation.ingest
        asked: list[str] = []
        real_blocked = ingest._is_blocked  # noqa: SLF001
        assert real_blocked is not None

        async def is_blocked(server: str) -> bool:
            asked.append(server)
            return await real_blocked(server)

        ingest._is_blocked = is_blocked  # noqa: SLF001
        await self.ok(self.hs, "POST", f"{CS}/join/{q(room_id)}?via={REMOTE}", {},
                      alice.token)
        self.assertEqual(outliers_alone, [])
        # Once per server per batch (the state and auth chain, then the join itself),
        # not once per event.
        self.assertLessEqual(asked.count(REMOTE), 2, asked)
        state = await self.ok(self.hs, "GET", f"{CS}/rooms/{q(room_id)}/state/m.room.topic/",
                              None, alice.token)
        self.assertEqual(state, {"topic": "x"})
        return batches

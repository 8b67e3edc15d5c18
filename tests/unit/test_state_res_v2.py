"""State resolution v2 (room versions 2-11) and v2.1 (room version 12), at the level of
whole room graphs: the known conflict cases (ban against a power level change, join rule
evasion, off-topic power levels, topic resets, mainline ordering), the v2.1 changes
(empty starting state, the conflicted state subgraph), rejected events, a randomised
property test (input order and repeated sets do not matter) and a 1,000-member room.

The graphs are built with :class:`tests.unit.test_state_res_graph.RoomGraph`; every case
is checked in several room versions, including v12 where the create event is not in
``auth_events`` and creators have infinite power.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

from twisted.trial import unittest

from homeserver.events.model import StateKey
from homeserver.events.room_versions import V2, V6, V10, V11, V12, RoomVersion
from homeserver.events.state_res import MappingEventFetcher, resolve_state
from tests.unit.test_state_res_graph import (
    ALICE,
    BOB,
    CHARLIE,
    EVELYN,
    JR,
    MEMBER,
    MESSAGE,
    PL,
    TOPIC,
    ZARA,
    CountingFetcher,
    RoomGraph,
    initial_room,
    run,
)

V2_VERSIONS: tuple[RoomVersion, ...] = (V2, V6, V10, V11, V12)


class KnownCasesTest(unittest.TestCase):
    """Each case forks after START and merges at END; the expectation lists the events
    at END whose keys changed since START (plus any named explicitly)."""

    def check(self, g: RoomGraph, expected: list[str], absent: tuple[StateKey, ...] = ()) -> None:
        start, end = g.state_after["START"], g.state_after["END"]
        want = {g.events[g.ids[n]].state_pair: g.ids[n] for n in expected}
        got = {k: v for k, v in end.items() if k in want or start.get(k) != v}
        self.assertEqual({k: g.node(v) for k, v in got.items()}, {k: g.node(v) for k, v in want.items()},
                         f"room version {g.version.identifier}")
        for key in absent:
            self.assertNotIn(key, end)

    def test_ban_vs_power_levels(self) -> None:
        # Alice bans Bob while Bob (50) sends power levels on another branch: the ban,
        # by the more powerful sender, is applied first and Bob's event then fails.
        for version in V2_VERSIONS:
            g = initial_room(version)
            g.add("PA", ALICE, PL, "", g.levels({ALICE: 100, BOB: 50}), prev=["START"])
            g.member("MA", ALICE, "join", prev=["PA"])
            g.member("MB", ALICE, "ban", BOB, prev=["MA"])
            g.add("PB", BOB, PL, "", g.levels({ALICE: 100, BOB: 50}), prev=["PA"])
            g.add("END", ZARA, MESSAGE, None, {}, prev=["MB", "PB"])
            self.check(g, ["PA", "MA", "MB"])

    def test_join_rule_evasion(self) -> None:
        # Evelyn joins on a branch where the room is still public, concurrently with it
        # becoming invite-only: the join rules (a power event) win and her join fails.
        for version in V2_VERSIONS:
            g = initial_room(version)
            g.add("JR", ALICE, JR, "", {"join_rule": "invite"}, prev=["START"])
            g.member("ME", EVELYN, "join", prev=["START"])
            g.add("END", ZARA, MESSAGE, None, {}, prev=["JR", "ME"])
            self.check(g, ["JR"], absent=((MEMBER, EVELYN),))

    def test_offtopic_power_levels(self) -> None:
        # A chain PA -> PB -> PC merged with PA: the whole chain replays and PC stands.
        for version in V2_VERSIONS:
            g = initial_room(version)
            g.add("PA", ALICE, PL, "", g.levels({ALICE: 100, BOB: 50}), prev=["START"])
            g.add("PB", BOB, PL, "", g.levels({ALICE: 100, BOB: 50, CHARLIE: 50}), prev=["PA"])
            g.add("PC", CHARLIE, PL, "", g.levels({ALICE: 100, BOB: 50, CHARLIE: 0}), prev=["PB"])
            g.add("END", ZARA, MESSAGE, None, {}, prev=["PC", "PA"])
            self.check(g, ["PC"])

    def test_topic_basic(self) -> None:
        # Alice demotes Bob (PA2) while Bob re-sends power levels (PB) and sets a topic
        # (T3): PA2 wins, so Bob's PB and T3 fail and Alice's T2 stays.
        for version in V2_VERSIONS:
            g = initial_room(version)
            g.add("T1", ALICE, TOPIC, "", {"topic": "1"}, prev=["START"])
            g.add("PA1", ALICE, PL, "", g.levels({ALICE: 100, BOB: 50}), prev=["T1"])
            g.add("T2", ALICE, TOPIC, "", {"topic": "2"}, prev=["PA1"])
            g.add("PA2", ALICE, PL, "", g.levels({ALICE: 100, BOB: 0}), prev=["T2"])
            g.add("PB", BOB, PL, "", g.levels({ALICE: 100, BOB: 50}), prev=["PA1"])
            g.add("T3", BOB, TOPIC, "", {"topic": "3"}, prev=["PB"])
            g.add("END", ZARA, MESSAGE, None, {}, prev=["PA2", "T3"])
            self.check(g, ["PA2", "T2"])

    def test_topic_reset(self) -> None:
        # Bob sets a topic, then is banned; merged with a branch that only has T1: the
        # ban stands, Bob's topic fails and the topic resets to T1.
        for version in V2_VERSIONS:
            g = initial_room(version)
            g.add("T1", ALICE, TOPIC, "", {"topic": "1"}, prev=["START"])
            g.add("PA", ALICE, PL, "", g.levels({ALICE: 100, BOB: 50}), prev=["T1"])
            g.add("T2", BOB, TOPIC, "", {"topic": "2"}, prev=["PA"])
            g.member("MB", ALICE, "ban", BOB, prev=["T2"])
            g.add("END", ZARA, MESSAGE, None, {}, prev=["MB", "T1"])
            self.check(g, ["T1", "MB", "PA"])

    def test_topic_after_merge(self) -> None:
        # topic_basic, then a merge (MZ1), a new topic by Alice (T4) and a second merge.
        for version in V2_VERSIONS:
            g = initial_room(version)
            g.add("T1", ALICE, TOPIC, "", {"topic": "1"}, prev=["START"])
            g.add("PA1", ALICE, PL, "", g.levels({ALICE: 100, BOB: 50}), prev=["T1"])
            g.add("T2", ALICE, TOPIC, "", {"topic": "2"}, prev=["PA1"])
            g.add("PA2", ALICE, PL, "", g.levels({ALICE: 100, BOB: 0}), prev=["T2"])
            g.add("PB", BOB, PL, "", g.levels({ALICE: 100, BOB: 50}), prev=["PA1"])
            g.add("T3", BOB, TOPIC, "", {"topic": "3"}, prev=["PB"])
            g.add("MZ1", ZARA, MESSAGE, None, {}, prev=["PA2", "T3"])
            g.add("T4", ALICE, TOPIC, "", {"topic": "4"}, prev=["MZ1"])
            g.add("END", ZARA, MESSAGE, None, {}, prev=["T4", "MZ1"])
            self.check(g, ["T4", "PA2"])

    def test_mainline_sort(self) -> None:
        # T3 cites the newer power levels (PA2) and T4 an older mainline position (PB
        # hangs off PA1), so T4 is applied first and T3 wins although T4 is later.
        for version in V2_VERSIONS:
            g = initial_room(version)
            g.add("T1", ALICE, TOPIC, "", {"topic": "1"}, prev=["START"])
            g.add("PA1", ALICE, PL, "", g.levels({ALICE: 100, BOB: 50}), prev=["T1"])
            g.add("T2", ALICE, TOPIC, "", {"topic": "2"}, prev=["PA1"])
            g.add("PA2", ALICE, PL, "", g.levels({ALICE: 100, BOB: 50}, events={PL: 100}), prev=["T2"])
            g.add("PB", BOB, PL, "", g.levels({ALICE: 100, BOB: 50}), prev=["PA1"])
            g.add("T3", BOB, TOPIC, "", {"topic": "3"}, prev=["PA2"])
            g.add("T4", ALICE, TOPIC, "", {"topic": "4"}, prev=["PB"])
            g.add("END", ZARA, MESSAGE, None, {}, prev=["T3", "T4"])
            self.check(g, ["T3", "PA2"])
            self.assertLess(g.events[g.ids["T3"]].origin_server_ts, g.events[g.ids["T4"]].origin_server_ts)

    def test_ban_race_higher_power_first(self) -> None:
        # Alice (100) bans Bob while Bob (50) bans Charlie: Alice's ban is ordered first,
        # so Bob's then fails (a banned user cannot ban).
        for version in V2_VERSIONS:
            g = initial_room(version)
            g.add("PA", ALICE, PL, "", g.levels({ALICE: 100, BOB: 50}), prev=["START"])
            g.member("BA", BOB, "ban", CHARLIE, prev=["PA"])
            g.member("AB", ALICE, "ban", BOB, prev=["PA"])
            g.add("END", ZARA, MESSAGE, None, {}, prev=["BA", "AB"])
            end = g.state_after["END"]
            self.assertEqual(g.node(end[(MEMBER, BOB)]), "AB")
            self.assertEqual(g.node(end[(MEMBER, CHARLIE)]), "IMC")

    def test_equal_power_earlier_timestamp_first(self) -> None:
        # Two moderators of equal power kick each other: the earlier kick is applied
        # first and the later one fails (its sender is no longer in the room).
        for version in V2_VERSIONS:
            g = initial_room(version)
            g.add("PA", ALICE, PL, "", g.levels({ALICE: 100, BOB: 50, CHARLIE: 50}), prev=["START"])
            g.member("KB", CHARLIE, "leave", BOB, prev=["PA"])
            g.member("KC", BOB, "leave", CHARLIE, prev=["PA"])
            # Equal level: neither may kick the other (target level must be lower).
            g.add("END", ZARA, MESSAGE, None, {}, prev=["KB", "KC"])
            end = g.state_after["END"]
            self.assertEqual(g.node(end[(MEMBER, BOB)]), "IMB")
            self.assertEqual(g.node(end[(MEMBER, CHARLIE)]), "IMC")
            g.add("PA2", ALICE, PL, "", g.levels({ALICE: 100, BOB: 60, CHARLIE: 60, ZARA: 10}), prev=["END"])
            g.member("KZ1", BOB, "leave", ZARA, prev=["PA2"])
            g.member("KZ2", CHARLIE, "ban", ZARA, prev=["PA2"])
            g.add("END2", ALICE, MESSAGE, None, {}, prev=["KZ2", "KZ1"])
            # Both may act; the earlier (KZ1) is applied first, then KZ2 replaces it.
            self.assertEqual(g.node(g.state_after["END2"][(MEMBER, ZARA)]), "KZ2")


class V21Test(unittest.TestCase):
    def _empty_start_room(self, version: RoomVersion) -> RoomGraph:
        g = RoomGraph(version)
        g.member("MA1", ALICE, "join")
        g.add("POWER", ALICE, PL, "", g.levels({ALICE: 100, BOB: 100}))
        g.add("JR1", ALICE, JR, "", {"join_rule": "public"})
        g.member("MB", BOB, "join")
        g.add("JR2", ALICE, JR, "", {"join_rule": "invite"})
        g.member("MA2", ALICE, "leave")
        return g

    def test_empty_starting_state_keeps_join_rules(self) -> None:
        # Another server hands us a fork citing the old join rules after Alice left. v2
        # checks both join rules against the unconflicted state, where their sender has
        # left, and the key is lost; v2.1 starts from nothing and keeps the newer ones.
        for version, expected in ((V10, None), (V11, None), (V12, "JR2")):
            g = self._empty_start_room(version)
            correct = g.state_after["MA2"]
            incorrect = {**correct, (JR, ""): g.ids["JR1"]}
            for sets in ([correct, incorrect], [incorrect, correct]):
                result = g.resolve(sets)
                got = result.get((JR, ""))
                self.assertEqual(g.node(got) if got else None, expected, version.identifier)
                self.assertEqual(result[(MEMBER, ALICE)], g.ids["MA2"])

    def test_conflicted_subgraph_replays_intermediate_power_levels(self) -> None:
        # Evelyn's rename (ME2) cites old power levels (P1) but, through ME1, the newer
        # P3. The state after it is "dodgy": P1. Resolved against a sensible state (P3),
        # v2.1 replays P1 -> P2 -> P3 (P2 is only on the path between two conflicted
        # events) and orders ME2 in P1's epoch, before ME1.
        g = RoomGraph(V12)
        g.member("MA", ALICE, "join")
        g.add("P1", ALICE, PL, "", {"users": {}}, auth=["MA"])
        g.add("JR", ALICE, JR, "", {"join_rule": "public"}, auth=["MA", "P1"])
        g.member("MB", BOB, "join", auth=["P1", "JR"])
        g.member("MC", CHARLIE, "join", auth=["P1", "JR"])
        g.add("P2", ALICE, PL, "", {"users": {BOB: 50}}, auth=["MA", "P1"])
        g.add("P3", BOB, PL, "", {"users": {BOB: 50, CHARLIE: 50}}, auth=["MB", "P2"])
        g.member("ME1", EVELYN, "join", auth=["P3", "JR"])
        g.member("ME2", EVELYN, "join", auth=["P1", "JR", "ME1"])
        g.member("MZ", ZARA, "join", auth=["P3", "JR"])
        dodgy = g.state("CREATE", "MA", "MB", "MC", "ME2", "P1", "JR")
        sensible = g.state("CREATE", "MA", "MB", "MC", "MZ", "P3", "JR")
        expected = g.state("CREATE", "MA", "MB", "MC", "ME1", "MZ", "P3", "JR")
        for sets in ([dodgy, sensible], [sensible, dodgy]):
            self.assertEqual(g.resolve(sets), expected)
        self.assertNotIn(g.ids["CREATE"], g.events[g.ids["P1"]].auth_event_ids)

    def test_v12_needs_its_create_event(self) -> None:
        # The create event is implied by the room id; without it nothing conflicted can
        # be authorised, and only the unconflicted state remains.
        g = initial_room(V12)
        g.add("T1", ALICE, TOPIC, "", {"topic": "1"}, prev=["START"])
        g.add("T2", ALICE, TOPIC, "", {"topic": "2"}, prev=["START"])
        sets = [g.state_after["T1"], g.state_after["T2"]]
        with_create = g.resolve(sets)
        self.assertEqual(with_create[(TOPIC, "")], g.ids["T2"])
        events = {k: v for k, v in g.events.items() if k != g.ids["CREATE"]}
        without = run(resolve_state(g.room_id, V12, sets, MappingEventFetcher(events)))
        self.assertNotIn((TOPIC, ""), without)


class RejectedEventsTest(unittest.TestCase):
    def test_admit_rejected_spec_versus_synapse(self) -> None:
        for version in (V10, V12):
            g = initial_room(version)
            g.add("T1", ALICE, TOPIC, "", {"topic": "1"}, prev=["START"])
            t2 = g.add("T2", ALICE, TOPIC, "", {"topic": "2"}, prev=["START"])
            t2.internal.rejected_reason = "auth"  # e.g. rejected against the state before it
            sets = [g.state_after["T1"], g.state_after["T2"]]
            self.assertEqual(g.resolve(sets)[(TOPIC, "")], g.ids["T2"])
            self.assertEqual(g.resolve(sets, admit_rejected=False)[(TOPIC, "")], g.ids["T1"])

    def test_rejected_auth_events_are_not_used(self) -> None:
        # Only the topic is in conflict. v2.1 starts from an empty state, so Bob's
        # membership comes from his topic's auth events; once that join is marked
        # rejected it may not vouch for him and his topic fails. v2 starts from the
        # unconflicted state, which holds the join, so there Bob's topic still stands.
        for version, expected in ((V10, "T2"), (V12, "T1")):
            g = initial_room(version)
            g.add("PA", ALICE, PL, "", g.levels({ALICE: 100, BOB: 50}), prev=["START"])
            g.add("T1", ALICE, TOPIC, "", {"topic": "1"}, prev=["PA"])
            g.add("T2", BOB, TOPIC, "", {"topic": "2"}, prev=["PA"])
            sets = [g.state_after["T1"], g.state_after["T2"]]
            self.assertEqual(g.node(g.resolve(sets)[(TOPIC, "")]), "T2")
            g.events[g.ids["IMB"]].internal.rejected_reason = "auth"
            self.assertEqual(g.node(g.resolve(sets)[(TOPIC, "")]), expected, version.identifier)

    def test_rejected_power_levels_stay_out_in_synapse_mode(self) -> None:
        # Alice gives Bob 50 (PX), Bob sets a topic on that branch, Alice one on another.
        # Normally PX and then Bob's topic (mainline: the newer epoch) win. With PX marked
        # rejected and admit_rejected=False, PX is not admitted and cannot vouch for Bob
        # as an auth event either, so Bob's topic fails.
        for version in (V10, V12):
            g = initial_room(version)
            g.add("PX", ALICE, PL, "", g.levels({ALICE: 100, BOB: 50}), prev=["START"])
            g.add("TB", BOB, TOPIC, "", {"topic": "bob"}, prev=["PX"])
            g.add("TA", ALICE, TOPIC, "", {"topic": "alice"}, prev=["START"])
            sets = [g.state_after["TB"], g.state_after["TA"]]
            self.assertEqual(g.resolve(sets)[(TOPIC, "")], g.ids["TB"])
            g.events[g.ids["PX"]].internal.rejected_reason = "auth"
            result = g.resolve(sets, admit_rejected=False)
            self.assertEqual(result[(TOPIC, "")], g.ids["TA"])
            self.assertEqual(result[(PL, "")], g.ids["IPOWER"])


def random_room(version: RoomVersion, seed: int, size: int = 45) -> RoomGraph:
    """A random forking room: membership changes, power level changes, topics, join
    rules and messages from five users, each event after one or two recent events."""
    rng = random.Random(seed)
    g = initial_room(version)
    users = [ALICE, BOB, CHARLIE, ZARA, EVELYN]
    recent = ["START"]
    for i in range(size):
        node = f"R{i}"
        prev = list(dict.fromkeys(rng.sample(recent, k=min(len(recent), rng.choice((1, 1, 1, 2, 2, 3))))))
        sender = rng.choice(users)
        kind = rng.random()
        if kind < 0.2:
            g.add(node, sender, TOPIC, "", {"topic": str(i)}, prev=prev)
        elif kind < 0.35:
            levels = {u: rng.choice((0, 0, 50, 75, 100)) for u in rng.sample(users, 3)}
            g.add(node, sender, PL, "", g.levels({ALICE: 100, **levels}), prev=prev)
        elif kind < 0.45:
            g.add(node, sender, JR, "", {"join_rule": rng.choice(("public", "invite"))}, prev=prev)
        elif kind < 0.8:
            membership = rng.choice(("join", "leave", "ban", "invite", "join"))
            target = sender if membership in ("join",) else rng.choice(users)
            g.member(node, sender, membership, target, prev=prev)
        else:
            g.add(node, sender, MESSAGE, None, {"body": str(i)}, prev=prev)
        recent = (recent + [node])[-5:]
        if rng.random() < 0.3:  # sometimes keep an old branch alive
            recent.insert(0, rng.choice(list(g.state_after)))
            recent = recent[-6:]
    return g


class PropertyTest(unittest.TestCase):
    """Resolution is a function of the *set* of state sets: the input order and repeated
    sets do not change it, nor does running it again with a fresh fetcher; resolving a
    state with itself gives it back; unconflicted entries are always kept."""

    def _check_room(self, g: RoomGraph, rng: random.Random) -> int:
        nodes = list(g.state_after)
        distinct = 0
        for _ in range(4):
            picks = rng.sample(nodes[-30:], k=rng.choice((2, 3, 4)))
            sets = [g.state_after[n] for n in picks]
            reference = g.resolve(sets)
            if any(s != reference for s in sets):
                distinct += 1
            for perm in itertools.islice(itertools.permutations(sets), 6):
                self.assertEqual(g.resolve(list(perm)), reference)
            self.assertEqual(g.resolve(sets + [sets[0]]), reference)
            self.assertEqual(g.resolve([reference, dict(reference)]), reference)
            for key, event_id in reference.items():
                self.assertEqual(g.events[event_id].state_pair, key)
            for key in set.intersection(*(set(s) for s in sets)):
                if len({s[key] for s in sets}) == 1:
                    self.assertEqual(reference[key], sets[0][key])
        return distinct

    def test_order_and_repetition_do_not_matter(self) -> None:
        for version in (V2, V10, V12):
            interesting = 0
            for seed in range(12):
                g = random_room(version, seed)
                interesting += self._check_room(g, random.Random(seed))
            self.assertGreater(interesting, 10, version.identifier)  # the test resolves real conflicts


class LargeRoomTest(unittest.TestCase):
    """Not a timing test: a 1,000-member room with a few conflicts must resolve with
    batched fetches, each event asked for at most once."""

    def _room(self, version: RoomVersion) -> tuple[RoomGraph, list[dict[StateKey, Any]]]:
        g = RoomGraph(version)
        g.member("IMA", ALICE, "join")
        g.add("IPOWER", ALICE, PL, "", g.levels({ALICE: 100, BOB: 50}))
        g.add("IJR", ALICE, JR, "", {"join_rule": "public"})
        g.member("IMB", BOB, "join")
        for i in range(1000):
            g.member(f"J{i}", f"@user{i}:example.test", "join")
        g.member("BAN", ALICE, "ban", "@user5:example.test", prev=["J999"])
        g.add("TA", ALICE, TOPIC, "", {"topic": "a"}, prev=["BAN"])
        g.add("PB", ALICE, PL, "", g.levels({ALICE: 100, BOB: 50, "@user7:example.test": 50}), prev=["J999"])
        g.add("TB", BOB, TOPIC, "", {"topic": "b"}, prev=["PB"])
        g.member("LEAVE", "@user9:example.test", "leave", prev=["J999"])
        return g, [g.state_after["TA"], g.state_after["TB"], g.state_after["LEAVE"]]

    def test_thousand_members(self) -> None:
        for version in (V10, V12):
            g, sets = self._room(version)
            fetcher = CountingFetcher(g.events)
            result = run(resolve_state(g.room_id, version, sets, fetcher))
            self.assertEqual(g.node(result[(MEMBER, "@user5:example.test")]), "BAN")
            self.assertEqual(g.node(result[(MEMBER, "@user9:example.test")]), "LEAVE")
            self.assertEqual(g.node(result[(PL, "")]), "PB")
            self.assertEqual(g.node(result[(TOPIC, "")]), "TB")
            self.assertEqual(sum(1 for k in result if k[0] == MEMBER), 1002)
            self.assertEqual(len(fetcher.asked), len(set(fetcher.asked)))
            self.assertLess(fetcher.calls, 30)

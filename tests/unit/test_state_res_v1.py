"""State resolution v1 (room version 1): power levels, join rules and memberships are
replayed by ascending depth until one fails, other keys take the deepest event that
passes; keys missing from some state sets are not conflicts. Also the same order and
repetition properties as v2, on random rooms.

Graphs come from :class:`tests.unit.test_state_res_graph.RoomGraph` (v1 event ids).
"""

from __future__ import annotations

import hashlib
import itertools
import random

from twisted.trial import unittest

from homeserver.events.room_versions import V1, V2
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
    RoomGraph,
    initial_room,
)
from tests.unit.test_state_res_v2 import random_room


def _sha1(event_id: str) -> str:
    return hashlib.sha1(event_id.encode()).hexdigest()


class PowerLevelsAndMembershipTest(unittest.TestCase):
    def test_power_levels_replayed_by_depth(self) -> None:
        g = initial_room(V1)
        g.add("PA", ALICE, PL, "", {"users": {ALICE: 100, BOB: 50}}, prev=["START"])
        g.add("PB", BOB, PL, "", {"users": {ALICE: 100, BOB: 50, CHARLIE: 50}}, prev=["PA"])
        g.add("PC", CHARLIE, PL, "", {"users": {ALICE: 100, BOB: 50, CHARLIE: 50}}, prev=["PA"])
        # PB is allowed once PA (shallower) is applied; Charlie has no power for PC.
        for sets in ([g.state_after["PA"], g.state_after["PB"]], [g.state_after["PB"], g.state_after["PA"]]):
            self.assertEqual(g.node(g.resolve(sets)[(PL, "")]), "PB")
        self.assertEqual(g.node(g.resolve([g.state_after["PA"], g.state_after["PC"]])[(PL, "")]), "PA")

    def test_first_failure_ends_the_chain(self) -> None:
        # P1 (depth 9), P2 by Charlie (10, fails), P3 by Alice (11, would pass): the
        # spec stops at the first failure, so P1 stands.
        g = initial_room(V1)
        g.add("P1", ALICE, PL, "", {"users": {ALICE: 100, BOB: 10}}, prev=["START"])
        g.add("X", ZARA, MESSAGE, None, {}, prev=["START"])
        g.add("P2", CHARLIE, PL, "", {"users": {ALICE: 100, CHARLIE: 100}}, prev=["X"])
        g.add("Y1", ZARA, MESSAGE, None, {}, prev=["START"])
        g.add("Y2", ZARA, MESSAGE, None, {}, prev=["Y1"])
        g.add("P3", ALICE, PL, "", {"users": {ALICE: 100, BOB: 30}}, prev=["Y2"])
        self.assertEqual([g.events[g.ids[n]].depth for n in ("P1", "P2", "P3")], [9, 10, 11])
        sets = [g.state_after["P3"], g.state_after["P1"], g.state_after["P2"]]
        self.assertEqual(g.node(g.resolve(sets)[(PL, "")]), "P1")
        # Without P2 the chain goes on to P3.
        self.assertEqual(g.node(g.resolve(sets[:2])[(PL, "")]), "P3")

    def test_equal_depth_power_levels_descending_sha1(self) -> None:
        # Same depth: sorted by descending sha1, so the larger hash is taken first and the
        # smaller one, allowed on top of it, replaces it.
        g = initial_room(V1)
        g.add("PX", ALICE, PL, "", {"users": {ALICE: 100, BOB: 1}}, prev=["START"])
        g.add("PY", ALICE, PL, "", {"users": {ALICE: 100, BOB: 2}}, prev=["START"])
        winner = min(("PX", "PY"), key=lambda n: _sha1(g.ids[n]))
        self.assertEqual(g.node(g.resolve([g.state_after["PX"], g.state_after["PY"]])[(PL, "")]), winner)

    def test_join_rules_then_members(self) -> None:
        # Evelyn joined and left; then the room becomes invite-only (depth 11) while she
        # rejoins on another branch (11). Join rules are resolved first, and her rejoin
        # is then checked against them (and her leave, the shallower event): it fails.
        g = initial_room(V1)
        g.member("EJ", EVELYN, "join", prev=["START"])
        g.member("EL", EVELYN, "leave", prev=["EJ"])
        g.add("JR", ALICE, JR, "", {"join_rule": "invite"}, prev=["EL"])
        g.member("EJ2", EVELYN, "join", prev=["EL"])
        a, b = g.state_after["JR"], g.state_after["EJ2"]
        for sets in ([a, b], [b, a]):
            result = g.resolve(sets)
            self.assertEqual(g.node(result[(JR, "")]), "JR")
            self.assertEqual(g.node(result[(MEMBER, EVELYN)]), "EL")
        # The other way round: the room opens again (JP) while she rejoins; the resolved
        # join rules (public) let her rejoin stand.
        g.member("EJ3", EVELYN, "join", prev=["JR"])
        g.add("JP", ALICE, JR, "", {"join_rule": "public"}, prev=["JR"])
        result = g.resolve([g.state_after["JP"], g.state_after["EJ3"]])
        self.assertEqual(g.node(result[(JR, "")]), "JP")
        self.assertEqual(g.node(result[(MEMBER, EVELYN)]), "EJ3")
        # Only a shallower state-set event is replayed before a membership: Bob's rejoin
        # after a leave that is in no state set is checked against his older join.
        g.member("LB", BOB, "leave", prev=["JR"])
        g.member("JB", BOB, "join", prev=["LB"])
        result = g.resolve([g.state_after["JR"], g.state_after["JB"]])
        self.assertEqual(g.node(result[(MEMBER, BOB)]), "JB")

    def test_ban_then_rejoin(self) -> None:
        g = initial_room(V1)
        g.member("MB", ALICE, "ban", BOB, prev=["START"])
        g.member("LB", BOB, "leave", prev=["START"])
        g.member("JB", BOB, "join", prev=["LB"])
        result = g.resolve([g.state_after["MB"], g.state_after["JB"]])
        self.assertEqual(g.node(result[(MEMBER, BOB)]), "MB")

    def test_missing_keys_are_not_conflicts(self) -> None:
        # v1's known weakness: Evelyn's join (only in one set) is kept although the room
        # became invite-only concurrently. v2 re-checks it and drops it.
        for version, kept in ((V1, True), (V2, False)):
            g = initial_room(version)
            g.add("JR", ALICE, JR, "", {"join_rule": "invite"}, prev=["START"])
            g.member("ME", EVELYN, "join", prev=["START"])
            result = g.resolve([g.state_after["JR"], g.state_after["ME"]])
            self.assertEqual(g.node(result[(JR, "")]), "JR")
            self.assertEqual((MEMBER, EVELYN) in result, kept, version.identifier)


class OtherEventsTest(unittest.TestCase):
    def test_deepest_allowed_event(self) -> None:
        g = initial_room(V1)
        g.add("T1", ALICE, TOPIC, "", {"topic": "1"}, prev=["START"])
        g.add("M", ZARA, MESSAGE, None, {}, prev=["START"])
        g.add("T2", ALICE, TOPIC, "", {"topic": "2"}, prev=["M"])
        g.add("T3", ZARA, TOPIC, "", {"topic": "3"}, prev=["M"])  # Zara (0) may not
        self.assertEqual(g.node(g.resolve([g.state_after["T1"], g.state_after["T2"]])[(TOPIC, "")]), "T2")
        self.assertEqual(g.node(g.resolve([g.state_after["T1"], g.state_after["T3"]])[(TOPIC, "")]), "T1")

    def test_none_allowed_takes_the_shallowest(self) -> None:
        g = initial_room(V1)
        g.add("T4", ZARA, TOPIC, "", {"topic": "4"}, prev=["START"])
        g.add("M", ZARA, MESSAGE, None, {}, prev=["START"])
        g.add("T5", ZARA, TOPIC, "", {"topic": "5"}, prev=["M"])
        self.assertEqual(g.node(g.resolve([g.state_after["T4"], g.state_after["T5"]])[(TOPIC, "")]), "T4")

    def test_equal_depth_lowest_sha1(self) -> None:
        g = initial_room(V1)
        g.add("TA", ALICE, TOPIC, "", {"topic": "a"}, prev=["START"])
        g.add("TB", ALICE, TOPIC, "", {"topic": "b"}, prev=["START"])
        winner = min(("TA", "TB"), key=lambda n: _sha1(g.ids[n]))
        for sets in ([g.state_after["TA"], g.state_after["TB"]], [g.state_after["TB"], g.state_after["TA"]]):
            self.assertEqual(g.node(g.resolve(sets)[(TOPIC, "")]), winner)

    def test_rejected_events_in_synapse_mode(self) -> None:
        g = initial_room(V1)
        g.add("T1", ALICE, TOPIC, "", {"topic": "1"}, prev=["START"])
        g.add("M", ZARA, MESSAGE, None, {}, prev=["START"])
        g.add("T2", ALICE, TOPIC, "", {"topic": "2"}, prev=["M"])
        g.events[g.ids["T2"]].internal.rejected_reason = "auth"
        sets = [g.state_after["T1"], g.state_after["T2"]]
        self.assertEqual(g.node(g.resolve(sets)[(TOPIC, "")]), "T2")
        self.assertEqual(g.node(g.resolve(sets, admit_rejected=False)[(TOPIC, "")]), "T1")

    def test_unknown_events_are_left_out(self) -> None:
        g = initial_room(V1)
        g.add("T1", ALICE, TOPIC, "", {"topic": "1"}, prev=["START"])
        unknown = {**g.state_after["T1"], (TOPIC, ""): "$nowhere:example.test"}
        self.assertEqual(g.node(g.resolve([g.state_after["T1"], unknown])[(TOPIC, "")]), "T1")
        both_unknown = {**g.state_after["T1"], (TOPIC, ""): "$elsewhere:example.test"}
        self.assertNotIn((TOPIC, ""), g.resolve([both_unknown, unknown]))


class PropertyTest(unittest.TestCase):
    def test_order_and_repetition_do_not_matter(self) -> None:
        conflicts = 0
        for seed in range(12):
            g: RoomGraph = random_room(V1, seed)
            rng = random.Random(seed)
            nodes = list(g.state_after)[-30:]
            for _ in range(4):
                sets = [g.state_after[n] for n in rng.sample(nodes, k=rng.choice((2, 3, 4)))]
                reference = g.resolve(sets)
                conflicts += any(s != reference for s in sets)
                for perm in itertools.islice(itertools.permutations(sets), 6):
                    self.assertEqual(g.resolve(list(perm)), reference)
                self.assertEqual(g.resolve(sets + sets[:1]), reference)
                self.assertEqual(g.resolve([reference, dict(reference)]), reference)
                # v1 keeps every key of every set, with an event of that set for it.
                self.assertEqual(set(reference), set().union(*sets))
                for key, event_id in reference.items():
                    self.assertIn(event_id, {s.get(key) for s in sets})
        self.assertGreater(conflicts, 10)

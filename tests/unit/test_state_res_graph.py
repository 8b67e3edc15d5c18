"""State resolution building blocks (homeserver.events.state_res.common and the parts of
v2): Kahn's lexicographic sort, the conflicted/unconflicted split, the auth difference,
the v2.1 conflicted subgraph, the sender power level and mainline ordering, batching.

Also home of :class:`RoomGraph`, the event-graph builder the v1/v2 tests share: events
are named by short node names, get increasing timestamps in the order they are added,
cite the auth events their room version selects from the state before them, and the
state before an event with several prev events is the resolution of theirs.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Coroutine, Iterable, Mapping
from typing import Any, TypeVar

from twisted.trial import unittest

from homeserver.events.auth import auth_types_for_event
from homeserver.events.model import Event, StateKey
from homeserver.events.room_versions import V1, V2, V10, V11, V12, EventFormat, RoomVersion
from homeserver.events.state_res import MappingEventFetcher, lexicographical_topological_sort, resolve_state
from homeserver.events.state_res.common import EventCache, auth_closure
from homeserver.events.state_res.v2 import (
    auth_difference,
    conflicted_subgraph,
    mainline_order,
    sender_power_level,
    separate,
)

ALICE = "@alice:example.test"  # the creator
BOB = "@bob:example.test"
CHARLIE = "@charlie:example.test"
EVELYN = "@evelyn:example.test"
ZARA = "@zara:example.test"

CREATE = "m.room.create"
MEMBER = "m.room.member"
PL = "m.room.power_levels"
JR = "m.room.join_rules"
TOPIC = "m.room.topic"
MESSAGE = "m.room.message"

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never really waits (in-memory fetchers) to completion."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError("the coroutine waited on something")


class CountingFetcher(MappingEventFetcher):
    """Counts calls and ids asked for, to check that walks are batched."""

    def __init__(self, events: Mapping[str, Event]) -> None:
        super().__init__(events)
        self.calls = 0
        self.asked: list[str] = []

    async def get_events(self, event_ids: Collection[str]) -> Mapping[str, Event]:
        self.calls += 1
        self.asked.extend(event_ids)
        return await super().get_events(event_ids)


class RoomGraph:
    """A room's event graph built by hand (see the module docstring)."""

    def __init__(self, version: RoomVersion, creator: str = ALICE, **create_content: Any) -> None:
        self.version = version
        self.creator = creator
        self.events: dict[str, Event] = {}
        self.ids: dict[str, str] = {}
        self.state_after: dict[str, dict[StateKey, str]] = {}
        self.ts = 0
        create_id = self.event_id("CREATE")
        self.room_id = "!" + create_id[1:] if version.room_id_is_create_hash else "!room:example.test"
        content: dict[str, Any] = {"room_version": version.identifier, **create_content}
        if not version.implicit_room_creator:
            content["creator"] = creator
        self.add("CREATE", creator, CREATE, "", content, prev=[])

    def event_id(self, node: str) -> str:
        if self.version.event_format == EventFormat.V1:
            return f"${node}:example.test"
        return f"${node}"

    def levels(self, users: Mapping[str, int], **rest: Any) -> dict[str, Any]:
        """Power levels content; v12 creators cannot be listed (their power is infinite)."""
        if self.version.creators_have_infinite_power:
            users = {u: level for u, level in users.items() if u != self.creator}
        return {"users": dict(users), **rest}

    def add(self, node: str, sender: str, etype: str, state_key: str | None = None,
            content: dict[str, Any] | None = None, prev: Iterable[str] | None = None,
            auth: Iterable[str] | None = None, ts: int | None = None) -> Event:
        """Add an event after ``prev`` (node names; default: the last event added).
        ``auth`` (node names) overrides the auth events the room version would select."""
        assert node not in self.ids, node
        prev_nodes = list(prev) if prev is not None else [list(self.ids)[-1]]
        state_before = self.resolve([self.state_after[p] for p in prev_nodes]) if prev_nodes else {}
        self.ts += 1
        event_id = self.event_id(node)
        pdu: dict[str, Any] = {
            "type": etype, "sender": sender, "content": content if content is not None else {},
            "prev_events": [self.ids[p] for p in prev_nodes], "auth_events": [],
            "depth": 1 + max((self.events[self.ids[p]].depth for p in prev_nodes), default=0),
            "origin_server_ts": self.ts if ts is None else ts,
        }
        if not (etype == CREATE and self.version.room_id_is_create_hash):
            pdu["room_id"] = self.room_id
        if state_key is not None:
            pdu["state_key"] = state_key
        event = Event(event_id, pdu, self.version)
        if etype == CREATE:
            event.internal.room_id = self.room_id
        if auth is not None:
            pdu["auth_events"] = [self.ids[a] for a in auth]
        else:
            selected = auth_types_for_event(event)
            pdu["auth_events"] = sorted(state_before[k] for k in selected if k in state_before)
        self.ids[node] = event_id
        self.events[event_id] = event
        after = dict(state_before)
        if state_key is not None:
            after[(etype, state_key)] = event_id
        self.state_after[node] = after
        return event

    def member(self, node: str, sender: str, membership: str, target: str | None = None, **kw: Any) -> Event:
        return self.add(node, sender, MEMBER, target or sender, {"membership": membership}, **kw)

    def state(self, *nodes: str) -> dict[StateKey, str]:
        """A state map holding the named events."""
        return {self.events[self.ids[n]].state_pair: self.ids[n] for n in nodes}

    def node(self, event_id: str) -> str:
        return {v: k for k, v in self.ids.items()}[event_id]

    def resolve(self, state_sets: list[dict[StateKey, str]], **kw: Any) -> dict[StateKey, str]:
        if len(state_sets) == 1:
            return dict(state_sets[0])
        fetcher = MappingEventFetcher(self.events)
        return run(resolve_state(self.room_id, self.version, state_sets, fetcher, **kw))

    def cache(self, fetcher: Any = None) -> EventCache:
        return EventCache(self.room_id, self.version, fetcher or MappingEventFetcher(self.events))


def initial_room(version: RoomVersion) -> RoomGraph:
    """Alice creates a public room (power 100, v12: a creator) that Bob, Charlie and Zara
    join; START is a message after all that."""
    g = RoomGraph(version)
    g.member("IMA", ALICE, "join")
    g.add("IPOWER", ALICE, PL, "", g.levels({ALICE: 100}))
    g.add("IJR", ALICE, JR, "", {"join_rule": "public"})
    for node, user in (("IMB", BOB), ("IMC", CHARLIE), ("IMZ", ZARA)):
        g.member(node, user, "join")
    g.add("START", ZARA, MESSAGE, None, {"body": "start"})
    return g


class LexicographicalSortTest(unittest.TestCase):
    def test_auth_events_first_then_key(self) -> None:
        graph = {"l": {"o"}, "m": {"n", "o"}, "n": {"o"}, "o": set(), "p": {"o"}}
        self.assertEqual(lexicographical_topological_sort(graph, key=lambda x: x), ["o", "l", "n", "m", "p"])

    def test_key_decides_among_ready_nodes(self) -> None:
        graph = {"a": set(), "b": set(), "c": {"a"}}
        order = lexicographical_topological_sort(graph, key=lambda x: {"a": 3, "b": 2, "c": 1}[x])
        self.assertEqual(order, ["b", "a", "c"])

    def test_edges_outside_graph_ignored_and_input_untouched(self) -> None:
        graph = {"x": {"outside"}, "y": {"x"}}
        self.assertEqual(lexicographical_topological_sort(graph, key=lambda x: x), ["x", "y"])
        self.assertEqual(graph, {"x": {"outside"}, "y": {"x"}})

    def test_cycle_still_deterministic(self) -> None:
        graph = {"a": {"b"}, "b": {"a"}, "c": set()}
        self.assertEqual(lexicographical_topological_sort(graph, key=lambda x: x), ["c", "a", "b"])

    def test_long_chain_is_not_recursive(self) -> None:
        graph = {str(i): ({str(i - 1)} if i else set()) for i in range(20000)}
        order = lexicographical_topological_sort(graph, key=lambda x: x)
        self.assertEqual(order, [str(i) for i in range(20000)])


class SeparateTest(unittest.TestCase):
    def test_missing_key_is_conflicted_in_v2(self) -> None:
        a = {("t", ""): "$1", ("u", ""): "$2"}
        b = {("t", ""): "$1", ("u", ""): "$3", ("v", ""): "$4"}
        unconflicted, conflicted = separate([a, b])
        self.assertEqual(unconflicted, {("t", ""): "$1"})
        self.assertEqual(conflicted, {("u", ""): {"$2", "$3"}, ("v", ""): {"$4"}})


class AuthDifferenceTest(unittest.TestCase):
    def _chain(self) -> RoomGraph:
        # A <- B <- C <- D: each cites the previous one only.
        g = RoomGraph(V10)
        g.add("A", ALICE, "x.a", "", auth=[])
        g.add("B", ALICE, "x.b", "", auth=["A"])
        g.add("C", ALICE, "x.c", "", auth=["B"])
        g.add("D", ALICE, "x.d", "", auth=["C"])
        return g

    def _diff(self, g: RoomGraph, sets: list[dict[StateKey, str]]) -> set[str]:
        unconflicted, conflicted = separate(sets)
        diff = run(auth_difference(g.cache(), sets, unconflicted, conflicted))
        return {g.node(e) for e in diff}

    def test_state_events_count_as_part_of_their_chain(self) -> None:
        g = self._chain()
        # {A, B} against {C}: C's chain holds B and A, so only C differs.
        self.assertEqual(self._diff(g, [g.state("A", "B"), g.state("C")]), {"C"})
        self.assertEqual(self._diff(g, [g.state("A", "B"), g.state("D")]), {"C", "D"})

    def test_unconflicted_chain_is_common(self) -> None:
        g = self._chain()
        # D is in both sets, so its whole chain is common: only the X/Y events differ.
        g.add("X", BOB, "x.x", "", auth=["A"])
        g.add("Y", BOB, "x.x", "", auth=["B"])
        self.assertEqual(self._diff(g, [g.state("D", "X"), g.state("D", "Y")]), {"X", "Y"})

    def test_matches_naive_definition_on_a_real_room(self) -> None:
        g = initial_room(V10)
        g.add("T1", ALICE, TOPIC, "", {"topic": "1"}, prev=["START"])
        g.add("PA", ALICE, PL, "", g.levels({ALICE: 100, BOB: 50}), prev=["T1"])
        g.member("MB", ALICE, "ban", BOB, prev=["PA"])
        g.add("T2", BOB, TOPIC, "", {"topic": "2"}, prev=["PA"])
        sets = [g.state_after["MB"], g.state_after["T2"], g.state_after["START"]]
        cache = g.cache()
        chains = [run(auth_closure(cache, s.values())) for s in sets]
        naive = set().union(*chains) - set.intersection(*chains)
        unconflicted, conflicted = separate(sets)
        self.assertEqual(run(auth_difference(g.cache(), sets, unconflicted, conflicted)), naive)
        self.assertTrue(naive)


class ConflictedSubgraphTest(unittest.TestCase):
    def test_paths_between_conflicted_events(self) -> None:
        # A <- B <- C <- D, and E <- B. Conflicted: D and B. Subgraph: B, C, D (not A, E).
        g = RoomGraph(V12)
        g.add("A", ALICE, "x.a", "", auth=[])
        g.add("B", ALICE, "x.b", "", auth=["A"])
        g.add("C", ALICE, "x.c", "", auth=["B"])
        g.add("D", ALICE, "x.d", "", auth=["C"])
        g.add("E", ALICE, "x.e", "", auth=["B"])
        sub = run(conflicted_subgraph(g.cache(), {g.ids["D"], g.ids["B"]}))
        self.assertEqual({g.node(e) for e in sub}, {"B", "C", "D"})

    def test_diamond_and_isolated(self) -> None:
        # D cites B and C, both cite A; A and D conflicted: everything between is in.
        g = RoomGraph(V12)
        g.add("A", ALICE, "x.a", "", auth=[])
        g.add("B", ALICE, "x.b", "", auth=["A"])
        g.add("C", ALICE, "x.c", "", auth=["A"])
        g.add("D", ALICE, "x.d", "", auth=["B", "C"])
        g.add("Z", ALICE, "x.z", "", auth=[])
        sub = run(conflicted_subgraph(g.cache(), {g.ids["D"], g.ids["A"], g.ids["Z"]}))
        self.assertEqual({g.node(e) for e in sub}, {"A", "B", "C", "D", "Z"})

    def test_deep_chain_is_not_recursive(self) -> None:
        g = RoomGraph(V12)
        g.add("N0", ALICE, "x.n", "0", auth=[])
        for i in range(1, 3000):
            g.add(f"N{i}", ALICE, "x.n", str(i), auth=[f"N{i - 1}"])
        sub = run(conflicted_subgraph(g.cache(), {g.ids["N2999"], g.ids["N10"]}))
        self.assertEqual(len(sub), 2990)


class PowerAndMainlineTest(unittest.TestCase):
    def test_sender_power_level_from_auth_events(self) -> None:
        for version, creator_level in ((V10, 100), (V11, 100), (V12, math.inf)):
            g = initial_room(version)
            g.add("PA", ALICE, PL, "", g.levels({ALICE: 100, BOB: 50}), prev=["START"])
            t_bob = g.add("TB", BOB, TOPIC, "", {}, prev=["PA"])
            t_charlie = g.add("TC", CHARLIE, TOPIC, "", {}, prev=["PA"])
            t_alice = g.add("TA", ALICE, TOPIC, "", {}, prev=["PA"])
            cache = g.cache()
            run(cache.fetch(list(g.events)))
            self.assertEqual(sender_power_level(cache, t_bob), 50)
            self.assertEqual(sender_power_level(cache, t_charlie), 0)
            self.assertEqual(sender_power_level(cache, t_alice), 100 if version is not V12 else math.inf)
            # Before any power levels event the creator has 100 (v12: infinite), others 0.
            self.assertEqual(sender_power_level(cache, g.events[g.ids["IMA"]]), creator_level)
            self.assertEqual(sender_power_level(cache, g.events[g.ids["CREATE"]]), 0)

    def test_string_levels_in_old_versions(self) -> None:
        g = initial_room(V2)
        g.add("PA", ALICE, PL, "", {"users": {ALICE: 100, BOB: " 40 "}}, prev=["START"])
        t_bob = g.add("TB", BOB, TOPIC, "", {}, prev=["PA"])
        cache = g.cache()
        run(cache.fetch(list(g.events)))
        self.assertEqual(sender_power_level(cache, t_bob), 40)

    def test_mainline_positions(self) -> None:
        g = initial_room(V10)
        g.add("P1", ALICE, PL, "", g.levels({ALICE: 100, BOB: 50}), prev=["START"])
        g.add("P2", ALICE, PL, "", g.levels({ALICE: 100, BOB: 51}), prev=["P1"])
        g.add("P3", ALICE, PL, "", g.levels({ALICE: 100, BOB: 52}), prev=["P2"])
        g.add("Q", BOB, PL, "", g.levels({ALICE: 100, BOB: 51, CHARLIE: 1}), prev=["P2"])
        g.add("OLD", ALICE, TOPIC, "", {}, prev=["IPOWER"], ts=90)   # cites IPOWER
        g.add("MID", ALICE, TOPIC, "", {}, prev=["P1"], ts=80)       # cites P1
        g.add("OFF", ALICE, TOPIC, "", {}, prev=["Q"], ts=70)        # cites Q, off mainline -> P2
        g.add("NEW", ALICE, TOPIC, "", {}, prev=["P3"], ts=60)       # cites P3
        g.add("NONE", ALICE, TOPIC, "", {}, auth=["CREATE", "IMA"], prev=["START"], ts=99)
        g.add("NEW2", BOB, TOPIC, "", {}, prev=["P3"], ts=60)
        names = ["NEW", "OFF", "MID", "OLD", "NONE", "NEW2"]
        ordered = run(mainline_order(g.cache(), [g.ids[n] for n in names], g.ids["P3"]))
        self.assertEqual([g.node(e) for e in ordered], ["NONE", "OLD", "MID", "OFF", "NEW", "NEW2"])

    def test_mainline_without_power_levels(self) -> None:
        g = initial_room(V10)
        g.add("A", ALICE, TOPIC, "", {}, prev=["START"], ts=5)
        g.add("B", ALICE, TOPIC, "", {}, prev=["START"], ts=3)
        ordered = run(mainline_order(g.cache(), [g.ids["A"], g.ids["B"]], None))
        self.assertEqual([g.node(e) for e in ordered], ["B", "A"])


class FetchingTest(unittest.TestCase):
    def test_walks_are_batched_and_ids_asked_once(self) -> None:
        g = initial_room(V10)
        for i in range(50):
            g.member(f"J{i}", f"@u{i}:example.test", "join", prev=["START"] if i == 0 else None)
        g.add("T1", ALICE, TOPIC, "", {"topic": "a"}, prev=["J49"])
        g.add("T2", BOB, TOPIC, "", {"topic": "b"}, prev=["J49"])
        g.add("PB", ALICE, PL, "", g.levels({ALICE: 100, BOB: 50}), prev=["J49"])
        fetcher = CountingFetcher(g.events)
        sets = [g.state_after["T1"], g.state_after["T2"], g.state_after["PB"]]
        run(resolve_state(g.room_id, V10, sets, fetcher))
        self.assertEqual(len(fetcher.asked), len(set(fetcher.asked)))
        # Roughly one call per auth-graph level and phase, not one per event.
        self.assertLess(fetcher.calls, 40)

    def test_events_of_another_room_are_ignored(self) -> None:
        g = initial_room(V10)
        other = initial_room(V10)
        other.room_id = "!other:example.test"
        g.add("T1", ALICE, TOPIC, "", {"topic": "a"}, prev=["START"])
        stray = other.add("T2", ALICE, TOPIC, "", {"topic": "b"}, prev=["START"])
        stray.pdu["room_id"] = "!other:example.test"
        events = dict(g.events)
        events[stray.event_id + "x"] = stray
        sets = [g.state_after["T1"], {**g.state_after["T1"], (TOPIC, ""): stray.event_id + "x"}]
        result = run(resolve_state(g.room_id, V10, sets, MappingEventFetcher(events)))
        self.assertEqual(result[(TOPIC, "")], g.ids["T1"])

    def test_pause_is_awaited_on_large_resolutions(self) -> None:
        g = initial_room(V10)
        for i in range(300):
            g.member(f"J{i}", f"@u{i}:example.test", "join")
        g.add("T1", ALICE, TOPIC, "", {"topic": "a"}, prev=["J299"])
        g.add("T2", ALICE, TOPIC, "", {"topic": "b"}, prev=["J299"])
        pauses: list[int] = []

        async def pause() -> None:
            pauses.append(1)

        sets = [g.state_after["T1"], g.state_after["T2"]]
        run(resolve_state(g.room_id, V10, sets, MappingEventFetcher(g.events), pause=pause))
        self.assertTrue(pauses)

    def test_known_events_are_used_before_the_fetcher(self) -> None:
        # Events being persisted are handed over in known_events; the fetcher has only
        # the older ones and is never asked for the known ones.
        g = initial_room(V12)
        g.add("T1", ALICE, TOPIC, "", {"topic": "1"}, prev=["START"])
        g.add("T2", ALICE, TOPIC, "", {"topic": "2"}, prev=["START"])
        new = {g.ids[n]: g.events[g.ids[n]] for n in ("T1", "T2")}
        fetcher = CountingFetcher({k: v for k, v in g.events.items() if k not in new})
        sets = [g.state_after["T1"], g.state_after["T2"]]
        result = run(resolve_state(g.room_id, V12, sets, fetcher, known_events=new))
        self.assertEqual(result[(TOPIC, "")], g.ids["T2"])
        self.assertFalse(set(new) & set(fetcher.asked))
        without = run(resolve_state(g.room_id, V12, sets, CountingFetcher(fetcher._events)))
        self.assertNotIn((TOPIC, ""), without)

    def test_trivial_inputs(self) -> None:
        g = initial_room(V1)
        self.assertEqual(run(resolve_state(g.room_id, V1, [], MappingEventFetcher({}))), {})
        start = g.state_after["START"]
        self.assertEqual(run(resolve_state(g.room_id, V1, [start], MappingEventFetcher({}))), start)
        for version in (V1, V10, V12):
            g = initial_room(version)
            start = g.state_after["START"]
            self.assertEqual(g.resolve([start, dict(start)]), start)

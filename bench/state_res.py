"""State resolution cost on a large room (pure code, no server): a public room with
``--members`` joined users, then three branches with a few conflicts each (bans and a topic
by the creator; a power levels change, leaves and a topic by a moderator; a topic), resolved
with room versions 10 (v2) and 12 (v2.1). Prints wall time per resolution, the fetcher calls
and the ids fetched (each at most once per resolution).

    .venv/bin/python bench/state_res.py [--members 10000] [--conflicts 20] [--repeat 3]
        [--versions 10,12]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from homeserver.events.auth import auth_types_for_event  # noqa: E402
from homeserver.events.model import Event, StateKey  # noqa: E402
from homeserver.events.room_versions import RoomVersion, get_room_version  # noqa: E402
from homeserver.events.state_res import MappingEventFetcher, resolve_state  # noqa: E402

ALICE, BOB = "@alice:bench.test", "@bob:bench.test"


class CountingFetcher(MappingEventFetcher):
    def __init__(self, events: Mapping[str, Event]) -> None:
        super().__init__(events)
        self.calls = 0
        self.ids = 0

    async def get_events(self, event_ids: Collection[str]) -> Mapping[str, Event]:
        self.calls += 1
        self.ids += len(event_ids)
        return await super().get_events(event_ids)


class Builder:
    """A room built event by event, each citing the auth events its version selects from
    the (linear) state before it; branches copy the state map."""

    def __init__(self, version: RoomVersion) -> None:
        self.version = version
        self.events: dict[str, Event] = {}
        self.n = 0
        self.room_id = "!create" if version.room_id_is_create_hash else "!room:bench.test"
        content: dict[str, Any] = {"room_version": version.identifier}
        if not version.implicit_room_creator:
            content["creator"] = ALICE
        self.state: dict[StateKey, str] = {}
        self.last = ""
        self.create = self.add(ALICE, "m.room.create", "", content, event_id="$create")

    def add(self, sender: str, etype: str, state_key: str, content: dict[str, Any],
            state: dict[StateKey, str] | None = None, event_id: str | None = None) -> Event:
        state = self.state if state is None else state
        self.n += 1
        pdu: dict[str, Any] = {"type": etype, "sender": sender, "state_key": state_key, "content": content,
                               "prev_events": [self.last] if self.last else [], "auth_events": [],
                               "depth": self.n, "origin_server_ts": self.n}
        if not (etype == "m.room.create" and self.version.room_id_is_create_hash):
            pdu["room_id"] = self.room_id
        event = Event(event_id or f"$e{self.n}", pdu, self.version)
        event.internal.room_id = self.room_id
        pdu["auth_events"] = [state[k] for k in auth_types_for_event(event) if k in state]
        self.events[event.event_id] = event
        state[(etype, state_key)] = event.event_id
        self.last = event.event_id
        return event


def build(version: RoomVersion, members: int, conflicts: int) -> tuple[Builder, list[dict[StateKey, str]]]:
    b = Builder(version)
    b.add(ALICE, "m.room.member", ALICE, {"membership": "join"})
    users = {BOB: 50} if version.creators_have_infinite_power else {ALICE: 100, BOB: 50}
    b.add(ALICE, "m.room.power_levels", "", {"users": users})
    b.add(ALICE, "m.room.join_rules", "", {"join_rule": "public"})
    b.add(BOB, "m.room.member", BOB, {"membership": "join"})
    for i in range(members):
        user = f"@u{i}:bench.test"
        b.add(user, "m.room.member", user, {"membership": "join"})
    a, m, c = dict(b.state), dict(b.state), dict(b.state)
    for i in range(conflicts):
        b.add(ALICE, "m.room.member", f"@u{i}:bench.test", {"membership": "ban"}, state=a)
    b.add(ALICE, "m.room.topic", "", {"topic": "a"}, state=a)
    b.add(ALICE, "m.room.power_levels", "", {"users": {**users, "@u1:bench.test": 10}}, state=m)
    for i in range(conflicts, 2 * conflicts):
        user = f"@u{i}:bench.test"
        b.add(user, "m.room.member", user, {"membership": "leave"}, state=m)
    b.add(BOB, "m.room.topic", "", {"topic": "m"}, state=m)
    b.add(BOB, "m.room.topic", "", {"topic": "c"}, state=c)
    return b, [a, m, c]


def run_coroutine(coro: Any) -> Any:
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the resolution waited on something")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=10000)
    parser.add_argument("--conflicts", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--versions", default="10,12")
    args = parser.parse_args()
    print(f"| room version | members | conflicted keys | best of {args.repeat} (ms) "
          "| fetch calls | ids fetched |")
    print("|---|---|---|---|---|---|")
    for identifier in args.versions.split(","):
        version = get_room_version(identifier.strip())
        if version is None:
            raise SystemExit(f"unknown room version {identifier}")
        b, sets = build(version, args.members, args.conflicts)
        conflicted = {k for k in set().union(*sets) if len({s.get(k) for s in sets}) > 1}
        best, fetcher = float("inf"), CountingFetcher(b.events)
        for _ in range(args.repeat):
            fetcher = CountingFetcher(b.events)
            started = time.perf_counter()
            run_coroutine(resolve_state(b.room_id, version, sets, fetcher))
            best = min(best, time.perf_counter() - started)
        print(f"| {identifier} | {args.members} | {len(conflicted)} | {best * 1000:.1f} | "
              f"{fetcher.calls} | {fetcher.ids} |")


if __name__ == "__main__":
    main()

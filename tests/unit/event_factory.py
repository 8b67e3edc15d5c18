"""A tiny hand-built room for auth-rule tests: events with arbitrary ids, no hashing,
placeholder signatures naming the signing servers. Reusable by state resolution tests."""

from __future__ import annotations

from typing import Any

from homeserver.events.auth import check_auth_rules
from homeserver.events.model import Event, StateKey
from homeserver.events.room_versions import V10, RoomVersion

ALICE = "@alice:a.test"  # the creator
BOB = "@bob:a.test"
CAROL = "@carol:b.test"
DAVE = "@dave:b.test"
MOD = "@mod:a.test"

PL = ("m.room.power_levels", "")
CREATE = ("m.room.create", "")


def _domain(user_id: str) -> str:
    return user_id.partition(":")[2]


class Room:
    """A room's state built event by event; ``send`` authorises then applies."""

    def __init__(self, version: RoomVersion = V10, creator: str = ALICE, **create_content: Any) -> None:
        self.version = version
        self.n = 0
        content: dict[str, Any] = {"room_version": version.identifier, **create_content}
        if not version.implicit_room_creator:
            content.setdefault("creator", creator)
        pdu: dict[str, Any] = {
            "type": "m.room.create", "state_key": "", "sender": creator, "content": content,
            "prev_events": [], "auth_events": [], "depth": 1, "origin_server_ts": 1,
            "signatures": {_domain(creator): {"ed25519:k": "sig"}},
        }
        if version.room_id_is_create_hash:
            self.room_id = "!create"
        else:
            self.room_id = "!room:" + _domain(creator)
            pdu["room_id"] = self.room_id
        self.create = Event("$create", pdu, version)
        self.create.internal.room_id = self.room_id
        self.state: dict[StateKey, Event] = {CREATE: self.create}
        self.last = self.create.event_id

    def event(
        self, etype: str, sender: str, content: dict[str, Any] | None = None, state_key: str | None = None,
        prev: list[str] | None = None, signers: set[str] | None = None, **top: Any,
    ) -> Event:
        self.n += 1
        pdu: dict[str, Any] = {
            "type": etype, "sender": sender, "content": content if content is not None else {},
            "room_id": self.room_id, "prev_events": prev if prev is not None else [self.last],
            "auth_events": [], "depth": self.n + 1, "origin_server_ts": self.n + 1,
            "signatures": {d: {"ed25519:k": "sig"} for d in (signers or {_domain(sender)})},
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        pdu.update(top)
        return Event(f"$e{self.n}", pdu, self.version)

    def member(self, sender: str, membership: str, target: str | None = None, **content: Any) -> Event:
        signers = content.pop("_signers", None)
        return self.event("m.room.member", sender, {"membership": membership, **content},
                          state_key=target or sender, signers=signers)

    def power_levels(self, sender: str = ALICE, **content: Any) -> Event:
        return self.event("m.room.power_levels", sender, content, state_key="")

    def check(self, event: Event) -> None:
        check_auth_rules(event, self.state, self.create)

    def apply(self, event: Event) -> Event:
        if event.is_state():
            self.state[event.state_pair] = event
        self.last = event.event_id
        return event

    def send(self, event: Event) -> Event:
        self.check(event)
        return self.apply(event)

    def force(self, user_id: str, membership: str) -> None:
        """Put a membership into state without authorising it (test setup)."""
        self.apply(self.member(user_id, membership))


def make_room(
    version: RoomVersion = V10, join_rule: str | None = "public", users: dict[str, int] | None = None,
    with_power_levels: bool = True, **pl: Any,
) -> Room:
    room = Room(version)
    room.send(room.member(ALICE, "join", prev=[room.create.event_id]))
    if with_power_levels:
        levels = {} if version.creators_have_infinite_power else {ALICE: 100}
        levels.update(users or {})
        room.send(room.power_levels(users=levels, **pl))
    if join_rule is not None:
        room.send(room.event("m.room.join_rules", ALICE, {"join_rule": join_rule}, state_key=""))
    return room

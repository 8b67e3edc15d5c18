"""The event model: a PDU as JSON, with typed accessors.

An :class:`Event` wraps the full federation-format dict (what is hashed and signed).
``internal`` carries server-side facts that are not part of the PDU (stream
ordering, the txn id for the sender's echo, whether it was rejected).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from homeserver.events.room_versions import RoomVersion

JsonDict = dict[str, Any]
StateKey = tuple[str, str]  # (event type, state key)


@dataclass
class InternalMetadata:
    stream_ordering: int | None = None
    txn_id: str | None = None
    device_id: str | None = None
    rejected_reason: str | None = None
    outlier: bool = False
    # The room of a v12 m.room.create event, whose PDU has no room_id.
    room_id: str | None = None


@dataclass
class Event:
    """A room event. ``pdu`` is the signed federation JSON; ``event_id`` is kept apart.

    From v3 the id is derived from the PDU (its reference hash), which then has no
    ``event_id`` key. In v1/v2 the PDU carries its own ``event_id`` (hashed and signed
    with the rest), and ``event_id`` here is that same value.
    """

    event_id: str
    pdu: JsonDict
    room_version: RoomVersion
    internal: InternalMetadata = field(default_factory=InternalMetadata)

    @property
    def room_id(self) -> str:
        return str(self.pdu.get("room_id") or self.internal.room_id or "")

    @property
    def type(self) -> str:
        return str(self.pdu["type"])

    @property
    def sender(self) -> str:
        return str(self.pdu["sender"])

    @property
    def state_key(self) -> str | None:
        sk = self.pdu.get("state_key")
        return sk if isinstance(sk, str) else None

    def is_state(self) -> bool:
        return "state_key" in self.pdu

    @property
    def state_pair(self) -> StateKey:
        """(type, state_key); only for state events."""
        assert self.state_key is not None
        return (self.type, self.state_key)

    @property
    def content(self) -> JsonDict:
        c = self.pdu.get("content")
        return c if isinstance(c, dict) else {}

    @property
    def prev_event_ids(self) -> list[str]:
        """The cited prev event ids, in either format (v1/v2 ``[id, hashes]`` pairs)."""
        return _reference_ids(self.pdu.get("prev_events"))

    @property
    def auth_event_ids(self) -> list[str]:
        """The cited auth event ids, in either format."""
        return _reference_ids(self.pdu.get("auth_events"))

    @property
    def depth(self) -> int:
        return int(self.pdu.get("depth", 0))

    @property
    def origin_server_ts(self) -> int:
        return int(self.pdu.get("origin_server_ts", 0))

    @property
    def redacts(self) -> str | None:
        """The redacted event id: top-level in v10, in content from v11. Only a
        message event redacts: a state event of this type is just state."""
        if self.type != "m.room.redaction" or self.is_state():
            return None
        value = self.content.get("redacts") if self.room_version.redaction_v11 else None
        if value is None:
            value = self.pdu.get("redacts")
        return value if isinstance(value, str) else None

    @property
    def membership(self) -> str | None:
        m = self.content.get("membership")
        return m if isinstance(m, str) else None


def _reference_ids(refs: Any) -> list[str]:
    """Event ids from a ``prev_events``/``auth_events`` list: bare ids (v3+) or
    ``[id, {"sha256": ...}]`` pairs (v1/v2). Malformed entries are skipped; the
    PDU checks refuse such events before they get here."""
    if not isinstance(refs, list):
        return []
    out: list[str] = []
    for ref in refs:
        if isinstance(ref, list) and ref:
            ref = ref[0]
        if isinstance(ref, str):
            out.append(ref)
    return out

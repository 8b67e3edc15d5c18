"""How events are shown to clients: the spec's ClientEvent, from a PDU."""

from __future__ import annotations

from typing import Any

from homeserver.events.model import Event

JsonDict = dict[str, Any]


def serialize_event(
    event: Event,
    now_ms: int,
    *,
    for_user: str | None = None,
    for_device: str | None = None,
    redaction: Event | None = None,
    include_room_id: bool = True,
    pruned_pdu: JsonDict | None = None,
    relations: JsonDict | None = None,
) -> JsonDict:
    """The client form of ``event``.

    ``transaction_id`` goes only to the device that sent the event; a redacted event
    is shown pruned with ``unsigned.redacted_because``. ``pruned_pdu`` is the redacted
    PDU (computed by the caller with the room version's redaction algorithm).
    ``relations`` is the event's bundled aggregations (``unsigned["m.relations"]``).
    """
    pdu = pruned_pdu if redaction is not None and pruned_pdu is not None else event.pdu
    out: JsonDict = {
        "event_id": event.event_id,
        "type": event.type,
        "sender": event.sender,
        "origin_server_ts": event.origin_server_ts,
        "content": dict(pdu.get("content") or {}),
    }
    if include_room_id:
        out["room_id"] = event.room_id
    if event.is_state():
        out["state_key"] = event.state_key
    redacts = event.redacts
    if redacts is not None:
        # Top level as well as in content (v11+), as Synapse does, for older clients.
        out["redacts"] = redacts
    unsigned: JsonDict = {"age": max(0, now_ms - event.origin_server_ts)}
    prev_unsigned = event.pdu.get("unsigned")
    if isinstance(prev_unsigned, dict):
        for key in ("prev_content", "replaces_state", "prev_sender", "invite_room_state",
                    "knock_room_state", "m.relations"):
            if key in prev_unsigned:
                unsigned[key] = prev_unsigned[key]
    if relations:
        unsigned["m.relations"] = relations
    if (event.internal.txn_id and for_user == event.sender
            and for_device is not None and for_device == event.internal.device_id):
        unsigned["transaction_id"] = event.internal.txn_id
    if redaction is not None:
        unsigned["redacted_because"] = serialize_event(redaction, now_ms,
                                                       include_room_id=include_room_id)
    out["unsigned"] = unsigned
    return out

"""Event rows as stored, read back as :class:`Event` objects: the columns every event
read selects, and the JSON opened (sealed at rest or not) and decoded (split from
events.py, which holds the reads and writes)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import orjson

from homeserver.crypto.at_rest import AtRestError, is_envelope
from homeserver.crypto.content import PLAIN_CODEC, FieldCodec, event_location
from homeserver.events.model import Event, InternalMetadata, JsonDict
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS


def load_event_json(raw: str) -> JsonDict:
    """A stored event's JSON, read with orjson (1.7x faster than the standard library,
    and its dicts share their keys: a fifth less memory in the event cache). Exact for
    every event stored: all of an event but ``unsigned``, ``signatures`` and ``hashes``
    went through strict canonical JSON for its content hash (no float, NaN, lone
    surrogate or integer past 2**53, where orjson would read a float), signatures and
    hashes are strings, and ``unsigned`` is only ever ours (another server's is
    dropped on receipt). Anything orjson still refuses is read by the standard library."""
    try:
        return orjson.loads(raw)  # type: ignore[no-any-return]
    except orjson.JSONDecodeError:
        return json.loads(raw)  # type: ignore[no-any-return]


def open_event_json(codec: FieldCodec, event_id: str, raw: str) -> JsonDict:
    if not codec.enabled and not is_envelope(raw):
        return load_event_json(raw)  # plaintext, accepted: no location to build
    return load_event_json(codec.open(raw, event_location(event_id)))


def row_to_event(row: tuple[Any, ...], codec: FieldCodec = PLAIN_CODEC) -> Event:
    """An event from an ``EVENT_COLS`` row; ``codec`` opens JSON sealed at rest
    (AtRestError if it was tampered with or moved from another row)."""
    event_id, room_version, raw, *meta = row
    return event_from_row(event_id, room_version, open_event_json(codec, event_id, raw), meta)


def event_from_row(event_id: str, room_version: str, pdu: JsonDict, meta: list[Any]) -> Event:
    stream_ordering, txn_id, device_id, rejected, room_id, outlier = meta
    return Event(event_id, pdu, KNOWN_ROOM_VERSIONS[room_version],
                 InternalMetadata(stream_ordering=int(stream_ordering), txn_id=txn_id,
                                  device_id=device_id, rejected_reason=rejected,
                                  room_id=room_id, outlier=bool(outlier)))


# outlier: an event out of the room's timeline (e.g. history hidden by an admin purge).
EVENT_COLS = ("e.event_id, r.room_version, e.json, e.stream_ordering, e.txn_id, e.device_id,"
              " e.rejected_reason, e.room_id, e.outlier")
EVENT_FROM = "events e JOIN rooms r ON r.room_id = e.room_id"
# The same row without the JSON (reads through the event cache).
META_COLS = EVENT_COLS.replace(" e.json,", "")


async def rows_to_events(rows: Iterable[tuple[Any, ...]], codec: FieldCodec) -> list[Event]:
    """``row_to_event`` over rows; a refused (tampered or moved) sealed event is audited
    before its AtRestError propagates."""
    try:
        return [row_to_event(r, codec) for r in rows]
    except AtRestError as e:
        await codec.vault.refused(e)
        raise

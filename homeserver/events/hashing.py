"""Event hashes and the ids derived from them (server-server API, "Calculating the content
hash for an event" / "Calculating the reference hash for an event"; room versions 4+
"Event IDs"; room version 12 room ids), and unpadded Base64 (appendices).

* The *content hash* covers the whole unredacted event, so a receiver can tell a full
  copy from a redacted one; it is stored in ``hashes.sha256`` before signing.
* The *reference hash* covers the redacted event (so it survives redaction) and is the
  event id from v3 (``$`` + unpadded Base64: standard in v3, URL-safe from v4). In v1/v2
  the id is chosen by the origin and the hash goes next to it in ``prev_events`` and
  ``auth_events``. In v12 the room id is the create event's reference hash with ``!``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Any

from homeserver.events.canonical_json import encode_canonical_json
from homeserver.events.redaction import coerce_room_version, prune_event_dict
from homeserver.events.room_versions import V12, EventFormat, RoomVersion

JsonDict = dict[str, Any]

_STANDARD = re.compile(r"[A-Za-z0-9+/]*")
_URLSAFE = re.compile(r"[A-Za-z0-9_-]*")


def encode_base64(data: bytes, urlsafe: bool = False) -> str:
    """Unpadded Base64 (standard alphabet, or URL-safe for event and room ids)."""
    encoder = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    return encoder(data).decode("ascii").rstrip("=")


def decode_base64(text: str) -> bytes:
    """Decode standard or URL-safe Base64, with or without padding (the spec says to
    accept both), strictly: no stray characters, no mixed alphabets, no bad padding.
    Raises :class:`ValueError`.

    Non-zero trailing bits are tolerated: the spec's own example signing key seed
    (``...XA1``) has them, so refusing them would break real key files.
    """
    if not isinstance(text, str):
        raise ValueError("Base64 input must be a string")
    body = text.rstrip("=")
    padding = len(text) - len(body)
    if padding and (padding > 2 or len(text) % 4):
        raise ValueError("invalid Base64 padding")
    if len(body) % 4 == 1:
        raise ValueError("invalid Base64 length")
    if _STANDARD.fullmatch(body):
        urlsafe = False
    elif _URLSAFE.fullmatch(body):
        urlsafe = True
    else:
        raise ValueError("invalid Base64 characters")
    padded = body + "=" * (-len(body) % 4)
    try:
        data = base64.b64decode(padded, altchars=b"-_" if urlsafe else None, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"invalid Base64: {exc}") from exc
    return data


def _without(pdu: JsonDict, keys: tuple[str, ...]) -> JsonDict:
    if not isinstance(pdu, dict):
        raise ValueError("an event must be a JSON object")
    return {k: v for k, v in pdu.items() if k not in keys}


def compute_content_hash(pdu: JsonDict) -> bytes:
    """SHA-256 of the canonical JSON of the event without ``unsigned``, ``signatures``
    and ``hashes`` (the raw 32 bytes)."""
    return hashlib.sha256(encode_canonical_json(_without(pdu, ("unsigned", "signatures", "hashes")))).digest()


def add_content_hash(pdu: JsonDict) -> JsonDict:
    """Set ``hashes`` to ``{"sha256": <unpadded base64>}`` in place (as the spec's example
    code does) and return ``pdu`` for chaining."""
    pdu["hashes"] = {"sha256": encode_base64(compute_content_hash(pdu))}
    return pdu


def reference_hash(pdu: JsonDict, room_version: RoomVersion | str) -> bytes:
    """SHA-256 of the canonical JSON of the redacted event without ``signatures``,
    ``age_ts`` and ``unsigned`` (the spec's step 2; redaction already drops the last two
    at top level, removing them again is harmless and matches older spec text)."""
    redacted = prune_event_dict(pdu, room_version)
    for key in ("signatures", "age_ts", "unsigned"):
        redacted.pop(key, None)
    return hashlib.sha256(encode_canonical_json(redacted)).digest()


def compute_event_id(pdu: JsonDict, room_version: RoomVersion | str) -> str:
    """The id of an event in its room version's format.

    * v1/v2: the ``event_id`` the origin put in the PDU (``$opaque:server``); it is part
      of the hashed and signed JSON, so it is read, never derived.
    * v3: ``$`` + the standard unpadded Base64 reference hash.
    * v4+: ``$`` + the URL-safe unpadded Base64 reference hash.

    For v3+ any ``event_id`` key inside ``pdu`` would be part of the hash input, so
    callers pass the PDU without one, as it travels over federation. Raises
    :class:`ValueError` for a v1/v2 PDU without a plausible ``event_id``.
    """
    version = coerce_room_version(room_version)
    if version.event_format == EventFormat.V1:
        event_id = pdu.get("event_id") if isinstance(pdu, dict) else None
        if not isinstance(event_id, str) or not event_id.startswith("$") or ":" not in event_id:
            raise ValueError("a v1/v2 event must carry its event_id ($opaque:server)")
        return event_id
    urlsafe = version.event_format != EventFormat.V3
    return "$" + encode_base64(reference_hash(pdu, version), urlsafe=urlsafe)


def event_reference(pdu: JsonDict, room_version: RoomVersion | str) -> str | list[Any]:
    """How another event cites this one in ``prev_events``/``auth_events``: the bare id
    (v3+), or ``[id, {"sha256": <unpadded Base64 reference hash>}]`` (v1/v2)."""
    version = coerce_room_version(room_version)
    event_id = compute_event_id(pdu, version)
    if version.event_format != EventFormat.V1:
        return event_id
    return [event_id, {"sha256": encode_base64(reference_hash(pdu, version))}]


def compute_room_id(create_pdu: JsonDict, room_version: RoomVersion | str = V12) -> str:
    """The v12 room id: ``!`` + URL-safe unpadded reference hash of the create event,
    i.e. the create event's id with ``!`` instead of ``$``.

    The create event must not carry a ``room_id`` (v12 auth rule 1.2), and the room
    version must be one whose room ids are create hashes; both raise :class:`ValueError`.
    """
    version = coerce_room_version(room_version)
    if not version.room_id_is_create_hash:
        raise ValueError(f"room version {version.identifier} does not derive room ids from the create event")
    if not isinstance(create_pdu, dict) or create_pdu.get("type") != "m.room.create":
        raise ValueError("the room id is derived from an m.room.create event")
    if "room_id" in create_pdu:
        raise ValueError("a v12 create event must not have a room_id")
    return "!" + encode_base64(reference_hash(create_pdu, version), urlsafe=True)


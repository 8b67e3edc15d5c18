"""Adapters with the signatures ``/work/shared/conformance/check_vectors.py`` expects, so
the spec's official test vectors check our real code paths:

    PYTHONPATH=. .venv/bin/python ../shared/conformance/check_vectors.py \\
        --canonical-json homeserver.events.vectors_adapter:canonical_json \\
        --unpadded-b64 homeserver.events.vectors_adapter:unpadded_b64 \\
        --sign-json homeserver.events.vectors_adapter:sign_json \\
        --content-hash homeserver.events.vectors_adapter:content_hash \\
        --redact homeserver.events.vectors_adapter:redact \\
        --sign-event homeserver.events.vectors_adapter:sign_event \\
        --reference-hash homeserver.events.vectors_adapter:reference_hash

The vectors name room versions "1" and "3", which we do not implement. Their events
(types ``X`` and ``m.room.message``) have no per-type content rule, and for such events
every algorithm from v1 to v10 is the same keep-list (with ``origin``), so our v10 rules
are used; an event type whose rules differ between those versions is refused.
"""

from __future__ import annotations

from typing import Any

from homeserver.events import hashing, signing
from homeserver.events.canonical_json import encode_canonical_json
from homeserver.events.redaction import prune_event_dict
from homeserver.events.room_versions import V10, RoomVersion, get_room_version

JsonDict = dict[str, Any]

# Types whose redaction rules changed between v1 and v10 (aliases rule removed in v6,
# join_authorised_via_users_server in v9, allow in v8).
_RULES_DIFFER = {"m.room.aliases", "m.room.member", "m.room.join_rules"}


def _version_for(event: JsonDict, room_version: str) -> RoomVersion:
    known = get_room_version(room_version)
    if known is not None:
        return known
    if room_version not in {str(n) for n in range(1, 10)}:
        raise ValueError(f"unknown room version {room_version!r}")
    if event.get("type") in _RULES_DIFFER:
        raise NotImplementedError(f"v{room_version} redaction of {event.get('type')} differs from v10")
    return V10


def canonical_json(obj: Any) -> bytes:
    return encode_canonical_json(obj)


def unpadded_b64(data: bytes) -> str:
    return hashing.encode_base64(data)


def sign_json(obj: JsonDict, seed: bytes, server_name: str, key_id: str) -> JsonDict:
    algorithm, _, version = key_id.partition(":")
    if algorithm != "ed25519":
        raise ValueError(f"unsupported key algorithm {algorithm!r}")
    return signing.sign_json(obj, server_name, signing.signing_key_from_seed(seed, version))


def content_hash(event: JsonDict) -> str:
    return hashing.encode_base64(hashing.compute_content_hash(event))


def redact(event: JsonDict, room_version: str) -> JsonDict:
    return prune_event_dict(event, _version_for(event, room_version))


def sign_event(event: JsonDict, seed: bytes, server_name: str, key_id: str, room_version: str) -> JsonDict:
    algorithm, _, version = key_id.partition(":")
    if algorithm != "ed25519":
        raise ValueError(f"unsupported key algorithm {algorithm!r}")
    key = signing.signing_key_from_seed(seed, version)
    return signing.sign_event(event, server_name, key, _version_for(event, room_version))


def reference_hash(event: JsonDict, room_version: str) -> str:
    return hashing.encode_base64(hashing.reference_hash(event, _version_for(event, room_version)))

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

The vectors name room versions "1" (an event carrying its ``event_id``) and "3"; both
are run with those versions' real rules from the room version table.
"""

from __future__ import annotations

from typing import Any

from homeserver.events import hashing, signing
from homeserver.events.canonical_json import encode_canonical_json
from homeserver.events.redaction import coerce_room_version, prune_event_dict

JsonDict = dict[str, Any]


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
    return prune_event_dict(event, coerce_room_version(room_version))


def sign_event(event: JsonDict, seed: bytes, server_name: str, key_id: str, room_version: str) -> JsonDict:
    algorithm, _, version = key_id.partition(":")
    if algorithm != "ed25519":
        raise ValueError(f"unsupported key algorithm {algorithm!r}")
    key = signing.signing_key_from_seed(seed, version)
    return signing.sign_event(event, server_name, key, coerce_room_version(room_version))


def reference_hash(event: JsonDict, room_version: str) -> str:
    return hashing.encode_base64(hashing.reference_hash(event, coerce_room_version(room_version)))

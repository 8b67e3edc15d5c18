"""The checks on a PDU received from another server that come before authorisation
(server-server API, "Checks performed on receipt of a PDU", steps 1-3), and server ACLs.

* :func:`parse_pdu`: the event format of its room version (field types, id format,
  sizes; the event id is the reference hash from v3, the ``event_id`` field in v1/v2).
  A malformed PDU is dropped (:class:`PduError`).
* :func:`check_signatures`: signatures of the sender's server (for v1/v2 also of the
  event id's domain, for restricted joins of the authorising server), checked with the
  keys the :class:`~federation.keyring.KeyRing` holds or fetches; a signature present
  from the transaction's origin must verify too. A failure drops the PDU.
* :func:`check_content_hash`: a mismatch replaces the event with its redacted form.
* :class:`SpamRefusal`: a spam check (``check_event_for_spam``, run by the ingest after
  the signatures and hash) refused the event; it carries the redacted form, the only
  one this server keeps (as Synapse: no spam content is stored).
* :func:`server_allowed_by_acl`: ``m.room.server_acl`` matching.

Room versions 1-5 do not require strict canonical JSON (integers beyond 2**53 are
allowed there), so hashes and signatures of their events are computed with a lenient
encoder; from v6 an event that is not strict canonical JSON is refused.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import canonicaljson
import nacl.exceptions
from signedjson.key import VerifyKey

from homeserver.events.auth import required_signature_servers
from homeserver.events.canonical_json import encode_canonical_json
from homeserver.events.hashing import decode_base64, encode_base64
from homeserver.events.model import Event
from homeserver.events.power_levels import domain_of, is_valid_user_id
from homeserver.events.redaction import prune_event_dict
from homeserver.events.room_versions import EventFormat, RoomVersion

JsonDict = dict[str, Any]

MAX_PDU_BYTES = 65536
MAX_ID_BYTES = 255  # type, state_key, sender, room id, event id
MAX_PREV_EVENTS = 20  # as Synapse
MAX_AUTH_EVENTS = 10
MAX_DEPTH = 2**63 - 1
_KEY_ID = re.compile(r"^ed25519:[A-Za-z0-9_]+$")


class PduError(Exception):
    """The PDU is dropped: ``reason`` is for the sender (never echoes content)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SpamRefusal(PduError):
    """A spam check refused the PDU. Callers that only know :class:`PduError` drop
    it; the ingest soft-fails it (federation/ingest.py). ``event`` is its redacted
    form, ``policy`` the refusing policy's name (never the plugin's message)."""

    def __init__(self, event: Event, policy: str) -> None:
        super().__init__(f"refused by the server's policy ({policy})")
        self.event = event
        self.policy = policy


# --------------------------------------------------------------------------- encoding

def encoder_for(version: RoomVersion) -> Any:
    """The canonical JSON encoder of a room version: strict from v6, else lenient
    (any integer; floats are still refused: canonical JSON never had them)."""
    return encode_canonical_json if version.strict_canonical_json else _lenient


def _lenient(obj: Any) -> bytes:
    _refuse_floats(obj)
    try:
        return canonicaljson.encode_canonical_json(obj)
    except (RecursionError, UnicodeEncodeError, TypeError) as exc:
        raise ValueError(f"not canonical JSON: {type(exc).__name__}") from None


def _refuse_floats(obj: Any, depth: int = 0) -> None:
    if depth > 100:
        raise ValueError("JSON value is nested too deeply")
    if isinstance(obj, float):
        if not obj.is_integer():
            raise ValueError("non-integral number")
    elif isinstance(obj, dict):
        for value in obj.values():
            _refuse_floats(value, depth + 1)
    elif isinstance(obj, list):
        for value in obj:
            _refuse_floats(value, depth + 1)


def content_hash(pdu: JsonDict, version: RoomVersion) -> bytes:
    body = {k: v for k, v in pdu.items() if k not in ("unsigned", "signatures", "hashes")}
    return hashlib.sha256(encoder_for(version)(body)).digest()


def event_id_of(pdu: JsonDict, version: RoomVersion) -> str:
    """The id of a PDU as its room version derives it."""
    return _event_id_and_signed(pdu, version)[0]


def _event_id_and_signed(pdu: JsonDict, version: RoomVersion) -> tuple[str, bytes | None]:
    """(the PDU's id, the canonical redacted form its signatures cover, when computing
    the id needed it: room versions 3+)."""
    if version.event_format == EventFormat.V1:
        event_id = pdu.get("event_id")
        if not isinstance(event_id, str):
            raise PduError("event_id missing")
        return event_id, None
    redacted = prune_event_dict(pdu, version)
    for key in ("signatures", "age_ts", "unsigned"):
        redacted.pop(key, None)
    signed = encoder_for(version)(redacted)
    digest = hashlib.sha256(signed).digest()
    return "$" + encode_base64(digest, urlsafe=version.event_format != EventFormat.V3), signed


_SIGNED_ATTR = "_parley_signed_bytes"
_HASH_ATTR = "_parley_content_hash"
# The unhashed top-level keys a received PDU still has once ``unsigned`` is dropped,
# with their canonical key prefix ('"hashes":').
_UNHASHED = tuple((k, len(k) + 3) for k in ("hashes", "signatures"))


def _encoded_size_and_hash(pdu: JsonDict, version: RoomVersion) -> tuple[int, bytes]:
    """(the size of the PDU's canonical JSON, its content hash) from one encoding of
    the hashed body: the whole PDU's size is the body's plus each unhashed member
    (``,"key":value``), so the PDU is not encoded a second time only to be measured.
    Every value is still encoded, so a non-canonical one anywhere raises ValueError."""
    encode = encoder_for(version)
    body = {k: v for k, v in pdu.items() if k not in ("unsigned", "signatures", "hashes")}
    encoded = encode(body)
    size = len(encoded)
    members = 1 if body else 0
    for key, prefix in _UNHASHED:
        if key in pdu:
            size += prefix + len(encode(pdu[key])) + (1 if members else 0)
            members += 1
    return size, hashlib.sha256(encoded).digest()


def signed_bytes_of(event: Event) -> bytes | None:
    """The canonical redacted form :func:`parse_pdu` computed for the event's id (the
    bytes its signatures cover), so signature checks do not prune and encode it again;
    None for events not made by parse_pdu (or of room versions 1-2)."""
    found = getattr(event, _SIGNED_ATTR, None)
    return found if isinstance(found, bytes) else None


# --------------------------------------------------------------------------- format

def _short_str(pdu: JsonDict, key: str, required: bool = True) -> str | None:
    value = pdu.get(key)
    if value is None and not required and key not in pdu:
        return None
    if not isinstance(value, str):
        raise PduError(f"'{key}' must be a string")
    if len(value.encode("utf-8")) > MAX_ID_BYTES:
        raise PduError(f"'{key}' is too long")
    return value


def _int(pdu: JsonDict, key: str, low: int, high: int) -> None:
    value = pdu.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise PduError(f"'{key}' must be an integer in range")


def _references(pdu: JsonDict, key: str, version: RoomVersion, limit: int) -> None:
    refs = pdu.get(key)
    if not isinstance(refs, list):
        raise PduError(f"'{key}' must be a list")
    if len(refs) > limit:
        raise PduError(f"too many {key}")
    for ref in refs:
        if version.event_format == EventFormat.V1:
            ok = (isinstance(ref, list) and len(ref) == 2 and isinstance(ref[0], str)
                  and isinstance(ref[1], dict))
        else:
            ok = isinstance(ref, str)
        event_id = ref[0] if ok and isinstance(ref, list) else ref
        if not ok or not event_id.startswith("$") or len(event_id.encode()) > MAX_ID_BYTES:
            raise PduError(f"malformed entry in '{key}'")


def parse_pdu(pdu: Any, version: RoomVersion, room_id: str | None = None, *,
              copy_values: bool = True) -> Event:
    """The event of a received PDU in room version ``version`` (of ``room_id``, when
    the caller knows the room), or :class:`PduError`. The PDU is copied (its values
    too unless ``copy_values`` is False: for a caller whose JSON is used for nothing
    else, e.g. a send_join answer); ``unsigned`` from another server is dropped (it is
    not covered by any signature)."""
    if not isinstance(pdu, dict):
        raise PduError("a PDU must be an object")
    pdu = {k: copy.deepcopy(v) if copy_values else v for k, v in pdu.items()
           if k != "unsigned"}
    if version.event_format != EventFormat.V1:
        pdu.pop("event_id", None)  # not part of the format from v3: never hashed
    try:
        size, hashed = _encoded_size_and_hash(pdu, version)
    except ValueError as exc:
        raise PduError(f"not canonical JSON ({exc})") from None
    if size > MAX_PDU_BYTES:
        raise PduError("event too large")
    event_type = _short_str(pdu, "type")
    sender = _short_str(pdu, "sender")
    if not is_valid_user_id(sender):
        raise PduError("'sender' is not a user id")
    _short_str(pdu, "state_key", required=False)
    is_v12_create = version.room_id_is_create_hash and event_type == "m.room.create"
    if is_v12_create:
        if "room_id" in pdu:
            raise PduError("a v12 create event has no room_id")
    else:
        pdu_room = _short_str(pdu, "room_id")
        if not pdu_room or not pdu_room.startswith("!"):
            raise PduError("'room_id' is not a room id")
        if room_id is not None and pdu_room != room_id:
            raise PduError("the event is for another room")
    _int(pdu, "origin_server_ts", 0, MAX_DEPTH)
    _int(pdu, "depth", 0, MAX_DEPTH)
    for key in ("content", "hashes", "signatures"):
        if not isinstance(pdu.get(key), dict):
            raise PduError(f"'{key}' must be an object")
    _references(pdu, "prev_events", version, MAX_PREV_EVENTS)
    _references(pdu, "auth_events", version, MAX_AUTH_EVENTS)
    if version.event_format == EventFormat.V1:
        event_id = _short_str(pdu, "event_id")
        assert event_id is not None
        if not event_id.startswith("$") or not domain_of(event_id):
            raise PduError("'event_id' must be $opaque:server")
    try:
        event_id, signed = _event_id_and_signed(pdu, version)
    except ValueError as exc:
        raise PduError(f"not canonical JSON ({exc})") from None
    event = Event(event_id, pdu, version)
    if signed is not None:
        # Parse once (issue 16 "Speed"): the signature check reuses these bytes. Set
        # on this object only: a copy or a redacted form computes its own.
        setattr(event, _SIGNED_ATTR, signed)
    setattr(event, _HASH_ATTR, hashed)  # and the content hash check this digest
    if is_v12_create:
        event.internal.room_id = "!" + event_id[1:]
        if room_id is not None and event.internal.room_id != room_id:
            raise PduError("the event is for another room")
    return event


# --------------------------------------------------------------------------- hashes

def check_content_hash(event: Event) -> Event:
    """``event`` if its content hash matches, else its redacted form (the spec: a
    mismatch means the content was altered, but the signed parts may still be
    good)."""
    hashes = event.pdu.get("hashes")
    claimed = hashes.get("sha256") if isinstance(hashes, dict) else None
    known = getattr(event, _HASH_ATTR, None)  # computed by parse_pdu
    try:
        ok = isinstance(claimed, str) and hmac.compare_digest(
            decode_base64(claimed), known if isinstance(known, bytes)
            else content_hash(event.pdu, event.room_version))
    except ValueError:
        ok = False
    return event if ok else redacted(event)


def redacted(event: Event) -> Event:
    """The event pruned by its room version's redaction algorithm (a new object)."""
    out = Event(event.event_id, prune_event_dict(event.pdu, event.room_version),
                event.room_version)
    out.internal.room_id = event.internal.room_id
    return out


# --------------------------------------------------------------------------- signatures

def verify_with_key(event: Event, server: str, key_id: str, key: VerifyKey) -> bool:
    """Whether ``server``'s signature ``key_id`` on the event's redacted form is good."""
    sigs = event.pdu.get("signatures")
    per_server = sigs.get(server) if isinstance(sigs, dict) else None
    sig_b64 = per_server.get(key_id) if isinstance(per_server, dict) else None
    if not isinstance(sig_b64, str):
        return False
    try:
        signature = decode_base64(sig_b64)
        message = signed_bytes_of(event)
        if message is None:
            redacted = prune_event_dict(event.pdu, event.room_version)
            body = {k: v for k, v in redacted.items() if k not in ("signatures", "unsigned")}
            message = encoder_for(event.room_version)(body)
        if len(signature) != 64:
            return False
        key.verify(message, signature)
    except (ValueError, nacl.exceptions.BadSignatureError):
        return False
    return True


async def check_signatures(keyring: Any, event: Event, origin: str | None) -> None:
    """Raise :class:`PduError` unless every server that must sign the event did, with
    a key valid at its ``origin_server_ts`` (room versions 5+; before, any key the
    server had), and ``origin``'s signature, if present, is good too."""
    servers = set(required_signature_servers(event))
    sigs = event.pdu.get("signatures")
    if origin and isinstance(sigs, dict) and isinstance(sigs.get(origin), dict):
        servers.add(origin)
    ts = event.origin_server_ts if event.room_version.enforce_key_validity else None
    for server in sorted(servers):
        per_server = sigs.get(server) if isinstance(sigs, dict) else None
        kids = sorted(k for k in (per_server or {}) if isinstance(k, str) and _KEY_ID.match(k))
        if not kids:
            raise PduError(f"not signed by {server}")
        verified = False
        for kid in kids:
            try:
                key = await keyring.get_verify_key(server, kid, ts)
            except Exception:  # noqa: BLE001 (an unreachable key server is "no key")
                key = None
            if key is None:
                continue
            if not verify_with_key(event, server, kid, key):
                raise PduError(f"bad signature by {server}")
            verified = True
            break
        if not verified:
            raise PduError(f"no valid key of {server} for its signature")


# --------------------------------------------------------------------------- ACLs

@lru_cache(maxsize=1024)
def _glob(pattern: str) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def _host(server_name: str) -> str:
    """The host part of a server name (no port; IPv6 literals keep their brackets)."""
    if server_name.startswith("["):
        end = server_name.find("]")
        return server_name[:end + 1] if end > 0 else server_name
    return server_name.rsplit(":", 1)[0] if server_name.count(":") == 1 else server_name


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def server_allowed_by_acl(server_name: str, content: Mapping[str, Any]) -> bool:
    """Whether ``m.room.server_acl`` content lets ``server_name`` take part (spec
    "Server Access Control Lists"): IP literals per ``allow_ip_literals``, then
    ``deny`` wins over ``allow``, and a server matching no ``allow`` glob is denied.
    Globs (``*``, ``?``) match the host without its port, case-insensitively."""
    host = _host(server_name)
    allow_ip = content.get("allow_ip_literals", True)
    if _is_ip_literal(host) and allow_ip is False:
        return False
    deny = content.get("deny", [])
    allow = content.get("allow", [])
    for entry in deny if isinstance(deny, list) else []:
        if isinstance(entry, str) and _glob(entry).fullmatch(host):
            return False
    for entry in allow if isinstance(allow, list) else []:
        if isinstance(entry, str) and _glob(entry).fullmatch(host):
            return True
    return False

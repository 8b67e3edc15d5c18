"""The built-in ``e2ee_only`` policy: "the server must not accept plaintext".

Config ``e2ee: {policy: off | encrypted_rooms | everywhere}`` (YAML's bare ``off``
parses as false and means off too):

- ``encrypted_rooms``: in a room whose state has ``m.room.encryption``, client-sent
  events must be ``m.room.encrypted``;
- ``everywhere``: the same in every room, and /createRoom adds
  ``m.room.encryption`` (megolm) to a new room's initial state unless the request
  sets it itself.

What stays allowed in plaintext: state events (names, topics, membership, power
levels, MatrixRTC ``m.call.member``: the protocol cannot encrypt state), except state
events of the plaintext message types below, which are a way around the policy;
redactions (``m.room.redaction``, sent via /redact and carrying only a reason). Not
allowed: ``m.room.message``, ``m.sticker``, ``m.reaction`` (a reaction key is free
text; clients encrypt reactions in encrypted rooms), legacy ``m.call.*`` signalling
(Element encrypts it too), polls and anything else: an allow-list, not a deny-list.

Refusals are HTTP 400 with errcode ``M_FORBIDDEN`` (what clients already show as "the
server refused this") and an ``error`` saying why, plus ``org.parley.policy:
e2ee_only`` so a client or bot can tell this refusal apart. Synapse has no
equivalent.

``m.room.encrypted`` content must look like ciphertext, so plaintext cannot pass by
merely being labelled encrypted: megolm (``ciphertext`` base64 string of a plausible
length, ``session_id`` string, optional ``sender_key`` / ``device_id`` strings) or olm
(``sender_key`` string, ``ciphertext`` map of ``{"type": int, "body": base64}``);
the only other key allowed next to them is ``m.relates_to`` (kept in cleartext by
the spec so relations work). Anything else is 400 ``M_BAD_JSON``. The server cannot
tell real ciphertext from base64-encoded plaintext; this is a shape check only.
"""

from __future__ import annotations

import re
from typing import Any

from plugins.hookspecs import hookimpl
from plugins.types import EventView, Refusal, RoomView

OFF, ENCRYPTED_ROOMS, EVERYWHERE = "off", "encrypted_rooms", "everywhere"
POLICIES = (OFF, ENCRYPTED_ROOMS, EVERYWHERE)
MEGOLM = "m.megolm.v1.aes-sha2"
OLM = "m.olm.v1.curve25519-aes-sha2"
ENCRYPTED = "m.room.encrypted"
ENCRYPTION_STATE: dict[str, Any] = {"type": "m.room.encryption", "state_key": "",
                                    "content": {"algorithm": MEGOLM}}
# Non-state event types accepted in plaintext.
PLAINTEXT_ALLOWED = frozenset({ENCRYPTED, "m.room.redaction"})
# State event types that would carry a message in plaintext.
PLAINTEXT_STATE_REFUSED = frozenset({"m.room.message", "m.sticker", "m.reaction"})
_ENVELOPE_KEYS = {
    MEGOLM: {"algorithm", "ciphertext", "session_id", "sender_key", "device_id", "m.relates_to"},
    OLM: {"algorithm", "ciphertext", "sender_key", "m.relates_to"},
}
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
# A megolm message: version, index, at least one AES block, an 8-byte MAC and a
# 64-byte signature; anything shorter is not one.
MIN_MEGOLM_CIPHERTEXT_CHARS = 4 * (1 + 1 + 16 + 8 + 64) // 3


def _bad(msg: str) -> Refusal:
    return Refusal(400, "M_BAD_JSON", f"Invalid m.room.encrypted content: {msg}")


def check_encrypted_content(content: dict[str, Any]) -> None:
    """400 ``M_BAD_JSON`` unless ``content`` is shaped like a megolm or olm payload."""
    algorithm = content.get("algorithm")
    if algorithm not in _ENVELOPE_KEYS:
        raise _bad(f"'algorithm' must be {MEGOLM} or {OLM}")
    extra = set(content) - _ENVELOPE_KEYS[algorithm]
    if extra:
        raise _bad("unexpected field(s) next to the ciphertext: " + ", ".join(sorted(extra)))
    for key in ("sender_key", "device_id", "session_id"):
        if key in content and not isinstance(content[key], str):
            raise _bad(f"'{key}' must be a string")
    if "m.relates_to" in content and not isinstance(content["m.relates_to"], dict):
        raise _bad("'m.relates_to' must be an object")
    ciphertext = content.get("ciphertext")
    if algorithm == MEGOLM:
        if not isinstance(content.get("session_id"), str) or not content["session_id"]:
            raise _bad("'session_id' is required")
        if not isinstance(ciphertext, str) or not _BASE64.match(ciphertext) \
                or len(ciphertext) < MIN_MEGOLM_CIPHERTEXT_CHARS:
            raise _bad("'ciphertext' must be a base64 megolm message")
        return
    if not isinstance(content.get("sender_key"), str) or not content["sender_key"]:
        raise _bad("'sender_key' is required")
    if not isinstance(ciphertext, dict) or not ciphertext:
        raise _bad("'ciphertext' must map recipient keys to messages")
    for message in ciphertext.values():
        if not isinstance(message, dict) or type(message.get("type")) is not int \
                or not isinstance(message.get("body"), str) or not _BASE64.match(message["body"]):
            raise _bad("each olm message needs an integer 'type' and a base64 'body'")


class E2eeOnlyPolicy:
    """A built-in plugin (``check_event_for_spam``), registered as ``parley.e2ee_only``
    when the policy is not off; it sees the same view types as any plugin."""

    def __init__(self, policy: str) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown e2ee policy {policy!r}")
        self.policy = policy

    def default_initial_state(self) -> list[dict[str, Any]]:
        """State /createRoom adds unless the request sets it (``everywhere`` only)."""
        return [ENCRYPTION_STATE] if self.policy == EVERYWHERE else []

    @hookimpl
    def check_event_for_spam(self, event: EventView, room: RoomView) -> Refusal | None:
        if self.policy == OFF:
            return None
        if event.type == ENCRYPTED:
            check_encrypted_content(event.content)  # raises the refusal
            return None
        if event.is_state() and event.type not in PLAINTEXT_STATE_REFUSED:
            return None
        if not event.is_state() and event.type in PLAINTEXT_ALLOWED:
            return None
        if self.policy == ENCRYPTED_ROOMS and not room.is_encrypted:
            return None
        where = "in encrypted rooms" if self.policy == ENCRYPTED_ROOMS else "anywhere"
        return Refusal(
            400, "M_FORBIDDEN",
            f"This server does not accept unencrypted '{event.type}' events {where}:"
            " enable end-to-end encryption in your client and send m.room.encrypted",
            {"org.parley.policy": "e2ee_only"})

"""The audit trail's canonical encoding, hash chain and verification: pure code, no I/O.

Each entry's hash is SHA-256 over the canonical JSON (homeserver/events/canonical_json.py)
of its fields, including ``prev_hash``, the hash of the entry before it. Editing an entry
changes its hash; deleting, inserting or reordering entries breaks a ``prev_hash`` link or
the run of sequence numbers. The chain's head (the last ``seq`` and hash) is exported so
an outside system can notarise it: recomputing the whole chain after tampering then no
longer matches what was notarised.

Entries never hold a password, token, key or message content: :func:`sanitize_details`
drops such keys (and token-looking values) before anything is hashed or stored.

Version 2 entries (those with ``id_macs``) hash keyed hashes of their identifiers
instead of the identifiers themselves: HMAC-SHA256 under the server's audit key of the
actor's user id, device id, session id, IP and user agent, of the target and of
identifier-valued details (:data:`IDENTIFIER_DETAILS`). The raw values are stored
beside the MACs; verification checks each raw value against its MAC. Erasure can then
pseudonymise an entry (replace a raw value with :func:`pseudonym` of its MAC) without
changing its hash, so the chain still verifies. Version 1 entries (no ``id_macs``)
hash the raw values and keep verifying as before.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from homeserver.events.canonical_json import (
    MAX_SAFE_INTEGER,
    MIN_SAFE_INTEGER,
    encode_canonical_json,
)

CHAIN_VERSION = 1  # entries without id_macs
CHAIN_VERSION_KEYED = 2  # entries whose identifiers are hashed under the audit key
GENESIS_HASH = "0" * 64
# Every field an entry's hash covers (the row id does not: it is storage detail).
HASHED_FIELDS = (
    "seq", "ts", "event_type", "action", "outcome", "user_id", "device_id", "session_id",
    "ip", "user_agent", "target", "reason", "request_id", "details", "prev_hash",
)
# Version 2: the identifier columns, hashed as MACs (raw values stored beside them).
IDENTIFIER_FIELDS = ("user_id", "device_id", "session_id", "ip", "user_agent", "target")
# Top-level details keys whose values (a string or a list of strings) identify someone.
IDENTIFIER_DETAILS = frozenset({
    "user_id", "user_ids", "target_user_id", "device_id", "device_ids", "session_id", "ip",
    "user_agent", "requested_by", "requester", "reporter", "sender", "localpart",
    "username", "invitee", "inviter",
})
PSEUDONYM_PREFIX = "erased-"
PSEUDONYM_HEX = 16
# The action recorded by a retention purge; its details corroborate the checkpoint.
PURGE_ACTION = "audit_purge"

# Key words that mark a secret or content: a details key containing one of these words
# (split on ``_``, ``-``, ``.`` and camelCase) is dropped.
_SECRET_WORDS = frozenset({
    "password", "passwords", "passwd", "passphrase", "pass", "pw", "token", "tokens",
    "secret", "secrets", "key", "keys", "mac", "hmac", "signature", "signatures", "sig",
    "content", "body", "formatted", "ciphertext", "plaintext", "message", "messages",
    "otp", "totp", "code", "codes", "cookie", "cookies", "credential", "credentials",
    "nonce", "auth", "authorization", "private", "salt", "seed", "recovery",
})
_WORD_SPLIT = re.compile(r"[_\-.\s]+|(?<=[a-z0-9])(?=[A-Z])")
# Values that look like bearer credentials whatever their key: JWTs, Matrix-style tokens.
# (Long base64url runs with a non-hex letter; hex digests such as chain hashes stay.)
_TOKEN_VALUE = re.compile(
    r"^(eyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*|sy[tr]_\S{10,}|(?=[\w-]*[g-zG-Z_-])[\w-]{40,})$",
    re.ASCII)
MAX_TEXT = 512
MAX_DETAIL_STRING = 256
MAX_DETAIL_ITEMS = 32
MAX_DETAIL_DEPTH = 4
REDACTED_KEY = "_redacted"


def is_secret_key(key: str) -> bool:
    words = [w.lower() for w in _WORD_SPLIT.split(key) if w]
    return any(w in _SECRET_WORDS for w in words) or key.lower() in _SECRET_WORDS


def clean_text(value: Any, limit: int = MAX_TEXT) -> str | None:
    """A string that canonical JSON and both databases can hold: no NUL, no lone
    surrogate, at most ``limit`` characters."""
    if value is None:
        return None
    text = str(value).replace("\x00", "")
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text[:limit]


def _clean_value(value: Any, depth: int, redacted: set[str]) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if MIN_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else str(value)
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) <= MAX_SAFE_INTEGER else str(value)
    if isinstance(value, str):
        if _TOKEN_VALUE.match(value):
            redacted.add("(token-like value)")
            return "[redacted]"
        return clean_text(value, MAX_DETAIL_STRING)
    if depth >= MAX_DETAIL_DEPTH:
        return "[nested too deeply]"
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in list(value.items())[:MAX_DETAIL_ITEMS]:
            key = clean_text(k, 64) or ""
            if is_secret_key(key):
                redacted.add(key)
                continue
            out[key] = _clean_value(v, depth + 1, redacted)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_clean_value(v, depth + 1, redacted) for v in list(value)[:MAX_DETAIL_ITEMS]]
    return clean_text(value, MAX_DETAIL_STRING)


def sanitize_details(details: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``details`` without secrets or content, in a shape canonical JSON accepts.

    Keys naming a secret (password, token, key, mac, code, content, body, ...) are
    dropped and their names listed under ``_redacted``; token-looking string values are
    replaced. Sizes are bounded so an entry stays small."""
    if not details:
        return None
    redacted: set[str] = set()
    cleaned = _clean_value(dict(details), 0, redacted)
    assert isinstance(cleaned, dict)
    cleaned.pop(REDACTED_KEY, None)
    if redacted:
        cleaned[REDACTED_KEY] = sorted(redacted)
    return cleaned or None


def identifier_mac(key: bytes, value: str) -> str:
    """HMAC-SHA256 (hex) of one identifier under the audit key. The same value gives the
    same MAC in every field, so a pseudonymised user stays linkable across entries."""
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()


def pseudonym(mac: str) -> str:
    """What replaces an erased identifier: derived from its MAC (not reversible without
    the key, and checkable by verify)."""
    return PSEUDONYM_PREFIX + mac[:PSEUDONYM_HEX]


def _identifier_items(fields: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(MAC name, raw value) of each identifier an entry holds: columns by name, details
    keys as ``details.<key>``."""
    items: list[tuple[str, Any]] = [(f, fields.get(f)) for f in IDENTIFIER_FIELDS
                                    if fields.get(f) is not None]
    details = fields.get("details") or {}
    for k in sorted(details):
        v = details[k]
        if k in IDENTIFIER_DETAILS and (isinstance(v, str) or (
                isinstance(v, list) and v and all(isinstance(x, str) for x in v))):
            items.append((f"details.{k}", v))
    return items


def compute_id_macs(key: bytes, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The ``id_macs`` of a new version 2 entry."""
    out: dict[str, Any] = {}
    for name, value in _identifier_items(fields):
        out[name] = ([identifier_mac(key, v) for v in value] if isinstance(value, list)
                     else identifier_mac(key, value))
    return out


def canonical_entry(fields: Mapping[str, Any]) -> bytes:
    """The bytes an entry's hash is computed over (by version)."""
    macs = fields.get("id_macs")
    if macs is None:
        doc = {"v": CHAIN_VERSION, **{k: fields.get(k) for k in HASHED_FIELDS}}
        return encode_canonical_json(doc)
    doc = {k: fields.get(k) for k in HASHED_FIELDS if k not in IDENTIFIER_FIELDS}
    details = fields.get("details")
    if details:
        details = {k: v for k, v in details.items()
                   if not (k in IDENTIFIER_DETAILS and f"details.{k}" in macs)}
    doc.update({"v": CHAIN_VERSION_KEYED, "details": details or None, "ids": macs})
    return encode_canonical_json(doc)


def check_identifiers(fields: Mapping[str, Any], key: bytes | None) -> str | None:
    """For a version 2 entry: does every stored identifier match its MAC (or is it the
    pseudonym derived from it)? Returns what does not, or None. Without the key only
    the shape is checked: same identifiers as MACs, pseudonyms derived from their MAC."""
    macs = fields.get("id_macs")
    if macs is None:
        return None
    if not isinstance(macs, dict):
        return "its identifier MACs are malformed"
    present = dict(_identifier_items(fields))
    for name in macs:
        if name not in present:
            return f"{name} was removed or altered"
    for name, value in present.items():
        mac = macs.get(name)
        if mac is None:
            return f"{name} was added"
        values, expect = ((value, mac) if isinstance(value, list) else ([value], [mac]))
        if not isinstance(expect, list) or len(expect) != len(values):
            return f"{name} does not match its MAC"
        for raw, m in zip(values, expect, strict=True):
            if not isinstance(m, str) or raw == pseudonym(m):
                continue
            if key is not None and not hmac.compare_digest(identifier_mac(key, raw), m):
                return f"{name} does not match its MAC"
    return None


def entry_hash(fields: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the entry's canonical encoding; ``fields`` includes prev_hash."""
    return hashlib.sha256(canonical_entry(fields)).hexdigest()


@dataclass(frozen=True)
class Problem:
    """The first thing wrong with a chain: which entry (seq and row id) and why."""

    kind: str  # edited | missing | broken_link | unchained | head | checkpoint | anchor
    message: str
    seq: int | None = None
    row_id: int | None = None


@dataclass(frozen=True)
class Link:
    """A point of the chain: a sequence number and the hash of the entry there."""

    seq: int
    hash: str


class ChainVerifier:
    """Checks entries fed in ``seq`` order against the checkpoint they must start from.

    Stops at the first problem (``problem``); :meth:`finish` then compares the end of
    the chain with the stored head (and an optional notarised anchor)."""

    def __init__(self, checkpoint: Link | None, anchor: Link | None = None,
                 id_key: bytes | None = None) -> None:
        self.checkpoint = checkpoint
        self.id_key = id_key
        self.anchor = anchor
        self.start = checkpoint or Link(0, GENESIS_HASH)
        self.last = self.start
        self.count = 0
        self.problem: Problem | None = None
        self._last_purge: tuple[int, Any, Any] | None = None  # (seq, through_seq, hash)
        self._anchor_seen = anchor is not None and anchor.seq <= self.start.seq

    def feed(self, entry: Mapping[str, Any]) -> bool:
        """Check one entry; False once a problem has been found."""
        if self.problem is not None:
            return False
        seq, row_id = entry.get("seq"), entry.get("id")
        if seq is None:
            return self._fail("unchained", f"entry id={row_id} has no sequence number: it was "
                              "written outside the audit module", None, row_id)
        expected = self.last.seq + 1
        if seq < expected:
            return self._fail("broken_link", f"entry seq={seq} is out of order (expected "
                              f"seq={expected})", seq, row_id)
        if seq > expected:
            what = (f"seq={expected}" if seq == expected + 1
                    else f"seq={expected}..{seq - 1}")
            return self._fail("missing", f"entries {what} are missing (deleted) before "
                              f"entry seq={seq}", seq, row_id)
        if entry_hash(entry) != entry.get("entry_hash"):
            return self._fail("edited", f"entry seq={seq} was modified: its contents do not "
                              "match its hash", seq, row_id)
        ident_problem = check_identifiers(entry, self.id_key)
        if ident_problem is not None:
            return self._fail("edited", f"entry seq={seq} was modified: {ident_problem}",
                              seq, row_id)
        if entry.get("prev_hash") != self.last.hash:
            return self._fail("broken_link", f"entry seq={seq} does not link to the entry "
                              f"before it (seq={self.last.seq} was edited and rehashed, or "
                              "entries were deleted, inserted or reordered)", seq, row_id)
        if self.anchor is not None and seq == self.anchor.seq:
            self._anchor_seen = True
            if entry["entry_hash"] != self.anchor.hash:
                return self._fail("anchor", f"entry seq={seq} differs from the notarised head: "
                                  "the chain was rewritten", seq, row_id)
        if entry.get("event_type") == PURGE_ACTION or entry.get("action") == PURGE_ACTION:
            details = entry.get("details") or {}
            self._last_purge = (seq, details.get("through_seq"), details.get("through_hash"))
        self.last = Link(seq, entry["entry_hash"])
        self.count += 1
        return True

    def finish(self, head: Link | None) -> Problem | None:
        """The first problem, also checking the end of the chain and the checkpoint."""
        if self.problem is not None:
            return self.problem
        if self.anchor is not None and self.anchor.seq == self.start.seq \
                and self.anchor.hash != self.start.hash:
            return self._problem("anchor", f"the checkpoint at seq={self.start.seq} differs "
                                 "from the notarised head", self.start.seq)
        if self.checkpoint is not None:
            purge = self._last_purge
            if purge is None or purge[1] != self.checkpoint.seq \
                    or purge[2] != self.checkpoint.hash:
                where = f" (last purge record: seq={purge[0]})" if purge else ""
                return self._problem("checkpoint", f"the retention checkpoint (seq="
                                     f"{self.checkpoint.seq}) is not the one the last purge "
                                     f"recorded{where}: it was altered", self.checkpoint.seq)
        if head is not None:
            if head.seq > self.last.seq:
                return self._problem("missing", f"entries seq={self.last.seq + 1}..{head.seq} "
                                     "are missing (deleted from the end)", self.last.seq + 1)
            if head.seq < self.last.seq:
                return self._problem("head", f"entries after the recorded head seq={head.seq} "
                                     "were written outside the audit module", head.seq + 1)
            if head.hash != self.last.hash:
                return self._problem("head", f"entry seq={head.seq} differs from the recorded "
                                     "head", head.seq)
        if self.anchor is not None and not self._anchor_seen:
            return self._problem("anchor", f"the chain ends at seq={self.last.seq}, before the "
                                 f"notarised head seq={self.anchor.seq}", self.last.seq + 1)
        return None

    def _problem(self, kind: str, message: str, seq: int | None,
                 row_id: int | None = None) -> Problem:
        self.problem = Problem(kind, message, seq, row_id)
        return self.problem

    def _fail(self, kind: str, message: str, seq: int | None, row_id: int | None) -> bool:
        self._problem(kind, message, seq, row_id)
        return False

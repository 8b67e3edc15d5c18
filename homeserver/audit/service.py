"""Reading the audit trail: verify the chain, export it, query it for the admin API.

All reads page through the store in ``seq`` order, so a chain of millions of entries is
verified or exported in constant memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from homeserver.audit.chain import (
    IDENTIFIER_DETAILS,
    IDENTIFIER_FIELDS,
    ChainVerifier,
    Link,
    Problem,
    identifier_mac,
    pseudonym,
)
from homeserver.http.opaque_tokens import Int, decode_token, encode_token
from storage.stores.security_events import AuditFilter, SecurityEvent, SecurityEventStore

PAGE = 1000
MAX_QUERY_LIMIT = 1000
DEFAULT_QUERY_LIMIT = 100
_TOKEN_SHAPE = (Int(minimum=1),)
_MAX_TOKEN_LENGTH = 64


def entry_json(ev: SecurityEvent) -> dict[str, Any]:
    """The exported shape of one entry (admin API and ``parley audit export``)."""
    return {
        "seq": ev.seq,
        "ts": ev.ts,
        "event_type": ev.event_type,
        "action": ev.action or ev.event_type,
        "outcome": ev.outcome,
        "actor": {"user_id": ev.user_id, "device_id": ev.device_id,
                  "session_id": ev.session_id, "ip": ev.ip, "user_agent": ev.user_agent},
        "target": ev.target,
        "reason": ev.reason,
        "request_id": ev.request_id,
        "details": ev.details or {},
        "prev_hash": ev.prev_hash,
        "hash": ev.entry_hash,
    }


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    count: int  # entries checked
    head: Link
    checkpoint: Link | None
    problem: Problem | None

    def describe(self) -> str:
        if self.problem is not None:
            where = f" (row id {self.problem.row_id})" if self.problem.row_id is not None else ""
            return f"FAILED at seq={self.problem.seq}{where}: {self.problem.message}"
        if self.count == 0:
            return (f"OK: no entries to verify; head seq={self.head.seq} "
                    f"hash={self.head.hash}")
        start = self.checkpoint.seq + 1 if self.checkpoint else 1
        cut = f", checkpoint seq={self.checkpoint.seq}" if self.checkpoint else ""
        return (f"OK: {self.count} entries verified (seq {start}..{self.head.seq}{cut}); "
                f"head seq={self.head.seq} hash={self.head.hash}")


async def verify_chain(store: SecurityEventStore, anchor: Link | None = None,
                       page: int = PAGE, id_key: bytes | None = None) -> VerifyReport:
    """Check the whole retained chain: every entry's hash and link, no gaps, the end
    against the stored head, the start against the retention checkpoint (and that
    checkpoint against the purge entry that recorded it), optionally a notarised head.
    With the audit key, version 2 entries' identifiers are checked against their MACs
    (pseudonymised ones against the MAC they were derived from)."""
    cp_row = await store.latest_checkpoint()
    checkpoint = Link(*cp_row) if cp_row else None
    head = Link(*(await store.head()))
    verifier = ChainVerifier(checkpoint, anchor, id_key)
    unchained = await store.first_unchained()
    if unchained is not None:
        verifier.feed({"id": unchained, "seq": None})
    after = checkpoint.seq if checkpoint else 0
    while verifier.problem is None:
        # Entries appended after the head was read are left for the next run.
        batch = [e for e in await store.entries_after(after, page) if e.seq <= head.seq]  # type: ignore[operator]
        for ev in batch:
            if not verifier.feed(ev.fields()):
                break
        if len(batch) < page:
            break
        after = batch[-1].seq  # type: ignore[assignment]
    problem = verifier.finish(head)
    return VerifyReport(problem is None, verifier.count, head, checkpoint, problem)


def check_purge_range(checkpoint: tuple[int, str] | None,
                      entries: list[SecurityEvent]) -> str | None:
    """For the purge: do the entries about to be deleted verify from the checkpoint?"""
    verifier = ChainVerifier(Link(*checkpoint) if checkpoint else None)
    for ev in entries:
        if not verifier.feed(ev.fields()):
            break
    return verifier.problem.message if verifier.problem else None


async def export_entries(store: SecurityEventStore, since_ts: int | None,
                         page: int = PAGE) -> AsyncIterator[dict[str, Any]]:
    """Every retained entry with ts >= ``since_ts``, oldest first, as :func:`entry_json`."""
    after = 0
    while True:
        batch = await store.entries_after(after, page, since_ts=since_ts)
        for ev in batch:
            yield entry_json(ev)
        if len(batch) < page:
            return
        after = batch[-1].seq  # type: ignore[assignment]


async def query_entries(store: SecurityEventStore, flt: AuditFilter, from_token: str | None,
                        limit: int) -> tuple[list[dict[str, Any]], str | None]:
    """One page for the admin API, newest first; the opaque token continues it."""
    before = decode_token(from_token, _MAX_TOKEN_LENGTH, _TOKEN_SHAPE)[0] if from_token else None
    rows = await store.query(flt, before, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    next_token = encode_token([rows[-1].seq]) if more and rows else None
    return [entry_json(ev) for ev in rows], next_token


# The actor's identifiers: all pseudonymised in an entry the erased user made.
_ACTOR_FIELDS = ("user_id", "device_id", "session_id", "ip", "user_agent")
_ACTOR_DETAILS = frozenset({"device_id", "device_ids", "session_id", "ip", "user_agent"})


def pseudonymised_values(ev: SecurityEvent, user_id: str) -> dict[str, Any]:
    """The columns (and ``details``) to overwrite so that ``ev`` no longer names
    ``user_id`` nor, if they were the actor, their devices, sessions, IP and user agent.
    Empty for a version 1 entry (its hash covers the raw values: it keeps them until
    retention deletes it) and for an entry with nothing to replace."""
    macs = ev.id_macs
    if not macs:
        return {}
    actor = ev.user_id == user_id
    out: dict[str, Any] = {}
    for name in IDENTIFIER_FIELDS:
        value, mac = getattr(ev, name), macs.get(name)
        if value is None or not isinstance(mac, str) or value == pseudonym(mac):
            continue
        if value == user_id or (actor and name in _ACTOR_FIELDS):
            out[name] = pseudonym(mac)
    details = dict(ev.details or {})
    changed = False
    for key in sorted(details):
        mac = macs.get(f"details.{key}")
        if key not in IDENTIFIER_DETAILS or mac is None:
            continue
        value = details[key]
        whole = actor and key in _ACTOR_DETAILS
        if isinstance(value, str) and isinstance(mac, str):
            if (value == user_id or whole) and value != pseudonym(mac):
                details[key], changed = pseudonym(mac), True
        elif isinstance(value, list) and isinstance(mac, list) and len(mac) == len(value):
            new = [pseudonym(m) if (v == user_id or whole) else v
                   for v, m in zip(value, mac, strict=True)]
            if new != value:
                details[key], changed = new, True
    if changed:
        out["details"] = details
    return out


@dataclass(frozen=True)
class PseudonymiseReport:
    replaced: int  # entries rewritten
    kept_v1: int  # version 1 entries naming the user, kept until retention deletes them


async def pseudonymise_user(store: SecurityEventStore, id_key: bytes, user_id: str,
                            after_id: int = 0, page: int = PAGE) -> PseudonymiseReport:
    """Replace ``user_id`` (and their own identifiers) by pseudonyms in every retained
    audit entry, without changing any entry's hash: the chain still verifies. The user's
    pseudonym is the same in every entry, so their history stays linkable."""
    replaced = kept = 0
    while True:
        batch = await store.entries_mentioning(user_id, after_id, page)
        for ev in batch:
            values = pseudonymised_values(ev, user_id)
            if values:
                replaced += int(await store.replace_identifiers(ev.id or 0, ev.entry_hash,
                                                                values))
            elif ev.id_macs is None:
                kept += 1
        if len(batch) < page:
            return PseudonymiseReport(replaced, kept)
        after_id = batch[-1].id or after_id


def user_pseudonym(id_key: bytes, user_id: str) -> str:
    """What an erased user is called in the audit trail (and in their purge job)."""
    return pseudonym(identifier_mac(id_key, user_id))

"""Bounded integers and stream positions from client input: one parser for them all.

Why: a Python int has no bound, but every integer the server stores or compares in SQL
is a signed 64-bit column, and SQLite raises ``OverflowError`` (PostgreSQL "bigint out of
range") past it, which surfaced as 500s. Every integer a client sends (query parameters,
tokens, JSON bodies) is checked here against an explicit range and refused with
400 ``M_INVALID_PARAM`` (as Synapse's ``parse_integer``) instead.
"""

from __future__ import annotations

import re
from typing import Any

from homeserver.http.errors import Codes, MatrixError

# The largest value a BIGINT column holds.
MAX_INT64 = 2**63 - 1
# Stream positions in tokens: far above anything real, with room for the ``+ 1`` the
# read paths add, and still a BIGINT.
MAX_POSITION = 2**62
# The largest integer canonical JSON allows (the spec's range for JSON numbers).
MAX_SAFE_INTEGER = 2**53 - 1
# Digits, optionally signed; ASCII only (``int()`` also takes "1_000", " 7 " and
# non-ASCII digits, none of which a client means).
_INT = re.compile(r"[+-]?[0-9]{1,19}", re.ASCII)


def invalid(name: str, why: str) -> MatrixError:
    return MatrixError(400, f"Query parameter '{name}' {why}", Codes.INVALID_PARAM)


def parse_int(raw: str | None, name: str, default: int | None = None, *,
              minimum: int = 0, maximum: int = MAX_INT64) -> int | None:
    """``raw`` as an integer in [minimum, maximum]; ``default`` when absent; else 400.

    Negative values are refused unless ``minimum`` allows them (Synapse's
    ``parse_integer(negative=False)``)."""
    if raw is None:
        return default
    if not _INT.fullmatch(raw):
        raise invalid(name, "must be an integer")
    value = int(raw)
    if value < minimum:
        raise invalid(name, f"must be {minimum} or more")
    if value > maximum:
        raise invalid(name, f"must be {maximum} or less")
    return value


def parse_position(raw: str, name: str) -> int:
    """A stream position written in decimal (as inside sync and pagination tokens)."""
    value = parse_int(raw, name, maximum=MAX_POSITION)
    assert value is not None
    return value


def body_int(value: Any, name: str, *, minimum: int = 0, maximum: int = MAX_SAFE_INTEGER
             ) -> int:
    """An integer from a JSON body (not a bool, not a float) in [minimum, maximum]."""
    if type(value) is not int:
        raise MatrixError(400, f"'{name}' must be an integer", Codes.BAD_JSON)
    if not minimum <= value <= maximum:
        raise MatrixError(400, f"'{name}' is out of range", Codes.INVALID_PARAM)
    return value


# Room pagination tokens: ``t<N>`` (the gap after position N; N is negative inside
# backfilled history, which sorts before every live event) or a sync token ``s<N>_...``
# read as its event position N. Either way |N| <= MAX_POSITION.
_ROOM_TOKEN = re.compile(r"t(-?[0-9]{1,19})|s([0-9]{1,18})(?:_[0-9]{1,18}){0,16}", re.ASCII)


def parse_room_token(raw: str, name: str) -> int:
    """The event position of a ``t<N>`` or ``s<N>_...`` token; 400 for anything else
    (shared by /messages, /context, /members?at, /relations and legacy /events)."""
    m = _ROOM_TOKEN.fullmatch(raw)
    if m is None:
        raise MatrixError(400, f"Invalid '{name}' token", Codes.INVALID_PARAM)
    value = int(m.group(1) or m.group(2))
    if abs(value) > MAX_POSITION:
        raise MatrixError(400, f"Invalid '{name}' token", Codes.INVALID_PARAM)
    return value


def parse_stream_token(raw: str, prefix: str, min_fields: int, max_fields: int) -> list[int]:
    """``<prefix><n>_<n>...``: between min_fields and max_fields positions, each bounded
    by MAX_POSITION; 400 M_INVALID_PARAM for anything else (sync tokens)."""
    bad = MatrixError(400, "Invalid stream token", Codes.INVALID_PARAM)
    if not raw.startswith(prefix) or len(raw) > max_fields * 20 + len(prefix):
        raise bad
    parts = raw[len(prefix):].split("_")
    if not min_fields <= len(parts) <= max_fields:
        raise bad
    try:
        return [parse_position(p, "since") for p in parts]
    except MatrixError as e:
        raise bad from e


def json_int(minimum: int = 0, maximum: int = MAX_SAFE_INTEGER, nullable: bool = False
             ) -> dict[str, Any]:
    """A JSON-schema integer with both bounds (schema failures on them are 400
    M_INVALID_PARAM): body integers never exceed what canonical JSON and SQL hold."""
    return {"type": ["integer", "null"] if nullable else "integer",
            "minimum": minimum, "maximum": maximum}

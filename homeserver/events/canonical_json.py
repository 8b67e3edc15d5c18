"""Matrix canonical JSON (appendices, "Canonical JSON"), strictly.

Hashes and signatures are computed over these bytes, so two servers must produce the
same bytes for the same value. The spec's encoding is the shortest UTF-8 JSON with keys
sorted by code point, and numbers only as integers in ``[-(2**53)+1, (2**53)-1]``
("Float values are not permitted"). Room versions 6+ require strict enforcement; Parley
enforces it for every room version (events its clients send in v1-v5 rooms too), so
anything outside that is refused with :class:`ValueError` rather than silently rounded
or stringified.

One subtlety: ``1e10`` is an integer written in exponent form. Python's ``json`` parses
it as a float, and ``canonicaljson`` would then print ``10000000000.0``; the spec's own
test vector expects ``10000000000``. Integral numbers are therefore turned into ints
(both in :func:`parse_json_value` and defensively in :func:`encode_canonical_json`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import canonicaljson

MAX_SAFE_INTEGER = 2**53 - 1
MIN_SAFE_INTEGER = -(2**53) + 1
# Longest decimal text of an in-range integer: "-9007199254740991" (17 characters).
_MAX_INT_TEXT = len(str(MIN_SAFE_INTEGER))


def _check_int(value: int) -> int:
    if not MIN_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        raise ValueError("integer is outside the canonical JSON range [-(2**53)+1, (2**53)-1]")
    return value


def _float_to_int(value: float) -> int:
    """An integral, in-range float as an int; anything else is refused."""
    if not math.isfinite(value) or not value.is_integer():
        raise ValueError(f"non-integral number {value!r} is not allowed in canonical JSON")
    return _check_int(int(value))


def _normalise(value: Any) -> Any:
    """Validate ``value`` for canonical JSON, converting integral floats to ints.

    The original object is returned when nothing inside it changed (the common case, no
    floats), so callers keep their own dicts.
    """
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        return _check_int(value)
    if isinstance(value, float):
        return _float_to_int(value)
    if isinstance(value, Mapping):
        changed = not isinstance(value, dict)
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                # json.dumps would stringify it, possibly colliding with a real string key.
                raise ValueError(f"object keys must be strings, not {type(key).__name__}")
            new = _normalise(item)
            changed = changed or new is not item
            out[key] = new
        return out if changed else value
    if isinstance(value, (list, tuple)):
        items = [_normalise(item) for item in value]
        if isinstance(value, list) and all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return items
    raise ValueError(f"{type(value).__name__} is not a JSON value")


def encode_canonical_json(obj: Any) -> bytes:
    """The canonical JSON bytes of ``obj``.

    Raises :class:`ValueError` for non-integral or out-of-range numbers, NaN/infinity,
    non-string keys, lone surrogates in strings, non-JSON types and excessive nesting.
    """
    try:
        return canonicaljson.encode_canonical_json(_normalise(obj))
    except RecursionError as exc:
        raise ValueError("JSON value is nested too deeply") from exc
    except UnicodeEncodeError as exc:  # lone surrogate: not representable in UTF-8
        raise ValueError(f"string is not valid Unicode: {exc.reason}") from exc


def _parse_int(text: str) -> int:
    # Checked on the text first so a huge digit string never becomes a huge int.
    if len(text) > _MAX_INT_TEXT:
        raise ValueError(f"integer {text[:20]}... is outside the canonical JSON range")
    return _check_int(int(text))


def _parse_float(text: str) -> int:
    """Numbers with a fraction or exponent: accepted only when integral (``1e10``,
    ``2.0``), decided exactly with :class:`~decimal.Decimal`, never via a lossy float."""
    try:
        number = Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - json only passes valid numbers
        raise ValueError(f"invalid number {text!r}") from exc
    # Range first: comparisons are exact and cheap even for "1e999999999".
    if not MIN_SAFE_INTEGER <= number <= MAX_SAFE_INTEGER:
        raise ValueError(f"number {text[:40]} is outside the canonical JSON range")
    if number != number.to_integral_value():
        raise ValueError(f"non-integral number {text[:40]} is not allowed in canonical JSON")
    return int(number)


def _parse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:40]!r} in JSON object")
        out[key] = value
    return out


def parse_json_value(data: str | bytes, *, reject_duplicate_keys: bool = True) -> Any:
    """Parse JSON text for use in events and signed objects.

    Integral numbers in exponent or fraction form become ints; non-integral numbers,
    integers outside the canonical range, ``NaN``/``Infinity`` and (by default) duplicate
    object keys raise :class:`ValueError`. Duplicates are refused because different JSON
    parsers keep different copies, so a signed object could mean different things to
    different servers. Bytes must be UTF-8 (no BOM sniffing of UTF-16/32).
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError("JSON is not valid UTF-8") from exc
    else:
        text = data
    try:
        return json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
            object_pairs_hook=_unique_keys if reject_duplicate_keys else None,
        )
    except RecursionError as exc:
        raise ValueError("JSON value is nested too deeply") from exc

"""Opaque, stateless pagination tokens: a short JSON list, URL-safe base64 encoded.

The one codec for every opaque token Parley hands out (/hierarchy, /threads, /search
``next_batch``, /publicRooms ``since``, /mutual_rooms). Decoding never trusts the client:
the token is length-bounded, strictly base64, and every item is checked against the
declared shape (type, integer bounds that fit a BIGINT, strings that can be stored), so
any malformed or out-of-range token is the same 400 ``M_INVALID_PARAM``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.http.errors import Codes, MatrixError
from homeserver.http.params import MAX_POSITION


@dataclass(frozen=True)
class Int:
    """An integer item in [minimum, maximum] (None too when ``nullable``)."""

    minimum: int = 0
    maximum: int = MAX_POSITION
    nullable: bool = False

    def ok(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        return type(value) is int and self.minimum <= value <= self.maximum


@dataclass(frozen=True)
class Str:
    """A string item that can be stored (no NUL, no lone surrogate, at most ``max_bytes``
    of UTF-8), starting with ``prefix``, or one of ``choices``."""

    prefix: str = ""
    max_bytes: int = 255
    choices: tuple[str, ...] | None = None

    def ok(self, value: Any) -> bool:
        if not isinstance(value, str) or "\x00" in value or not value.startswith(self.prefix):
            return False
        if self.choices is not None and value not in self.choices:
            return False
        try:
            return len(value.encode("utf-8")) <= self.max_bytes
        except UnicodeEncodeError:
            return False


@dataclass(frozen=True)
class Bool:
    def ok(self, value: Any) -> bool:
        return isinstance(value, bool)


Field = Int | Str | Bool


def encode_token(values: list[Any]) -> str:
    raw = json.dumps(values, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_token(token: str, max_length: int, shape: Sequence[Field]) -> list[Any]:
    """The list inside ``token``: exactly one item per field of ``shape``, each valid."""
    if len(token) > max_length or not token.isascii():
        raise bad_token()
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        data = json.loads(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError) as e:
        raise bad_token() from e
    if not isinstance(data, list) or len(data) != len(shape):
        raise bad_token()
    if not all(field.ok(value) for field, value in zip(shape, data, strict=True)):
        raise bad_token()
    return data


def bad_token() -> MatrixError:
    return MatrixError(400, "Unknown pagination token", Codes.INVALID_PARAM)

"""Opaque, stateless pagination tokens: a short JSON list, URL-safe base64 encoded.

Decoding never trusts the client: any malformed token is the same 400.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from homeserver.http.errors import Codes, MatrixError


def encode_token(values: list[Any]) -> str:
    raw = json.dumps(values, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_token(token: str, max_length: int, fields: int) -> list[Any]:
    """The list inside ``token`` (exactly ``fields`` items); the caller checks types."""
    if len(token) > max_length:
        raise bad_token()
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError) as e:
        raise bad_token() from e
    if not isinstance(data, list) or len(data) != fields:
        raise bad_token()
    return data


def bad_token() -> MatrixError:
    return MatrixError(400, "Unknown pagination token", Codes.INVALID_PARAM)

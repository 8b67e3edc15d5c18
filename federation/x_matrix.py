"""The ``X-Matrix`` request authentication scheme (server-server API, "Request
Authentication"): signing our outgoing requests and parsing/checking incoming ones.

A request is authenticated by the origin's signature over the JSON object
``{method, uri, origin, destination, content?}``, carried in the ``Authorization``
header as ``X-Matrix origin=...,destination=...,key="ed25519:...",sig="..."``. The
header is parsed per RFC 9110 auth-params: parameter names are case-insensitive,
values are tokens or quoted strings (with backslash escapes); anything else, a
duplicated parameter or a malformed value is refused. Pure code: the key lookup
and the 401s live in federation/auth.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from signedjson.types import SigningKey, VerifyKey

from homeserver.events.signing import SignatureError, key_id, sign_json, verify_signed_json

JsonDict = dict[str, Any]

MAX_HEADER_LENGTH = 4096
# A server name: a DNS name, an IPv4 literal or a bracketed IPv6 literal, with an
# optional port (appendices, "Server name").
SERVER_NAME = re.compile(
    r"^(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.\-]{1,255})(?::[0-9]{1,5})?\Z")
KEY_ID = re.compile(r"^ed25519:[A-Za-z0-9_]{1,255}\Z")
_SIG = re.compile(r"^[A-Za-z0-9+/=_\-]{1,200}\Z")
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
                         "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
# A token68-free, param-only scheme: the chars a token value may also contain here
# (unquoted ``key=ed25519:abc`` and ``sig=abc/+=`` as older servers send them).
_UNQUOTED_VALUE_CHARS = _TOKEN_CHARS | frozenset(":/=[]")


class XMatrixError(ValueError):
    """The Authorization header is not a well-formed X-Matrix header."""


@dataclass(frozen=True)
class XMatrixAuth:
    origin: str
    destination: str | None
    key: str
    sig: str


def is_valid_server_name(name: str) -> bool:
    if not isinstance(name, str) or not SERVER_NAME.match(name):
        return False
    port = name.rsplit(":", 1)[1] if not name.endswith("]") and ":" in name else None
    return port is None or 0 < int(port) < 65536


def _parse_params(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in " \t,":
            i += 1
        if i >= n:
            return params
        start = i
        while i < n and text[i] in _TOKEN_CHARS:
            i += 1
        name = text[start:i].lower()
        while i < n and text[i] in " \t":
            i += 1
        if not name or i >= n or text[i] != "=":
            raise XMatrixError("expected name=value")
        i += 1
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == '"':
            i += 1
            out = []
            while True:
                if i >= n:
                    raise XMatrixError("unterminated quoted string")
                ch = text[i]
                if ch == "\\":
                    if i + 1 >= n:
                        raise XMatrixError("unterminated quoted string")
                    out.append(text[i + 1])
                    i += 2
                    continue
                if ch == '"':
                    i += 1
                    break
                if ord(ch) < 0x20 or ord(ch) == 0x7F:
                    raise XMatrixError("control character in quoted string")
                out.append(ch)
                i += 1
            value = "".join(out)
        else:
            start = i
            while i < n and text[i] in _UNQUOTED_VALUE_CHARS:
                i += 1
            value = text[start:i]
            if not value:
                raise XMatrixError("empty parameter value")
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] != ",":
            raise XMatrixError("expected ',' between parameters")
        if name in params:
            raise XMatrixError(f"duplicate parameter {name}")
        params[name] = value


def parse_x_matrix(header: str) -> XMatrixAuth:
    """Parse one ``Authorization`` header value; :class:`XMatrixError` if it is not a
    well-formed X-Matrix header with valid origin, destination, key id and signature."""
    if not isinstance(header, str) or len(header) > MAX_HEADER_LENGTH:
        raise XMatrixError("header missing or too long")
    scheme, sep, rest = header.strip().partition(" ")
    if scheme.lower() != "x-matrix" or not sep:
        raise XMatrixError("not an X-Matrix header")
    params = _parse_params(rest)
    origin, key, sig = params.get("origin"), params.get("key"), params.get("sig")
    destination = params.get("destination")
    if origin is None or key is None or sig is None:
        raise XMatrixError("origin, key and sig are required")
    if not is_valid_server_name(origin):
        raise XMatrixError("invalid origin")
    if destination is not None and not is_valid_server_name(destination):
        raise XMatrixError("invalid destination")
    if not KEY_ID.match(key):
        raise XMatrixError("invalid key id")
    if not _SIG.match(sig):
        raise XMatrixError("invalid signature encoding")
    return XMatrixAuth(origin, destination, key, sig)


def request_json(method: str, uri: str, origin: str, destination: str,
                 content: Any = None) -> JsonDict:
    """The object whose signature authenticates a request (``content`` only if the
    request has a JSON body)."""
    obj: JsonDict = {"method": method.upper(), "uri": uri, "origin": origin,
                     "destination": destination}
    if content is not None:
        obj["content"] = content
    return obj


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sign_request(signing_key: SigningKey, origin: str, destination: str, method: str,
                 uri: str, content: Any = None) -> str:
    """The ``Authorization`` header value for one outgoing request. ``uri`` is the path
    with its query string, exactly as sent."""
    signed = sign_json(request_json(method, uri, origin, destination, content), origin,
                       signing_key)
    kid = key_id(signing_key)
    sig = signed["signatures"][origin][kid]
    return (f"X-Matrix origin={_quote(origin)},destination={_quote(destination)},"
            f"key={_quote(kid)},sig={_quote(sig)}")


def verify_request(auth: XMatrixAuth, verify_key: VerifyKey, our_name: str, method: str,
                   uri: str, content: Any = None) -> None:
    """Check an incoming request's signature with the origin's key ``auth.key``;
    :class:`SignatureError` if the destination is not us or the signature is wrong."""
    if auth.destination is not None and auth.destination != our_name:
        raise SignatureError("request is for another destination")
    if key_id(verify_key) != auth.key:
        raise SignatureError("key id mismatch")
    obj = request_json(method, uri, auth.origin, our_name, content)
    obj["signatures"] = {auth.origin: {auth.key: auth.sig}}
    verify_signed_json(obj, auth.origin, verify_key)

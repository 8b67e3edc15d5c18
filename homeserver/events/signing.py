"""The server's Ed25519 signing key, JSON signatures, and event signing/verification
(appendices "Signing JSON"; server-server API "Signing events", "Checks performed on
receipt of a PDU").

Keys are signedjson/PyNaCl ``SigningKey`` objects (with ``alg`` and ``version``), so they
interoperate with the rest of the Matrix Python ecosystem; the bytes that get signed are
always produced by our strict :func:`encode_canonical_json`, never by a lenient encoder.

The key file uses Synapse's format, one key per line: ``ed25519 <version> <seed>`` where
the seed is unpadded Base64 of the 32-byte private seed. The file functions are the only
I/O in the events package.
"""

from __future__ import annotations

import copy
import hmac
import logging
import os
import re
import secrets
import stat
import string
from typing import Any

import nacl.exceptions
import nacl.signing
from signedjson.key import NACL_ED25519, get_verify_key
from signedjson.key import generate_signing_key as _signedjson_generate
from signedjson.sign import SignatureVerifyException
from signedjson.types import SigningKey, VerifyKey

from homeserver.events.canonical_json import encode_canonical_json
from homeserver.events.hashing import compute_content_hash, decode_base64, encode_base64
from homeserver.events.redaction import prune_event_dict
from homeserver.events.room_versions import RoomVersion

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]

# Key versions (the part after "ed25519:") are limited to [a-zA-Z0-9_] by the spec's
# key id grammar; anything else is refused so a key file cannot inject odd ids.
_KEY_VERSION = re.compile(r"[A-Za-z0-9_]{1,255}")
_SEED_LEN = 32
_MAX_KEY_FILE = 64 * 1024


class SignatureError(SignatureVerifyException):
    """A signature is missing, malformed or does not verify (a signedjson
    ``SignatureVerifyException``, so existing handlers catch it too)."""


# --------------------------------------------------------------------------- keys

def _check_version(version: str) -> str:
    if not isinstance(version, str) or not _KEY_VERSION.fullmatch(version):
        raise ValueError(f"invalid signing key version {version!r} (allowed: [A-Za-z0-9_])")
    return version


def generate_signing_key(version: str | None = None) -> SigningKey:
    """A fresh Ed25519 key. Without ``version``, ``a_`` + 4 random characters (what
    Synapse uses), so regenerated keys get distinct ids."""
    if version is None:
        alphabet = string.ascii_letters + string.digits
        version = "a_" + "".join(secrets.choice(alphabet) for _ in range(4))
    return _signedjson_generate(_check_version(version))


def signing_key_from_seed(seed: bytes, version: str) -> SigningKey:
    """The key for a 32-byte Ed25519 seed (the private part stored in key files)."""
    if len(seed) != _SEED_LEN:
        raise ValueError(f"an Ed25519 seed is {_SEED_LEN} bytes, got {len(seed)}")
    key: Any = nacl.signing.SigningKey(bytes(seed))
    key.version = _check_version(version)
    key.alg = NACL_ED25519
    return key  # type: ignore[no-any-return]


def key_id(key: SigningKey | VerifyKey) -> str:
    """``ed25519:<version>``, the id signatures are stored under."""
    return f"{key.alg}:{key.version}"


def _parse_key_line(line: str) -> SigningKey:
    """One ``<algorithm> <version> <seed>`` line. Error messages name no field values, so
    a misordered line cannot put the seed into a log."""
    parts = line.split()
    if len(parts) != 3:
        raise ValueError("expected '<algorithm> <version> <seed>'")
    algorithm, version, seed_b64 = parts
    if algorithm != NACL_ED25519:
        raise ValueError("unsupported key algorithm (only ed25519)")
    if not _KEY_VERSION.fullmatch(version):
        raise ValueError("invalid key version (allowed: [A-Za-z0-9_])")
    try:
        seed = decode_base64(seed_b64)
    except ValueError:
        raise ValueError("the seed is not valid Base64") from None
    return signing_key_from_seed(seed, version)


def read_signing_keys_file(path: str) -> list[SigningKey]:
    """Every key in a Synapse-format key file (blank lines and ``#`` comments skipped).

    Warns when the file is readable or writable by group/others: it is the server's
    identity, and anyone holding it can forge our events.
    """
    with open(path, "rb") as fh:
        mode = os.fstat(fh.fileno()).st_mode
        raw = fh.read(_MAX_KEY_FILE + 1)
    if len(raw) > _MAX_KEY_FILE:
        raise ValueError(f"{path}: signing key file is implausibly large")
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("signing key file %s has mode %o; it should be 0600", path, stat.S_IMODE(mode))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: signing key file is not UTF-8 text") from None
    return parse_signing_keys(text, path)


def parse_signing_keys(text: str, path: str) -> list[SigningKey]:
    """The keys in a key file's text (also the plaintext of an encrypted key file,
    homeserver/crypto/signing_key_file.py); ``path`` only names it in errors."""
    keys = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            keys.append(_parse_key_line(line))
        except ValueError as exc:
            # Never echo the line: it holds the private seed.
            raise ValueError(f"{path} line {number}: {exc}") from None
    if not keys:
        raise ValueError(f"{path}: no signing key found")
    return keys


def read_signing_key_file(path: str) -> SigningKey:
    """The server's signing key: the first key of the file (as Synapse)."""
    return read_signing_keys_file(path)[0]


def format_signing_keys(keys: list[SigningKey]) -> bytes:
    """The key file text for ``keys`` (Synapse's format)."""
    return _format_keys(keys)


def _format_keys(keys: list[SigningKey]) -> bytes:
    lines = [f"{k.alg} {_check_version(k.version)} {encode_base64(k.encode())}\n" for k in keys]
    return "".join(lines).encode("ascii")


def write_private_file(path: str, data: bytes, *, overwrite: bool) -> bool:
    """Write ``data`` to ``path`` with mode 0600, atomically: a temporary file in the same
    directory, then rename (``overwrite``) or hard link (fails if ``path`` exists, so
    concurrent first starts cannot replace each other's key). Returns False when
    ``overwrite`` is off and the file already existed."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # regardless of the umask
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def write_signing_key_file(path: str, key: SigningKey | list[SigningKey]) -> None:
    """Write the key(s) in Synapse's format with mode 0600, replacing the file atomically."""
    keys = key if isinstance(key, list) else [key]
    write_private_file(path, _format_keys(keys), overwrite=True)


def load_or_generate_signing_key(path: str) -> SigningKey:
    """The key in ``path``, or a new one written there (0600) if the file does not exist.
    A concurrent creator wins cleanly: its key is read back instead of overwritten."""
    if os.path.exists(path):
        return read_signing_key_file(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    key = generate_signing_key()
    if write_private_file(path, _format_keys([key]), overwrite=False):
        logger.info("generated signing key %s in %s", key_id(key), path)
        return key
    return read_signing_key_file(path)


# --------------------------------------------------------------------------- JSON signing

def sign_json(obj: JsonDict, server_name: str, signing_key: SigningKey) -> JsonDict:
    """A copy of ``obj`` with our signature added under ``signatures[server_name]``.

    The signature covers the canonical JSON of ``obj`` without ``signatures`` and
    ``unsigned``; other signatures already present are kept.
    """
    if not isinstance(obj, dict):
        raise ValueError("only JSON objects can be signed")
    body = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    signature = signing_key.sign(encode_canonical_json(body)).signature
    signatures = copy.deepcopy(obj.get("signatures", {}))
    if not isinstance(signatures, dict):
        raise ValueError("'signatures' must be an object")
    per_server = signatures.setdefault(server_name, {})
    if not isinstance(per_server, dict):
        raise ValueError(f"'signatures.{server_name}' must be an object")
    per_server[key_id(signing_key)] = encode_base64(signature)
    out = dict(obj)
    out["signatures"] = signatures
    return out


def verify_signed_json(obj: JsonDict, server_name: str, verify_key: VerifyKey) -> None:
    """Check ``server_name``'s signature by ``verify_key`` on ``obj``; raise
    :class:`SignatureError` if it is absent, malformed or wrong."""
    kid = key_id(verify_key)
    signatures = obj.get("signatures") if isinstance(obj, dict) else None
    per_server = signatures.get(server_name) if isinstance(signatures, dict) else None
    sig_b64 = per_server.get(kid) if isinstance(per_server, dict) else None
    if not isinstance(sig_b64, str):
        raise SignatureError(f"missing signature for {server_name}, {kid}")
    try:
        signature = decode_base64(sig_b64)
    except ValueError:
        raise SignatureError(f"invalid signature Base64 for {server_name}, {kid}") from None
    if len(signature) != 64:
        raise SignatureError(f"invalid signature length for {server_name}, {kid}")
    body = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    try:
        message = encode_canonical_json(body)
    except ValueError as exc:
        raise SignatureError(f"signed object is not canonical JSON: {exc}") from None
    try:
        verify_key.verify(message, signature)
    except nacl.exceptions.BadSignatureError:
        raise SignatureError(f"bad signature for {server_name}, {kid}") from None


# --------------------------------------------------------------------------- events

def sign_event(
    pdu: JsonDict, server_name: str, signing_key: SigningKey, room_version: RoomVersion | str,
) -> JsonDict:
    """A copy of ``pdu`` with its content hash set and our signature added.

    Per "Signing events": hash the full event into ``hashes.sha256``, redact it, sign the
    redacted form, and copy the resulting ``signatures`` onto the full event. Signing
    the redacted form lets the signature be checked after the event is redacted.
    """
    event = copy.deepcopy(pdu)
    event["hashes"] = {"sha256": encode_base64(compute_content_hash(event))}
    redacted = prune_event_dict(event, room_version)
    event["signatures"] = sign_json(redacted, server_name, signing_key)["signatures"]
    return event


def verify_event_signature(
    pdu: JsonDict, server_name: str, verify_key: VerifyKey, room_version: RoomVersion | str,
) -> None:
    """Check ``server_name``'s signature on an event (over its redacted form, so it holds
    for redacted copies too). Raises :class:`SignatureError`; the content hash is a
    separate check (:func:`check_content_hash`)."""
    try:
        redacted = prune_event_dict(pdu, room_version)
    except ValueError as exc:
        raise SignatureError(f"malformed event: {exc}") from None
    verify_signed_json(redacted, server_name, verify_key)


def check_content_hash(pdu: JsonDict) -> bool:
    """Whether ``hashes.sha256`` matches the event. False also for a missing or malformed
    hash and for events that are not canonical JSON; on False the spec says to use the
    redacted copy of the event instead of the one received."""
    hashes = pdu.get("hashes") if isinstance(pdu, dict) else None
    claimed = hashes.get("sha256") if isinstance(hashes, dict) else None
    if not isinstance(claimed, str):
        return False
    try:
        expected = decode_base64(claimed)
        actual = compute_content_hash(pdu)
    except ValueError:
        return False
    return hmac.compare_digest(expected, actual)


__all__ = [
    "SignatureError", "check_content_hash", "generate_signing_key", "get_verify_key", "key_id",
    "format_signing_keys", "load_or_generate_signing_key", "parse_signing_keys",
    "read_signing_key_file", "read_signing_keys_file", "sign_event",
    "sign_json", "signing_key_from_seed", "verify_event_signature", "verify_signed_json",
    "write_signing_key_file",
]

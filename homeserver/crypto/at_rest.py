"""Envelope encryption of server-held secrets at rest (AES-256-GCM, ``cryptography``).

Why envelopes: each value gets its own random 256-bit data key (DEK); the DEK is
wrapped by a key-encryption key (KEK) from config (``secrets.at_rest_key`` or
``secrets.at_rest_keys``). Rotating the KEK re-wraps values one at a time
(``parley keys rotate``) and a leaked DEK exposes one value only.

A stored value is one ASCII string that fits the TEXT column it replaces::

    pv1.<kek id>.<b64url(wrap nonce | wrapped DEK)>.<b64url(nonce)>.<b64url(ciphertext)>

Both GCM operations authenticate the same associated data: the format version, the KEK
id and the value's :class:`Location` (table, column, row key). A ciphertext copied to
another row, another column or relabelled with another key id fails to decrypt; so does
any flipped bit. Such a value is refused with :class:`AtRestError` (and, through
:meth:`SecretVault.open`, an audit entry), never used.

Without a KEK values are stored as plaintext (a warning is logged at start-up). With
one, plaintext written before the key was configured is still read (unless
``secrets.accept_plaintext: false``) and gets encrypted on its next write or by
``parley keys rotate``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from homeserver.http.errors import Codes, MatrixError

if TYPE_CHECKING:
    from homeserver.config.model import Config
    from homeserver.handlers.security_events import SecurityEventRecorder

logger = logging.getLogger(__name__)

VERSION = "pv1"
PREFIX = VERSION + "."
KEY_BYTES = 32
NONCE_BYTES = 12
KEK_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}\Z")
DEFAULT_KEK_ID = "default"  # the id of the single-key form ``secrets.at_rest_key``
# An envelope is small (secrets, a key file); refuse absurd ones before decoding.
MAX_ENVELOPE = 1024 * 1024


@dataclass(frozen=True)
class Location:
    """Where a value is stored: bound into its ciphertext as associated data."""

    table: str
    column: str
    row: str

    def aad(self, kid: str) -> bytes:
        return json.dumps([VERSION, kid, self.table, self.column, self.row],
                          separators=(",", ":"), ensure_ascii=True).encode("ascii")

    def describe(self) -> str:
        return f"{self.table}.{self.column}"


class AtRestError(MatrixError):
    """A stored value that must not be used: tampered, moved, malformed, under an unknown
    key, or plaintext where only ciphertext is accepted. A 500 for a client (the server's
    own data is bad); ``problem`` says which, for the audit entry. Never holds the value."""

    def __init__(self, problem: str, loc: Location, kid: str | None = None) -> None:
        super().__init__(500, "A stored secret failed its integrity check", Codes.UNKNOWN)
        self.problem = problem
        self.location = loc
        self.kid = kid

    def __str__(self) -> str:
        kid = f" (key id {self.kid})" if self.kid else ""
        return f"refused stored value at {self.location.describe()}: {self.problem}{kid}"


def decode_kek(text: str, name: str) -> bytes:
    """A KEK as configured: 64 hex digits (``openssl rand -hex 32``, what docker/README.md
    generates) or standard / URL-safe Base64 (padding optional) of 32 bytes. Raises
    ValueError naming ``name`` but never echoing the value."""
    cleaned = text.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", cleaned):
        return bytes.fromhex(cleaned)
    try:
        raw = base64.b64decode(cleaned.replace("-", "+").replace("_", "/")
                               + "=" * (-len(cleaned) % 4), validate=True)
    except ValueError:
        raise ValueError(f"{name}: not valid Base64") from None
    if len(raw) != KEY_BYTES:
        raise ValueError(f"{name}: must be {KEY_BYTES} bytes (Base64), got {len(raw)}")
    return raw


def new_kek_text() -> str:
    """A fresh KEK in the configured form (for docs and ``parley keys generate``)."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def is_envelope(stored: str | bytes | None) -> bool:
    if stored is None:
        return False
    if isinstance(stored, bytes):
        return stored.startswith(PREFIX.encode("ascii"))
    return stored.startswith(PREFIX)


def envelope_kid(stored: str) -> str | None:
    """The KEK id an envelope names (None for plaintext)."""
    if not is_envelope(stored):
        return None
    parts = stored.split(".")
    return parts[1] if len(parts) == 5 else None


class Keyring:
    """The configured KEKs by id, and the active one new values are sealed under."""

    def __init__(self, keys: Mapping[str, bytes], active: str) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        for kid, key in keys.items():
            if not KEK_ID.match(kid):
                raise ValueError(f"invalid key id {kid!r} (allowed: [A-Za-z0-9_-], 1-32)")
            if len(key) != KEY_BYTES:
                raise ValueError(f"key {kid}: must be {KEY_BYTES} bytes")
        if active not in keys:
            raise ValueError(f"the active key id {active!r} is not configured")
        self._keys = {kid: AESGCM(key) for kid, key in keys.items()}
        # Per-KEK keys for lookup hashes (derived, so a hash never exposes the KEK).
        self._lookup = {kid: hmac.new(key, b"parley at-rest lookup v1", hashlib.sha256).digest()
                        for kid, key in keys.items()}
        self.active = active

    @property
    def ids(self) -> list[str]:
        return list(self._keys)

    def lookup_hash(self, value: str, purpose: str, kid: str | None = None) -> str:
        """A keyed hash (HMAC-SHA256) of ``value`` for equality lookups of a sealed column
        (``<kid>:<hex>``): the database can find a row by it without holding the value,
        and without the key nobody can test guesses against it."""
        kid = kid or self.active
        mac = hmac.new(self._lookup[kid], json.dumps([purpose, value]).encode("utf-8"),
                       hashlib.sha256)
        return f"{kid}:{mac.hexdigest()}"

    def seal(self, plaintext: bytes, loc: Location) -> str:
        kid = self.active
        aad = loc.aad(kid)
        dek = AESGCM.generate_key(bit_length=256)
        wrap_nonce = os.urandom(NONCE_BYTES)
        wrapped = self._keys[kid].encrypt(wrap_nonce, dek, aad)
        nonce = os.urandom(NONCE_BYTES)
        ct = AESGCM(dek).encrypt(nonce, plaintext, aad)
        return ".".join([VERSION, kid, _b64(wrap_nonce + wrapped), _b64(nonce), _b64(ct)])

    def open(self, stored: str, loc: Location) -> bytes:
        """The plaintext of an envelope, or AtRestError."""
        if len(stored) > MAX_ENVELOPE:
            raise AtRestError("malformed", loc)
        parts = stored.split(".")
        if len(parts) != 5 or parts[0] != VERSION or not KEK_ID.match(parts[1]):
            raise AtRestError("malformed", loc)
        kid = parts[1]
        kek = self._keys.get(kid)
        if kek is None:
            raise AtRestError("unknown_key", loc, kid)
        try:
            wrapped, nonce, ct = _unb64(parts[2]), _unb64(parts[3]), _unb64(parts[4])
        except ValueError:
            raise AtRestError("malformed", loc, kid) from None
        if len(wrapped) != NONCE_BYTES + KEY_BYTES + 16 or len(nonce) != NONCE_BYTES:
            raise AtRestError("malformed", loc, kid)
        aad = loc.aad(kid)
        try:
            dek = kek.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], aad)
            return AESGCM(dek).decrypt(nonce, ct, aad)
        except InvalidTag:
            raise AtRestError("tampered", loc, kid) from None


Refusal = Callable[[AtRestError], Awaitable[None]]


class SecretVault:
    """What stores use: seal on write, open on read, plaintext passthrough without a key.

    ``on_refused`` (set at wiring time to write an audit entry) is awaited before a
    refused value's error propagates from :meth:`open`."""

    def __init__(self, keyring: Keyring | None, accept_plaintext: bool = True,
                 on_refused: Refusal | None = None) -> None:
        self.keyring = keyring
        self.accept_plaintext = accept_plaintext or keyring is None
        self.on_refused = on_refused

    @property
    def enabled(self) -> bool:
        return self.keyring is not None

    def seal(self, plaintext: str, loc: Location) -> str:
        if self.keyring is None:
            return plaintext
        return self.keyring.seal(plaintext.encode("utf-8"), loc)

    def open_sync(self, stored: str, loc: Location) -> str:
        """Decrypt (or pass legacy plaintext through); AtRestError, not audited."""
        if not is_envelope(stored):
            if not self.accept_plaintext:
                raise AtRestError("plaintext_refused", loc)
            return stored
        if self.keyring is None:
            raise AtRestError("unknown_key", loc, envelope_kid(stored))
        try:
            return self.keyring.open(stored, loc).decode("utf-8")
        except UnicodeDecodeError:
            raise AtRestError("malformed", loc) from None

    async def open(self, stored: str | None, loc: Location) -> str | None:
        """:meth:`open_sync`, with a refused value audited before the error is raised."""
        if stored is None:
            return None
        try:
            return self.open_sync(stored, loc)
        except AtRestError as e:
            await self.refused(e)
            raise

    async def refused(self, err: AtRestError) -> None:
        logger.error("%s", err)
        if self.on_refused is not None:
            try:
                await self.on_refused(err)
            except Exception:
                logger.exception("could not audit a refused stored secret")

    def lookup_hash(self, value: str, purpose: str) -> str:
        """The hash new rows store for lookups of ``value`` (:meth:`Keyring.lookup_hash`
        under the active key; without a key an unkeyed SHA-256, the value being
        plaintext then anyway)."""
        if self.keyring is None:
            return "sha256:" + hashlib.sha256(
                json.dumps([purpose, value]).encode("utf-8")).hexdigest()
        return self.keyring.lookup_hash(value, purpose)

    def lookup_hashes(self, value: str, purpose: str) -> list[str]:
        """Every hash a row holding ``value`` may carry: under each configured key (a
        rotation may be half-way) and the unkeyed one (rows written before a key)."""
        out = [self.lookup_hash(value, purpose)]
        if self.keyring is not None:
            out += [self.keyring.lookup_hash(value, purpose, kid)
                    for kid in self.keyring.ids if kid != self.keyring.active]
            out.append(SecretVault(None).lookup_hash(value, purpose))
        return out

    def needs_reseal(self, stored: str | None) -> bool:
        """True if ``stored`` is not sealed under the active key (rotation's test)."""
        if stored is None or self.keyring is None:
            return False
        return envelope_kid(stored) != self.keyring.active

    def reseal(self, stored: str, loc: Location) -> str:
        """``stored`` sealed under the active key (AtRestError if it cannot be opened)."""
        return self.seal(self.open_sync(stored, loc), loc)


PLAINTEXT_VAULT = SecretVault(None)
_warned: list[bool] = []


def vault_from_config(config: Config, on_refused: Refusal | None = None) -> SecretVault:
    """The vault for ``config.at_rest`` (homeserver/config: ``secrets``). Without a key,
    a warning is logged once per process: secrets are then stored as plaintext."""
    at_rest = config.at_rest
    keys = dict(at_rest.keys)
    if not keys:
        if not _warned:
            _warned.append(True)
            logger.warning("secrets.at_rest_key is not set: server-held secrets (TOTP "
                           "secrets, the signing key file, pushers' pushkeys) are stored unencrypted")
        return SecretVault(None, on_refused=on_refused)
    return SecretVault(Keyring(keys, at_rest.active or next(iter(keys))),
                       at_rest.accept_plaintext, on_refused)


def audit_refusals(recorder: SecurityEventRecorder) -> Refusal:
    """An ``on_refused`` writing an ``at_rest_refused`` entry through a
    SecurityEventRecorder (names the place and the problem, never the value)."""

    async def record(err: AtRestError) -> None:
        loc = err.location
        await recorder.record(
            "at_rest_refused", "failure", None, reason=err.problem,
            target=loc.row if loc.row else loc.describe(),
            details={"table": loc.table, "column": loc.column, "row": loc.row,
                     "kek": err.kid or ""})

    return record

"""The server's Ed25519 signing key file, encrypted at rest when a KEK is configured.

Why: the key is the server's federation identity; a copy of the data directory (a
backup, a snapshot) must not be enough to forge its events.

Format of an encrypted file: a comment line, then one at-rest envelope
(homeserver/crypto/at_rest.py) whose plaintext is the usual Synapse-format key file::

    # parley encrypted signing key (secrets.at_rest_key); do not edit
    pv1.<kek id>....

A plaintext (Synapse-format) file is still read when a key is configured; ``parley keys
rotate`` encrypts it. A new key is written encrypted when a key is configured. A
tampered file, or an encrypted one without its key, stops start-up with an error.
"""

from __future__ import annotations

import logging
import os
import stat
from typing import TYPE_CHECKING

from signedjson.types import SigningKey

from homeserver.crypto.at_rest import (
    AtRestError,
    Location,
    SecretVault,
    envelope_kid,
    is_envelope,
    vault_from_config,
)
from homeserver.events.signing import (
    format_signing_keys,
    generate_signing_key,
    key_id,
    parse_signing_keys,
    read_signing_keys_file,
    write_private_file,
)

if TYPE_CHECKING:
    from homeserver.config.model import Config

logger = logging.getLogger(__name__)

HEADER = "# parley encrypted signing key (secrets.at_rest_key); do not edit\n"
# The file is one value of its own: the location binds the envelope to being this file.
LOCATION = Location("file", "signing_key", "ed25519")
_MAX_FILE = 1024 * 1024


def _read_text(path: str) -> str:
    with open(path, "rb") as fh:
        mode = os.fstat(fh.fileno()).st_mode
        raw = fh.read(_MAX_FILE + 1)
    if len(raw) > _MAX_FILE:
        raise ValueError(f"{path}: signing key file is implausibly large")
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("signing key file %s has mode %o; it should be 0600", path,
                       stat.S_IMODE(mode))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: signing key file is not UTF-8 text") from None


def _envelope_of(text: str) -> str | None:
    """The envelope of an encrypted key file's text, None for a plaintext file."""
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    if len(lines) == 1 and is_envelope(lines[0]):
        return lines[0]
    return None


def is_encrypted_file(path: str) -> bool:
    return _envelope_of(_read_text(path)) is not None


def file_kek_id(path: str) -> str | None:
    """The KEK id of an encrypted key file (None: plaintext)."""
    envelope = _envelope_of(_read_text(path))
    return envelope_kid(envelope) if envelope else None


def read_keys(path: str, vault: SecretVault) -> list[SigningKey]:
    """Every key in the file, encrypted or not (AtRestError when refused)."""
    text = _read_text(path)
    envelope = _envelope_of(text)
    if envelope is None:
        if vault.enabled and not vault.accept_plaintext:
            raise AtRestError("plaintext_refused", LOCATION)
        return read_signing_keys_file(path)
    return parse_signing_keys(vault.open_sync(envelope, LOCATION), path)


def encode_file(keys: list[SigningKey], vault: SecretVault) -> bytes:
    """The file's bytes: encrypted when ``vault`` has a key, Synapse's format otherwise."""
    plain = format_signing_keys(keys)
    if not vault.enabled:
        return plain
    return (HEADER + vault.seal(plain.decode("ascii"), LOCATION) + "\n").encode("ascii")


def load_or_generate(path: str, vault: SecretVault) -> SigningKey:
    """The server's key (the file's first, as Synapse), or a new one written there
    (encrypted when ``vault`` has a key)."""
    if not os.path.exists(path):
        key = generate_signing_key()
        if write_private_file(path, encode_file([key], vault), overwrite=False):
            logger.info("generated signing key %s in %s%s", key_id(key), path,
                        " (encrypted at rest)" if vault.enabled else "")
            return key
    try:
        keys = read_keys(path, vault)
    except AtRestError as e:
        raise ValueError(f"{path}: {e}") from None
    if vault.enabled and not is_encrypted_file(path):
        logger.warning("signing key file %s is not encrypted: run 'parley keys rotate' to "
                       "encrypt it under secrets.at_rest_key", path)
    return keys[0]


def load_signing_key(config: Config) -> SigningKey:
    """What the areas call with the config (``signing_key_path``, ``secrets``)."""
    return load_or_generate(config.signing_key_path, vault_from_config(config))


def reseal_file(path: str, vault: SecretVault) -> bool:
    """Rewrite the key file under the active KEK if it is not already (rotation).
    Returns True if rewritten. The rename is atomic: a crash leaves the old file."""
    if not vault.enabled or not os.path.exists(path):
        return False
    envelope = _envelope_of(_read_text(path))
    if envelope is not None and not vault.needs_reseal(envelope):
        return False
    keys = read_keys(path, vault)
    write_private_file(path, encode_file(keys, vault), overwrite=True)
    return True

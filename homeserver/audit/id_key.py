"""The audit key: the secret under which audit entries' identifiers are hashed (chain
version 2, homeserver/audit/chain.py).

Why a key and not a plain hash: user ids, IPs and device ids are guessable, so an
unkeyed hash of an erased user's id could be reversed by trying candidates. With the
key kept out of the database (a 0600 file in the data directory, generated on first
use), a copy of the database alone does not tell who a pseudonym was. Losing the file
does not break verification of the chain's hashes; it only stops verify from checking
the raw identifiers against their MACs (and new entries then use a new key).
"""

from __future__ import annotations

import logging
import os
import secrets

from homeserver.events.signing import write_private_file

logger = logging.getLogger("parley.audit")

FILE_NAME = "audit_id.key"
_KEY_BYTES = 32


def key_path(data_dir: str) -> str:
    return os.path.join(data_dir, FILE_NAME)


def read_audit_key(data_dir: str) -> bytes | None:
    """The key, or None if there is no (valid) key file."""
    try:
        with open(key_path(data_dir), "rb") as fh:
            text = fh.read(1024).decode("ascii", "replace").strip()
    except FileNotFoundError:
        return None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != _KEY_BYTES:
        raise ValueError(f"{key_path(data_dir)}: not a {_KEY_BYTES}-byte hex key")
    return key


def load_or_generate_audit_key(data_dir: str) -> bytes:
    """The key from the data directory, or a new one written there (0600)."""
    key = read_audit_key(data_dir)
    if key is not None:
        return key
    key = secrets.token_bytes(_KEY_BYTES)
    if write_private_file(key_path(data_dir), (key.hex() + "\n").encode("ascii"),
                          overwrite=False):
        logger.info("generated the audit identifier key in %s", key_path(data_dir))
        return key
    found = read_audit_key(data_dir)  # another process wrote it first
    assert found is not None
    return found

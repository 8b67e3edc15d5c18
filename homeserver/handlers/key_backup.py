"""Server-side key backups: versions and the encrypted room keys stored in them.

The server never sees plaintext keys: ``auth_data`` and ``session_data`` are stored and
returned as the client sent them. It only compares the unencrypted metadata to decide
which of two copies of a session to keep (see :func:`should_replace`).
"""

from __future__ import annotations

import json
from typing import Any

from homeserver.http.errors import Codes, MatrixError, not_found
from storage.stores.key_backup import (
    BackupVersion,
    BackupVersionNotFoundError,
    KeyBackupStore,
    KeyTree,
    RoomKey,
    WrongBackupVersionError,
)

MEGOLM_BACKUP_V1 = "m.megolm_backup.v1.curve25519-aes-sha2"
# Sizes of the opaque blobs, as encoded JSON. A megolm session export encrypted for
# backup is about 1 KiB and auth_data is a public key plus a few signatures: these
# bounds leave ample room while keeping one user from filling the database cheaply.
MAX_AUTH_DATA_BYTES = 16 * 1024
MAX_SESSION_DATA_BYTES = 16 * 1024
# Versions are per-user integers; anything longer cannot be one we handed out.
_MAX_VERSION_DIGITS = 18


def should_replace(stored: RoomKey, new: RoomKey) -> bool:
    """Whether an uploaded key replaces the stored copy of the same session.

    Keys are ranked lexicographically: verified beats unverified, then a lower
    ``first_message_index`` (decrypts more history), then a lower ``forwarded_count``;
    only a strictly better key replaces. Synapse instead checks the three conditions
    independently, so a key that decrypts less history can overwrite one that decrypts
    more (synapse#13704, data loss); we do not copy that.
    """
    def rank(k: RoomKey) -> tuple[bool, int, int]:
        return (not k.is_verified, k.first_message_index, k.forwarded_count)

    return rank(new) < rank(stored)


def parse_version(version: str) -> int | None:
    """The integer a version string names, or None when it cannot name one of ours
    (so it is simply unknown: 404, never a database error on an out-of-range value)."""
    if not version.isascii() or not version.isdigit() or len(version) > _MAX_VERSION_DIGITS:
        return None
    value = int(version)
    return value if str(value) == version and value > 0 else None


def _encoded_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def version_json(info: BackupVersion) -> dict[str, Any]:
    return {
        "algorithm": info.algorithm,
        "auth_data": info.auth_data,
        "count": info.count,
        "etag": str(info.etag),
        "version": str(info.version),
    }


def key_json(key: RoomKey) -> dict[str, Any]:
    return {
        "first_message_index": key.first_message_index,
        "forwarded_count": key.forwarded_count,
        "is_verified": key.is_verified,
        "session_data": key.session_data,
    }


def _unknown_version() -> MatrixError:
    return not_found("Unknown backup version")


class KeyBackupHandler:
    def __init__(self, store: KeyBackupStore) -> None:
        self._store = store

    @staticmethod
    def _check_auth_data(auth_data: dict[str, Any] | str) -> None:
        if _encoded_size(auth_data) > MAX_AUTH_DATA_BYTES:
            raise MatrixError(400, "auth_data is too large", Codes.TOO_LARGE)

    async def create_version(self, user_id: str, algorithm: str,
                             auth_data: dict[str, Any] | str) -> str:
        self._check_auth_data(auth_data)
        return str(await self._store.create_version(user_id, algorithm, auth_data))

    async def get_version(self, user_id: str, version: str | None) -> dict[str, Any]:
        """The given version, or the current one when ``version`` is None."""
        number = None
        if version is not None:
            number = parse_version(version)
            if number is None:
                raise _unknown_version()
        info = await self._store.get_version(user_id, number)
        if info is None:
            raise not_found("No current backup version") if version is None else _unknown_version()
        return version_json(info)

    async def update_version(self, user_id: str, version: str, body: dict[str, Any]) -> None:
        """Only ``auth_data`` may change; the algorithm (and ``version``, if given) must match."""
        if "version" in body and body["version"] != version:
            raise MatrixError(400, "Version in body does not match", Codes.INVALID_PARAM)
        number = parse_version(version)
        info = await self._store.get_version(user_id, number) if number is not None else None
        if number is None or info is None:
            raise _unknown_version()
        if body["algorithm"] != info.algorithm:
            raise MatrixError(400, "Algorithm does not match", Codes.INVALID_PARAM)
        self._check_auth_data(body["auth_data"])
        if not await self._store.update_auth_data(user_id, number, body["auth_data"]):
            raise _unknown_version()

    async def delete_version(self, user_id: str, version: str) -> None:
        number = parse_version(version)
        if number is None or not await self._store.delete_version(user_id, number):
            raise _unknown_version()

    async def get_keys(
        self, user_id: str, version: str, room_id: str | None = None, session_id: str | None = None
    ) -> KeyTree:
        number = parse_version(version)
        if number is None:
            raise _unknown_version()
        try:
            return await self._store.get_keys(user_id, number, room_id, session_id)
        except BackupVersionNotFoundError:
            raise _unknown_version() from None

    async def upload_keys(
        self, user_id: str, version: str, rooms: dict[str, dict[str, Any]]
    ) -> dict[str, Any]:
        """Merge ``{room_id: {session_id: key_json}}`` (already schema-checked) into the
        current version; ``{etag, count}``."""
        keys: KeyTree = {}
        for room_id, sessions in rooms.items():
            for session_id, key in sessions.items():
                if _encoded_size(key["session_data"]) > MAX_SESSION_DATA_BYTES:
                    raise MatrixError(400, "session_data is too large", Codes.TOO_LARGE)
                # JSON Schema's "integer" admits 1.0: store the int.
                keys.setdefault(room_id, {})[session_id] = RoomKey(
                    int(key["first_message_index"]), int(key["forwarded_count"]),
                    key["is_verified"], key["session_data"],
                )
        number = parse_version(version)
        if number is None:
            raise _unknown_version()
        if any(not isinstance(k.session_data, dict) for s in keys.values() for k in s.values()):
            # The spec's algorithm encrypts to an object; only other (opaque) algorithms
            # may store a bare string. A version that vanished is reported by the store.
            info = await self._store.get_version(user_id, number)
            if info is not None and info.algorithm == MEGOLM_BACKUP_V1:
                raise MatrixError(400, f"session_data must be an object for {MEGOLM_BACKUP_V1}",
                                  Codes.BAD_JSON)
        try:
            etag, count = await self._store.upload_keys(user_id, number, keys, should_replace)
        except BackupVersionNotFoundError:
            raise _unknown_version() from None
        except WrongBackupVersionError as e:
            raise MatrixError(403, "Wrong backup version.", Codes.WRONG_ROOM_KEYS_VERSION,
                              current_version=str(e.current)) from None
        return {"etag": str(etag), "count": count}

    async def delete_keys(
        self, user_id: str, version: str, room_id: str | None = None, session_id: str | None = None
    ) -> dict[str, Any]:
        number = parse_version(version)
        if number is None:
            raise _unknown_version()
        try:
            etag, count = await self._store.delete_keys(user_id, number, room_id, session_id)
        except BackupVersionNotFoundError:
            raise _unknown_version() from None
        return {"etag": str(etag), "count": count}

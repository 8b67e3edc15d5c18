"""Our own server keys as other servers see them (``GET /_matrix/key/v2/server``).

The signing key is the one events are signed with (homeserver/crypto/signing_key_file.py).
Every key ever published is kept in ``server_signing_key_history``: when the key file
is rotated, the previous key is listed in ``old_verify_keys`` with the time it was
retired, so events it signed still verify elsewhere.
"""

from __future__ import annotations

from typing import Any

from signedjson.key import get_verify_key
from signedjson.types import SigningKey

from homeserver.clock import Clock
from homeserver.events.hashing import encode_base64
from homeserver.events.signing import key_id, sign_json
from storage.stores.server_keys import ServerKeyStore

JsonDict = dict[str, Any]


class LocalServerKeys:
    def __init__(self, server_name: str, signing_key: SigningKey, store: ServerKeyStore,
                 clock: Clock, validity_period_s: float) -> None:
        self.server_name = server_name
        self.signing_key = signing_key
        self.key_id = key_id(signing_key)
        self.verify_key = get_verify_key(signing_key)
        self._store = store
        self._clock = clock
        self._validity_ms = int(validity_period_s * 1000)

    async def start(self) -> None:
        """Note the current key in the history (retiring any other)."""
        await self._store.note_current_key(
            self.key_id, encode_base64(self.verify_key.encode()), self._clock.time_msec())

    async def key_response(self) -> JsonDict:
        """The signed answer of ``/_matrix/key/v2/server``, valid for the configured
        period from now."""
        old: JsonDict = {}
        for rec in await self._store.own_keys():
            if rec.expired_ts is not None and rec.key_id != self.key_id:
                old[rec.key_id] = {"key": rec.verify_key, "expired_ts": rec.expired_ts}
        body: JsonDict = {
            "server_name": self.server_name,
            "verify_keys": {self.key_id: {"key": encode_base64(self.verify_key.encode())}},
            "old_verify_keys": old,
            "valid_until_ts": self._clock.time_msec() + self._validity_ms,
        }
        return sign_json(body, self.server_name, self.signing_key)

    def sign(self, obj: JsonDict) -> JsonDict:
        """``obj`` with our signature added (notary answers)."""
        return sign_json(obj, self.server_name, self.signing_key)

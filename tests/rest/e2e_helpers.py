"""A client-side device with real Olm keys (vodozemac), signing what it uploads."""

from __future__ import annotations

import copy
from typing import Any

import vodozemac

from homeserver.events.canonical_json import encode_canonical_json

KEYS = "/_matrix/client/v3/keys"


class OlmDevice:
    def __init__(self, user_id: str, device_id: str, token: str) -> None:
        self.user_id = user_id
        self.device_id = device_id
        self.token = token
        self.account = vodozemac.Account()

    @property
    def ed25519(self) -> str:
        return str(self.account.ed25519_key.to_base64())

    def sign(self, obj: dict[str, Any]) -> dict[str, Any]:
        """``obj`` with this device's signature added (over its canonical JSON)."""
        signed = copy.deepcopy(obj)
        body = {k: v for k, v in signed.items() if k not in ("signatures", "unsigned")}
        sig = self.account.sign(encode_canonical_json(body)).to_base64()
        signed.setdefault("signatures", {}).setdefault(self.user_id, {})[
            f"ed25519:{self.device_id}"] = sig
        return signed

    def device_keys(self) -> dict[str, Any]:
        return self.sign({
            "user_id": self.user_id, "device_id": self.device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {f"curve25519:{self.device_id}": self.account.curve25519_key.to_base64(),
                     f"ed25519:{self.device_id}": self.ed25519},
        })

    def one_time_keys(self, count: int) -> dict[str, Any]:
        self.account.generate_one_time_keys(count)
        out = {f"signed_curve25519:{kid}": self.sign({"key": key.to_base64()})
               for kid, key in self.account.one_time_keys.items()}
        self.account.mark_keys_as_published()
        return out

    def fallback_key(self) -> dict[str, Any]:
        self.account.generate_fallback_key()
        ((kid, key),) = self.account.fallback_key.items()
        return {f"signed_curve25519:{kid}": self.sign({"key": key.to_base64(), "fallback": True})}

"""Argon2id password hashing, off the reactor thread."""

from __future__ import annotations

from argon2 import PasswordHasher as _Argon2
from argon2 import Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from twisted.internet import threads

from homeserver.config.model import PasswordHashingConfig


class PasswordHasher:
    def __init__(self, config: PasswordHashingConfig) -> None:
        self._argon = _Argon2(
            time_cost=config.time_cost,
            memory_cost=config.memory_cost_kib,
            parallelism=config.parallelism,
            type=Type.ID,
        )
        # A real hash to verify against for unknown users, so a failed login
        # costs the same whether or not the account exists.
        self._dummy_hash = self._argon.hash("parley-dummy-password")

    async def hash(self, password: str) -> str:
        return await threads.deferToThread(self._argon.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> tuple[bool, bool]:
        """Return (matches, needs_rehash). A missing hash never matches."""

        def _verify() -> tuple[bool, bool]:
            target = password_hash or self._dummy_hash
            try:
                self._argon.verify(target, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False, False
            if password_hash is None:
                return False, False
            return True, self._argon.check_needs_rehash(password_hash)

        return await threads.deferToThread(_verify)

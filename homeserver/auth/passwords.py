"""Argon2id password hashing, off the reactor thread.

Hashing runs in its own small thread pool rather than the reactor's shared one:
each Argon2 call already uses ``parallelism`` threads and ``memory_cost`` of RAM,
so running more hashes at once than the machine has cores only thrashes caches
and memory (and lets a login flood starve other thread work).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from argon2 import PasswordHasher as _Argon2
from argon2 import Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from twisted.internet import reactor, threads
from twisted.python.threadpool import ThreadPool

from homeserver.auth.ratelimit import limit_exceeded
from homeserver.config.model import PasswordHashingConfig

T = TypeVar("T")

# What a client refused for overload is told to wait before trying again.
OVERLOAD_RETRY_S = 1.0


class PasswordHasher:
    """Hashes and verifies passwords in a bounded pool.

    At most ``max_pending`` hashes are queued or running at once (default: 4 per core);
    beyond that a request is refused with 429 ``M_LIMIT_EXCEEDED`` instead of queueing,
    so a flood of logins cannot build an unbounded backlog of Argon2 work (each queued
    request also holds its connection and memory).
    """

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
        size = max(1, os.cpu_count() or 1)
        self.max_pending = config.max_pending or 4 * size
        self.pending = 0
        self._pool = ThreadPool(minthreads=0, maxthreads=size, name="argon2")
        self._pool.start()

    def stop(self) -> None:
        """Finish queued hashes and end the pool's threads (the homeserver's stop calls this)."""
        self._pool.stop()

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the hashing pool, or refuse with 429 if the pool is saturated."""
        if self.pending >= self.max_pending:
            raise limit_exceeded(OVERLOAD_RETRY_S, "password_hashing")
        self.pending += 1
        try:
            return await threads.deferToThreadPool(reactor, self._pool, fn)
        finally:
            self.pending -= 1

    async def hash(self, password: str) -> str:
        return await self.run(lambda: self._argon.hash(password))

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

        return await self.run(_verify)

"""Running an asyncio (matrix-nio) scenario from a trial test, shared by the e2e tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import threads
from twisted.trial import unittest

from tests.e2e.server_process import ServerProcess


async def run_nio_scenario(
    test: unittest.TestCase,
    server: ServerProcess,
    make_session: Callable[[str], Any],
    scenario: Callable[[Any], Awaitable[None]],
    timeout_s: float,
) -> None:
    """Run ``scenario(session)`` in a fresh asyncio loop on a thread, with a deadline.

    On failure the server log tail is attached, since the interesting half of an e2e
    failure is usually on the server side. ``session.close()`` always runs.
    """

    async def bounded() -> None:
        session = make_session(server.base_url)
        try:
            await asyncio.wait_for(scenario(session), timeout_s)
        finally:
            await session.close()

    try:
        await threads.deferToThread(asyncio.run, bounded())
    except Exception as e:
        what = str(e) if isinstance(e, test.failureException) else f"{type(e).__name__}: {e}"
        raise test.failureException(
            f"{what}\n--- server log (tail) ---\n{server.log_tail()}") from e

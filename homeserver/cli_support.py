"""Running an async CLI command to an exit code (shared by the ``parley`` subcommands)."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable


def react_exit_code(command: Callable[[], Awaitable[int]]) -> int:
    """Run ``command()`` under the reactor until it finishes and return its exit code; an
    exception is printed as one ``error:`` line (never a traceback) and exits 1."""
    from twisted.internet import defer, task

    result = {"code": 1}

    async def go() -> None:
        try:
            result["code"] = await command()
        except Exception as e:  # noqa: BLE001 (any failure is an exit code, not a traceback)
            print(f"error: {e}", file=sys.stderr)
            result["code"] = 1

    try:
        task.react(lambda _r: defer.ensureDeferred(go()))
    except SystemExit:
        pass
    return result["code"]

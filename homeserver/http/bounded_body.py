"""Reading an outbound HTTP answer with a size cap (identity servers, push gateways):
answers from servers we call are untrusted input and must not grow without bound."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import treq


async def read_bounded(resp: Any, cap: int, too_large: Callable[[], Exception],
                       reactor: Any = None, timeout: float | None = None) -> bytes:
    """The body of ``resp``; raises ``too_large()`` past ``cap`` bytes (the connection is
    dropped), and cancels the read after ``timeout`` seconds when a reactor is given."""
    if isinstance(resp.length, int) and resp.length > cap:
        raise too_large()
    chunks: list[bytes] = []
    size = 0

    def collect(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > cap:
            raise too_large()
        chunks.append(data)

    d = treq.collect(resp, collect)
    timer = reactor.callLater(timeout, d.cancel) if reactor is not None and timeout else None
    try:
        await d
    finally:
        if timer is not None and timer.active():
            timer.cancel()
    return b"".join(chunks)

"""Client-server calls for the room scenarios (send, fanout, idle_sync).

``Api`` wraps one aiohttp session and remembers the first few unexpected answers
(request line, status, start of the body; never the token) so that a failing scenario
reports what the server said, not only a status count.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from harness.scenarios.base import BENCH_PASSWORD, BenchContext

MAX_NOTED_ERRORS = 5
MESSAGE = "m.room.message"
# Syncs never change presence: online/offline churn would wake other users' long-polls
# (Synapse has presence on by default) and blur what the scenario measures.
SYNC_PRESENCE = "offline"


@dataclass(frozen=True)
class Account:
    user_id: str
    token: str


def wide_session(connections: int, timeout_s: float,
                 trace_configs: list[aiohttp.TraceConfig] | None = None) -> aiohttp.ClientSession:
    """A session of its own for scenarios that hold many connections (long-polls): the
    shared one is capped at --concurrency connections."""
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    return aiohttp.ClientSession(connector=connector,
                                 timeout=aiohttp.ClientTimeout(total=timeout_s),
                                 trace_configs=trace_configs)


class Api:
    def __init__(self, ctx: BenchContext, session: aiohttp.ClientSession | None = None) -> None:
        self.ctx = ctx
        self.session = session or ctx.session
        self.errors: list[str] = []

    async def call(self, method: str, path: str, token: str | None = None, body: Any = None,
                   params: dict[str, str] | None = None, ok: tuple[int, ...] = (200,),
                   timeout_s: float | None = None, trace: Any = None) -> tuple[int, Any]:
        """One request; ``trace`` is handed to the session's trace hooks
        (``trace_request_ctx``) so a scenario can time that very request."""
        headers = {"Authorization": f"Bearer {token}"} if token else None
        kw: dict[str, Any] = {"headers": headers, "params": params}
        if body is not None:
            kw["json"] = body
        if timeout_s is not None:
            kw["timeout"] = aiohttp.ClientTimeout(total=timeout_s)
        if trace is not None:
            kw["trace_request_ctx"] = trace
        async with self.session.request(method, self.ctx.url(path), **kw) as resp:
            raw = await resp.read()
            status = resp.status
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        if status not in ok:
            self.note(f"{method} {path} -> {status} {raw[:300].decode('utf-8', 'replace')}")
        return status, data

    def note(self, what: str) -> None:
        if len(self.errors) < MAX_NOTED_ERRORS:
            self.errors.append(what)

    # -- set-up (untimed) ------------------------------------------------------------

    async def register(self, localpart: str) -> Account:
        path = "/_matrix/client/v3/register"
        body: dict[str, Any] = {"username": localpart, "password": BENCH_PASSWORD,
                                "initial_device_display_name": "parley-bench"}
        status, data = await self.call("POST", path, body=body, ok=(200, 401))
        if status == 401 and isinstance(data, dict) and "session" in data:
            body["auth"] = {"type": "m.login.dummy", "session": data["session"]}
            status, data = await self.call("POST", path, body=body)
        if status != 200 or not isinstance(data, dict) or "access_token" not in data:
            raise RuntimeError(f"{self.ctx.server}: registering {localpart} failed: {status} "
                               f"{self.errors[-1:] or data}")
        return Account(data["user_id"], data["access_token"])

    async def register_many(self, tag: str, count: int, parallel: int) -> list[Account]:
        """``count`` fresh users ``bench_<run id>_<tag>_<i>``, at most ``parallel`` at once."""
        gate = asyncio.Semaphore(parallel)

        async def one(i: int) -> Account:
            async with gate:
                return await self.register(f"bench_{self.ctx.run_id}_{tag}_{i}")

        return list(await asyncio.gather(*(one(i) for i in range(count))))

    async def create_room(self, owner: Account, public: bool = True) -> str:
        body = {"preset": "public_chat" if public else "private_chat", "name": "bench"}
        status, data = await self.call("POST", "/_matrix/client/v3/createRoom", owner.token, body)
        if status != 200 or not isinstance(data, dict) or "room_id" not in data:
            raise RuntimeError(f"{self.ctx.server}: createRoom failed: {self.errors[-1:]}")
        return str(data["room_id"])

    async def join(self, account: Account, room_id: str) -> None:
        path = f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/join"
        status, _ = await self.call("POST", path, account.token, {})
        if status != 200:
            raise RuntimeError(f"{self.ctx.server}: join failed: {self.errors[-1:]}")

    # -- measured calls --------------------------------------------------------------

    async def send(self, account: Account, room_id: str, txn: str,
                   content: dict[str, Any]) -> tuple[int, str | None]:
        """PUT /rooms/{roomId}/send/m.room.message/{txnId} -> (status, event_id)."""
        path = (f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/send/{MESSAGE}/"
                f"{quote(txn, safe='')}")
        status, data = await self.call("PUT", path, account.token, content)
        event_id = data.get("event_id") if isinstance(data, dict) else None
        if status == 200 and not isinstance(event_id, str):
            self.note(f"PUT {path} -> 200 without event_id: {str(data)[:200]}")
            return -1, None
        return status, event_id

    async def sync(self, account: Account, since: str | None = None, timeout_ms: int = 0,
                   trace: Any = None, presence: str = SYNC_PRESENCE) -> tuple[int, Any]:
        params = {"timeout": str(timeout_ms), "set_presence": presence}
        if since:
            params["since"] = since
        # The client gives the server its long-poll timeout plus a margin before giving up.
        status, data = await self.call("GET", "/_matrix/client/v3/sync", account.token,
                                       params=params, timeout_s=timeout_ms / 1000 + 30,
                                       trace=trace)
        if status == 200 and not (isinstance(data, dict) and isinstance(data.get("next_batch"),
                                                                        str)):
            self.note(f"GET /sync -> 200 without next_batch: {str(data)[:200]}")
            return -1, data
        return status, data


def timeline(data: Any, room_id: str) -> list[dict[str, Any]]:
    """The joined-room timeline events of ``room_id`` in a /sync response body."""
    try:
        events = data["rooms"]["join"][room_id]["timeline"]["events"]
    except (KeyError, TypeError):
        return []
    return [e for e in events if isinstance(e, dict)] if isinstance(events, list) else []

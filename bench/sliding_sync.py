"""Sliding sync (MSC4186) request latency beside classic ``/sync``, for one account in
many rooms (300 by default), on a real ``parley run`` (Parley only).

Measured, each ``--repeat`` times, one request at a time (latency, not throughput):

    sync initial         GET /sync, no since (every room: state + timeline)
    sync idle            GET /sync?since=<latest>, nothing new (timeout=0)
    ss initial           POST sliding sync, new connection, list window [0,19],
                         timeline_limit 1, Element X-like required_state
    ss whole list        the same with the window [0, rooms-1]
    ss idle              the connection resumed (pos), nothing new (timeout=0)
    ss one message       resumed after a message in one room of the list

    .venv/bin/python bench/sliding_sync.py [--rooms 300] [--repeat 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp  # noqa: E402
from harness.loadgen import percentile  # noqa: E402
from harness.runner import CHEAP_HASHING  # noqa: E402
from harness.scenarios.base import BenchContext  # noqa: E402
from harness.scenarios.rooms_api import Api  # noqa: E402
from ops_cost import VariantServer, with_server  # noqa: E402

SS = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
REQUIRED_STATE = [["m.room.name", ""], ["m.room.avatar", ""], ["m.room.encryption", ""],
                  ["m.room.member", "$LAZY"], ["m.room.member", "$ME"],
                  ["m.room.canonical_alias", ""], ["m.room.topic", ""]]


def log(message: str) -> None:
    print(f"[sliding_sync bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


async def timed(api: Api, method: str, path: str, token: str, body: Any = None,
                params: dict[str, str] | None = None) -> tuple[float, Any]:
    t0 = time.perf_counter()
    status, data = await api.call(method, path, token, body, params=params, timeout_s=120)
    elapsed = (time.perf_counter() - t0) * 1000
    if status != 200:
        raise RuntimeError(f"{method} {path}: {status} {api.errors[-1:]}")
    return elapsed, data


def stats(samples: list[float]) -> dict[str, float | None]:
    s = sorted(samples)
    return {"n": len(s), "p50_ms": percentile(s, 50), "p95_ms": percentile(s, 95),
            "max_ms": s[-1] if s else None}


async def scenario(server: VariantServer, args: argparse.Namespace) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        ctx = BenchContext("parley", server.base_url, session, args, secrets.token_hex(3),
                           server_pid=server.pid)
        api = Api(ctx)
        user = (await api.register_many("ss", 1, 1))[0]
        log(f"creating {args.rooms} rooms with a message each")
        rooms = []
        for i in range(args.rooms):
            room = await api.create_room(user, public=False)
            await api.send(user, room, f"seed{i}", {"msgtype": "m.text", "body": f"m{i}"})
            rooms.append(room)
        out: dict[str, list[float]] = {k: [] for k in (
            "sync initial", "sync idle", "ss initial", "ss whole list", "ss idle",
            "ss one message")}

        def ss_body(end: int) -> dict[str, Any]:
            return {"conn_id": "bench", "lists": {"all": {
                "ranges": [[0, end]], "timeline_limit": 1, "required_state": REQUIRED_STATE}}}

        for i in range(args.repeat):
            ms, data = await timed(api, "GET", "/_matrix/client/v3/sync", user.token,
                                   params={"timeout": "0"})
            out["sync initial"].append(ms)
            ms, _ = await timed(api, "GET", "/_matrix/client/v3/sync", user.token,
                                params={"timeout": "0", "since": data["next_batch"]})
            out["sync idle"].append(ms)
            ms, _ = await timed(api, "POST", SS, user.token, ss_body(args.rooms - 1),
                                params={"timeout": "0"})
            out["ss whole list"].append(ms)
            ms, data = await timed(api, "POST", SS, user.token, ss_body(19),
                                   params={"timeout": "0"})
            out["ss initial"].append(ms)
            ms, data = await timed(api, "POST", SS, user.token, ss_body(19),
                                   params={"timeout": "0", "pos": data["pos"]})
            out["ss idle"].append(ms)
            await api.send(user, rooms[i % len(rooms)], f"r{i}",
                           {"msgtype": "m.text", "body": f"round {i}"})
            ms, data = await timed(api, "POST", SS, user.token, ss_body(19),
                                   params={"timeout": "0", "pos": data["pos"]})
            if len(data["rooms"]) != 1:
                raise RuntimeError(f"expected one changed room, got {len(data['rooms'])}")
            out["ss one message"].append(ms)
        return {k: stats(v) for k, v in out.items()} | {"errors": api.errors}


def render(result: dict[str, Any], rooms: int) -> str:
    lines = [f"account in {rooms} rooms        p50 ms    p95 ms    max ms",
             "-" * 56]
    for name, s in result.items():
        if name == "errors":
            continue
        lines.append(f"{name:<24}{s['p50_ms']:>10.1f}{s['p95_ms']:>10.1f}{s['max_ms']:>10.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rooms", type=int, default=300)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--results-dir", type=Path,
                   default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="parley-ss-bench-"))
    try:
        server = VariantServer(root / "parley", {}, CHEAP_HASHING)
        result = asyncio.run(with_server(server, lambda s: scenario(s, args)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("\n" + render(result, args.rooms))
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = args.results_dir / f"sliding_sync-{stamp}.json"
    path.write_text(json.dumps({"rooms": args.rooms, "repeat": args.repeat,
                                "result": result}, indent=2))
    log(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The three scenarios of bench/lead.py (issue 18, "the single-process lead").

* ``state_storage``: one room, N state changes, then the database size.
* ``big_initial_sync``: one account in R rooms of M members, its initial /sync timed.
* ``idle_lead``: N idle long-poll /syncs held (more for Parley than for Synapse), RSS and
  fan-out latency while they are held.

Each function takes a running server's base URL (and pid) and returns a JSON-able dict.
Only loopback is ever targeted (``big_room.Client`` refuses anything else).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from harness.big_room import (
    CS,
    PASSWORD,
    Account,
    Client,
    q,
    register_shared_secret,
    send_text,
)
from harness.procstat import mib, sample_group
from harness.scenarios.base import BenchContext
from harness.scenarios.fanout import FanoutScenario
from harness.scenarios.idle_sync import _IdleRun
from harness.scenarios.rooms_api import Account as ApiAccount
from harness.scenarios.rooms_api import Api, wide_session

T = TypeVar("T")
Say = Callable[[str], None]
CUSTOM_STATE = "org.parley.bench.state"


async def pool(items: Iterable[T], concurrency: int, fn: Callable[[T], Awaitable[None]],
               say: Say, what: str, total: int) -> float:
    """``fn`` over ``items`` with ``concurrency`` workers; progress every 10 s. Seconds."""
    it = iter(items)
    done = 0
    t0 = last = time.monotonic()

    async def worker() -> None:
        nonlocal done, last
        for item in it:
            await fn(item)
            done += 1
            now = time.monotonic()
            if now - last >= 10:
                last = now
                say(f"  {what}: {done}/{total} ({done / (now - t0):.1f}/s)")

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return time.monotonic() - t0


async def register_users(client: Client, secret: str, prefix: str, count: int,
                         concurrency: int, say: Say) -> tuple[list[Account], float]:
    users: list[Account | None] = [None] * count

    async def one(i: int) -> None:
        users[i] = await register_shared_secret(client, secret, f"{prefix}{i:05d}")

    secs = await pool(range(count), concurrency, one, say, "register", count)
    return [u for u in users if u is not None], secs


# ---- state_storage ------------------------------------------------------------------------

async def state_storage(base_url: str, secret: str, args: argparse.Namespace,
                        say: Say) -> dict[str, Any]:
    """N state changes in one room: every other one a join of a fresh user, the rest
    custom state events over ``--state-keys`` keys with changing content."""
    n = args.state_changes
    joins = n // 2
    async with aiohttp.ClientSession() as session:
        client = Client(session, base_url)
        admin = await register_shared_secret(client, secret, "stateadmin", admin=True)
        room = (await client.ok("POST", f"{CS}/createRoom", admin.token, {
            "preset": "public_chat", "name": "state storage"}))["room_id"]
        say(f"registering {joins} users (shared secret)")
        users, reg_s = await register_users(client, secret, "st", joins, args.concurrency, say)

        async def change(i: int) -> None:
            if i % 2 == 0 and i // 2 < len(users):
                await client.ok("POST", f"{CS}/rooms/{q(room)}/join", users[i // 2].token, {},
                                timeout_s=300)
            else:
                key = f"k{i % args.state_keys}"
                await client.ok("PUT", f"{CS}/rooms/{q(room)}/state/{CUSTOM_STATE}/{key}",
                                admin.token, {"n": i, "text": f"state change {i}"},
                                timeout_s=300)

        say(f"{n} state changes in {room} ({joins} joins, {n - joins} custom state events "
            f"over {args.state_keys} keys), {args.concurrency} in flight")
        secs = await pool(range(n), args.concurrency, change, say, "state changes", n)
    return {"room_id": room, "state_changes": n, "joins": joins,
            "custom_state": n - joins, "state_keys": args.state_keys,
            "register_s": round(reg_s, 1), "state_changes_s": round(secs, 1),
            "state_changes_per_s": round(n / secs, 1) if secs else None}


# ---- big_initial_sync ---------------------------------------------------------------------

MARKER = "populated.json"


async def populate_big(base_url: str, secret: str, rooms: int, members: int,
                       concurrency: int, say: Say) -> dict[str, Any]:
    """``rooms`` rooms created by one owner, each joined by the same ``members - 1`` users
    (user-major order, so every room grows at once), and a message per room."""
    t0 = time.monotonic()
    async with aiohttp.ClientSession() as session:
        client = Client(session, base_url)
        owner = await register_shared_secret(client, secret, "bigowner")
        say(f"registering {members - 1} users")
        users, _ = await register_users(client, secret, "bm", members - 1, concurrency, say)
        room_ids: list[str] = [""] * rooms

        async def create(i: int) -> None:
            room_ids[i] = (await client.ok("POST", f"{CS}/createRoom", owner.token, {
                "preset": "public_chat", "name": f"big sync room {i}",
                "topic": f"room {i}"}))["room_id"]

        await pool(range(rooms), concurrency, create, say, "createRoom", rooms)
        total = rooms * len(users)
        say(f"{total} joins ({len(users)} users x {rooms} rooms), {concurrency} in flight")

        async def join(pair: tuple[int, int]) -> None:
            u, r = pair
            await client.ok("POST", f"{CS}/rooms/{q(room_ids[r])}/join", users[u].token, {},
                            timeout_s=300)

        pairs = ((u, r) for u in range(len(users)) for r in range(rooms))
        join_s = await pool(pairs, concurrency, join, say, "joins", total)

        async def message(i: int) -> None:
            await send_text(client, owner.token, room_ids[i], f"hello in room {i}")

        await pool(range(rooms), concurrency, message, say, "messages", rooms)
    return {"rooms": rooms, "members": members, "owner": "bigowner",
            "joins": total, "join_s": round(join_s, 1),
            "joins_per_s": round(total / join_s, 1) if join_s else None,
            "populate_s": round(time.monotonic() - t0, 1)}


def read_marker(workdir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((workdir / MARKER).read_text())
    except (OSError, ValueError):
        return None


def write_marker(workdir: Path, data: dict[str, Any]) -> None:
    (workdir / MARKER).write_text(json.dumps(data, indent=2))


LAZY_FILTER = json.dumps({"room": {"state": {"lazy_load_members": True}}})


async def measure_initial_sync(base_url: str, localpart: str, repeat: int,
                               say: Say) -> dict[str, Any]:
    """Initial /sync of the account, full state and lazy-loading members, alternating,
    each on a fresh login (a new device, so no server-side response cache is reused)."""
    out: dict[str, list[dict[str, Any]]] = {"full": [], "lazy": []}
    async with aiohttp.ClientSession() as session:
        client = Client(session, base_url)
        for rep in range(repeat):
            for kind in ("full", "lazy"):
                login = await client.ok("POST", f"{CS}/login", body={
                    "type": "m.login.password", "password": PASSWORD,
                    "identifier": {"type": "m.id.user", "user": localpart}})
                params = {"timeout": "0", "set_presence": "offline"}
                if kind == "lazy":
                    params["filter"] = LAZY_FILTER
                headers = {"Authorization": f"Bearer {login['access_token']}"}
                t0 = time.perf_counter()
                async with session.get(f"{base_url}{CS}/sync", params=params, headers=headers,
                                       timeout=aiohttp.ClientTimeout(total=1800)) as resp:
                    raw = await resp.read()
                    status = resp.status
                secs = time.perf_counter() - t0
                if status != 200:
                    raise RuntimeError(f"initial /sync ({kind}) -> {status} {raw[:300]!r}")
                sample = {"s": round(secs, 3), "bytes": len(raw), **_sync_counts(raw)}
                out[kind].append(sample)
                say(f"  {kind} initial sync {rep + 1}/{repeat}: {secs:.2f} s, "
                    f"{len(raw) / 1e6:.1f} MB, {sample['rooms']} rooms, "
                    f"{sample['state_events']} state events")
                await client.ok("POST", f"{CS}/logout", login["access_token"], {})
    result: dict[str, Any] = {}
    for kind, samples in out.items():
        times = [s["s"] for s in samples]
        result[kind] = {"median_s": round(statistics.median(times), 3),
                        "first_s": times[0], "samples_s": times,
                        **{k: samples[-1][k] for k in samples[-1] if k != "s"}}
    return result


def _sync_counts(raw: bytes) -> dict[str, int]:
    body = json.loads(raw)
    joined = (body.get("rooms") or {}).get("join") or {}
    state = timeline = members = 0
    for room in joined.values():
        st = (room.get("state") or {}).get("events") or []
        tl = (room.get("timeline") or {}).get("events") or []
        state += len(st)
        timeline += len(tl)
        members += len({e.get("state_key") for e in st + tl
                        if e.get("type") == "m.room.member" and "state_key" in e})
    return {"rooms": len(joined), "state_events": state, "timeline_events": timeline,
            "member_events": members}


# ---- idle_lead ----------------------------------------------------------------------------

async def idle_lead(base_url: str, pid: int | None, idle: int, args: argparse.Namespace,
                    run_id: str, say: Say,
                    snapshot: Callable[[str], Awaitable[None]] | None = None,
                    ) -> dict[str, Any]:
    """``idle`` users in no room hold long-poll /syncs (run.py's idle_sync machinery);
    once all are parked, the fanout scenario runs beside them. RSS of the server's
    process group before, with all held, and at its peak during the fan-out."""
    ns = argparse.Namespace(**vars(args))
    ns.idle_timeout_ms = args.idle_timeout_ms
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        ctx = BenchContext("lead", base_url, session, ns, run_id, server_pid=pid)
        api = Api(ctx)
        say(f"registering {idle} idle users")
        t0 = time.monotonic()
        users: list[ApiAccount] = await api.register_many("idle", idle, args.concurrency)
        say(f"  registered in {time.monotonic() - t0:.0f} s; initial syncs")
        run = _IdleRun(Api(ctx), args.idle_timeout_ms, "offline")
        async with wide_session(idle + 8, args.idle_timeout_ms / 1000 + 60,
                                [run.trace_config()]) as wide:
            run.api = Api(ctx, wide)
            sinces = await run.initial_syncs(users, args.concurrency)
            if snapshot:
                await snapshot("before")
            base = sample_group(pid) if pid else None
            run.ramp_start = time.monotonic()
            tasks = []
            for i, (account, since) in enumerate(zip(users, sinces, strict=True)):
                tasks.append(asyncio.create_task(run.hold(account, since, i)))
                if i % 50 == 49:
                    await asyncio.sleep(0.05)
            peak: list[Any] = []
            sampling = True

            async def sampler() -> None:
                while sampling:
                    if pid and (s := sample_group(pid)) is not None:
                        peak.append(s)
                    await asyncio.sleep(0.5)

            try:
                # Parked: every first request's headers are out, then a settle period.
                deadline = time.monotonic() + 120
                while len(run.first_sent) < idle and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                await asyncio.sleep(args.idle_hold)
                held = sample_group(pid) if pid else None
                held_count = run.outstanding
                if snapshot:
                    await snapshot("held")
                say(f"  {held_count} long-polls held; RSS {mib(held.rss_kib) if held else '?'}"
                    f" MiB; fan-out ({args.fanout_receivers} receivers, "
                    f"{args.fanout_messages} messages) beside them")
                sample_task = asyncio.create_task(sampler())
                fan = (await FanoutScenario().run(ctx)).summary()
                sampling = False
                await sample_task
                held_after = run.outstanding
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "idle_syncs": idle, "held_at_start": held_count, "held_at_end": held_after,
        "poll_errors": run.poll_errors, "early_returns": run.early_returns,
        "rss_mib_before": mib(base.rss_kib) if base else None,
        "rss_mib_held": mib(held.rss_kib) if held else None,
        "rss_mib_peak": mib(max((s.rss_kib for s in peak), default=0)) if peak else None,
        "kib_per_long_poll": round((held.rss_kib - base.rss_kib) / idle, 1)
        if held and base else None,
        "fds_held": held.fds if held else None,
        "fanout": {k: fan.get(k) for k in ("ok", "errors", "p50_ms", "p95_ms", "p99_ms",
                                           "missed", "duplicates", "poll_errors",
                                           "send_p50_ms", "send_p99_ms")},
        "first_errors": (api.errors + run.api.errors + list(fan.get("first_errors") or []))[:8],
    }

"""The two measured phases of bench/workers.py, on any Deployment.

* ``send``: run.py's ``send`` with ``--send-rooms own`` (each sender its own room, so rooms
  spread over the event persisters), driven by loadgen.run_load; every PUT goes to the
  main process's client port (it forwards each send to the room's writer), as a client
  behind a proxy without per-room routing would, or (``Deployment.send_direct``, config
  W) straight to the room's writer, as a proxy routing by room would. With persisters, sender i creates rooms
  until it gets one of writer ``i % 2`` (createRoom picks a writer at random), so both
  persisters get the same number of rooms and of messages.
* ``idle``: run.py's ``idle_sync`` machinery (``_IdleRun``) holds N idle long-polls of
  users in no room; once all are out and ``--idle-hold`` s have passed, the ``fanout``
  machinery (``_FanoutRun``) sends messages one at a time to R receivers long-polling in
  one room, beside them. With client readers every ``GET /sync`` goes to a reader chosen
  by a hash of the access token (as nginx-workers.conf hashes the Authorization header);
  everything else to the main process.

CPU seconds are taken from /proc around the measured part only (not the set-up).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import resource
import time
from collections import Counter
from typing import Any

import aiohttp

from harness.loadgen import run_load
from harness.procstat import mib
from harness.scenarios.base import BenchContext
from harness.scenarios.fanout import _FanoutRun
from harness.scenarios.idle_sync import _IdleRun
from harness.scenarios.rooms_api import Account, Api, wide_session
from harness.workers_servers import Deployment, Usage, cpu_delta, usage

ROOM_ATTEMPTS = 12  # createRoom calls per sender to land on its writer (p of miss: 2^-12)


def writer_for_room(room_id: str, writers: tuple[str, ...]) -> str:
    """Parley's split of rooms over event persisters (a copy of
    homeserver/replication/multi_writer.py: writer_for_room; the bench venv does not
    import Parley)."""
    digest = hashlib.sha256(room_id.encode("utf-8")).digest()
    return writers[int.from_bytes(digest[:8], "big") % len(writers)]


class RoutedApi(Api):
    """``GET /sync`` to one of ``sync_urls`` (sticky on the access token), the rest to
    main; with no ``sync_urls``, plain Api."""

    def __init__(self, ctx: BenchContext, session: aiohttp.ClientSession | None = None,
                 sync_urls: list[str] | None = None) -> None:
        super().__init__(ctx, session)
        self.readers = [Api(dataclasses.replace(ctx, base_url=url), self.session)
                        for url in sync_urls or ()]
        for reader in self.readers:
            reader.errors = self.errors  # one list of unexpected answers

    def reader_of(self, token: str) -> int | None:
        if not self.readers:
            return None
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        return int.from_bytes(digest[:4], "big") % len(self.readers)

    async def call(self, method: str, path: str, token: str | None = None,
                   *args: Any, **kw: Any) -> tuple[int, Any]:
        reader = self.reader_of(token) if token and method == "GET" \
            and path.endswith("/sync") else None
        if reader is None:
            return await super().call(method, path, token, *args, **kw)
        return await self.readers[reader].call(method, path, token, *args, **kw)


async def sample(dep: Deployment) -> Usage:
    """usage() off the event loop (it reads /proc and asks PostgreSQL)."""
    return await asyncio.to_thread(usage, dep)


def client_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def context(dep: Deployment, session: aiohttp.ClientSession, args: argparse.Namespace,
            run_id: str) -> BenchContext:
    return BenchContext(dep.server, dep.base_url, session, args, run_id)


# ---- send --------------------------------------------------------------------------------

async def own_room(api: Api, user: Account, want: str | None,
                   writers: tuple[str, ...]) -> str:
    """A room created by ``user``; with writers, one whose writer is ``want``."""
    room = await api.create_room(user)
    for _ in range(ROOM_ATTEMPTS - 1):
        if want is None or writer_for_room(room, writers) == want:
            break
        room = await api.create_room(user)
    return room


async def send_phase(dep: Deployment, args: argparse.Namespace, run_id: str,
                     session: aiohttp.ClientSession) -> dict[str, Any]:
    api = Api(context(dep, session, args, run_id))
    users = await api.register_many("wsend", args.send_users, args.concurrency)
    writers = dep.writers
    rooms = [await own_room(api, u, writers[i % len(writers)] if writers else None, writers)
             for i, u in enumerate(users)]

    # Per room, where its sends go: main (which forwards), or the room's writer.
    ctx = api.ctx
    by_writer = {w: Api(dataclasses.replace(ctx, base_url=url), session)
                 for w, url in dep.send_direct.items()}
    for direct in by_writer.values():
        direct.errors = api.errors
    targets = [by_writer.get(writer_for_room(room, writers), api) if by_writer else api
               for room in rooms]

    async def op(i: int) -> int:
        k = i % len(users)
        status, _ = await targets[k].send(users[k], rooms[k], f"w{run_id}-{i}",
                                          {"msgtype": "m.text", "body": f"bench message {i}"})
        return status

    before, c0 = await sample(dep), client_cpu_s()
    result = await run_load(op, args.messages, args.concurrency, args.time_limit)
    after, c1 = await sample(dep), client_cpu_s()
    out = result.summary()
    out.update(cpu_delta(before, after))
    out.update({
        "senders": len(users), "rooms": len(set(rooms)),
        "rss_mib": mib(sum(after.rss_kib)), "rss_mib_per_process": [mib(x) for x in after.rss_kib],
        "client_cpu_s": round(c1 - c0, 2), "first_errors": api.errors,
        "send_route": "room's writer" if by_writer else "main",
    })
    if writers:
        split = Counter(writer_for_room(rooms[i % len(users)], writers)
                        for i in range(out["completed"]))
        out["messages_per_writer"] = {w: split.get(w, 0) for w in writers}
    return out


# ---- idle long-polls + fan-out beside them -------------------------------------------------

async def idle_phase(dep: Deployment, args: argparse.Namespace, run_id: str,
                     session: aiohttp.ClientSession, say: Any) -> dict[str, Any]:
    ctx = context(dep, session, args, run_id)
    api = RoutedApi(ctx, session, dep.sync_urls)
    n, r = args.idle_syncs, args.fanout_receivers
    say(f"{dep.key}: registering {n} idle users and {r + 1} fan-out users")
    idle = await api.register_many("widle", n, args.concurrency)
    sender, *receivers = await api.register_many("wfan", r + 1, args.concurrency)
    room = await api.create_room(sender)
    for account in receivers:
        await api.join(account, room)
    run = _IdleRun(api, args.idle_timeout_ms, "offline")
    async with wide_session(n + r + 16, args.idle_timeout_ms / 1000 + 60,
                            [run.trace_config()]) as wide:
        routed = RoutedApi(ctx, wide, dep.sync_urls)
        run.api = routed
        sinces = await run.initial_syncs(idle, args.concurrency)
        base = await sample(dep)
        run.ramp_start = time.monotonic()
        tasks = []
        for i, (account, since) in enumerate(zip(idle, sinces, strict=True)):
            tasks.append(asyncio.create_task(run.hold(account, since, i)))
            if i % args.idle_ramp_batch == args.idle_ramp_batch - 1:
                await asyncio.sleep(0.05)
        peak: list[Usage] = []
        sampling = True

        async def sampler() -> None:
            while sampling:
                peak.append(await sample(dep))
                await asyncio.sleep(0.5)

        try:
            deadline = time.monotonic() + 120
            while len(run.first_sent) < n and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # the last batch reaches the server
            hold0 = await sample(dep)
            await asyncio.sleep(args.idle_hold)
            hold1 = await sample(dep)
            held_count = run.outstanding
            say(f"{dep.key}: {held_count} long-polls held, RSS "
                f"{mib(sum(hold1.rss_kib))} MiB; fan-out beside them")
            sample_task = asyncio.create_task(sampler())
            fan_run = _FanoutRun(routed, room, receivers, args)
            c0 = client_cpu_s()
            fan_failed = None
            try:
                fan = (await fan_run.measure(sender, args.fanout_messages)).summary()
            except (TimeoutError, aiohttp.ClientError, RuntimeError) as exc:
                # e.g. a receiver's initial /sync timing out on a server swamped by
                # the idle long-polls: keep the idle figures, report the failure.
                fan, fan_failed = {}, f"{type(exc).__name__}: {exc}"
            c1 = client_cpu_s()
            sampling = False
            await sample_task
            fan1 = await sample(dep)
            held_after = run.outstanding
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    per_reader = Counter(routed.reader_of(a.token) for a in idle)
    hold = cpu_delta(hold0, hold1)
    fan_cpu = cpu_delta(hold1, fan1)
    peak_rss = max((sum(u.rss_kib) for u in peak), default=0)
    return {
        "idle_syncs": n, "held_at_start": held_count, "held_at_end": held_after,
        "syncs_per_reader": [per_reader.get(i, 0) for i in range(len(dep.sync_urls))],
        "poll_errors": run.poll_errors, "early_returns": run.early_returns,
        "rss_mib_before": mib(sum(base.rss_kib)), "rss_mib_held": mib(sum(hold1.rss_kib)),
        "rss_mib_peak": mib(max(peak_rss, sum(hold1.rss_kib))),
        "rss_mib_held_per_process": [mib(x) for x in hold1.rss_kib],
        "kib_per_long_poll": round((sum(hold1.rss_kib) - sum(base.rss_kib)) / n, 1),
        "hold_s": args.idle_hold,
        "hold_cpu_pct": round(100 * hold["cpu_s"] / args.idle_hold, 1),
        "hold_cpu_pct_per_process": [round(100 * c / args.idle_hold, 1)
                                     for c in hold["cpu_s_per_process"]],
        "hold_db_cpu_pct": round(100 * hold["db_cpu_s"] / args.idle_hold, 1),
        "fanout": {k: fan.get(k) for k in ("receivers", "messages_sent", "ok", "errors",
                                           "elapsed_s", "p50_ms", "p95_ms", "p99_ms",
                                           "missed", "duplicates", "poll_errors",
                                           "send_p50_ms", "send_p99_ms")},
        "fanout_cpu": fan_cpu, "fanout_client_cpu_s": round(c1 - c0, 2),
        "fanout_failed": fan_failed,
        "first_errors": (api.errors + routed.errors)[:8],
    }

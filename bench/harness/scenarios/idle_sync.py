"""idle_sync: hold N idle long-poll /syncs while messages flow in another room.

Set-up (untimed): N fresh "idle" users (in no room at all, so nothing should ever wake
them) and one sender with a room of its own. Each idle user makes an initial /sync, then
loops on GET /sync?since=<next_batch>&timeout=--idle-timeout-ms, re-issuing it as soon as
it returns. The long-polls are opened in batches of 50 (the servers listen with a backlog
of 50).

Phases: *hold* (--idle-hold seconds, nothing else happens) then *send* (--idle-duration
seconds, the sender PUTs messages open-loop at --idle-rate per second). The samples, and
so ops/s and p50/p95/p99, are the send latencies. Also reported, from /proc of the server's
process group: RSS before the long-polls, and peak RSS, CPU (% of one core) and open fds
while they are held; and from the client: the fewest long-polls outstanding at any 0.5 s
sample during the send phase, long-poll errors, and early returns (a /sync that came back
well before its timeout, i.e. an idle user was woken).

Ramp figures ("time until all N long-polls are in flight", from the moment the first is
opened): *sent* is when the last request's headers were written on an established
connection (client side; a full listen backlog shows here); *parked* is when the server
had the last one waiting, estimated for each long-poll as the time its first answer came
back minus its timeout (both servers start the timeout clock when they park the request,
so this is an upper bound by the time to build an empty answer). The scenario waits for
every first answer (up to timeout + 90 s) so the figure is complete.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import aiohttp

from harness.loadgen import TRANSPORT_ERROR, LoadResult, Sample
from harness.procstat import GroupSample, cpu_percent, mib, sample_group
from harness.scenarios.base import BenchContext, Scenario, int_range
from harness.scenarios.rooms_api import Account, Api, wide_session

RAMP_BATCH = 50


class IdleSyncScenario(Scenario):
    name = "idle_sync"
    description = "N idle long-poll /syncs held while another room gets messages"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--idle-syncs", type=int_range(1, 5000), default=1000,
                            help="idle_sync: long-polls (= idle users) held at once (1000)")
        parser.add_argument("--idle-timeout-ms", type=int_range(1000, 120_000), default=30_000,
                            help="idle_sync: /sync timeout of the idle long-polls (30000)")
        parser.add_argument("--idle-hold", type=float, default=5.0,
                            help="idle_sync: seconds of holding only, before sending (5)")
        parser.add_argument("--idle-duration", type=float, default=40.0,
                            help="idle_sync: seconds of sending while holding (40)")
        parser.add_argument("--idle-rate", type=float, default=5.0,
                            help="idle_sync: messages per second in the other room (5)")
        parser.add_argument("--idle-ramp-batch", type=int_range(1, 5000), default=RAMP_BATCH,
                            help="idle_sync: long-polls opened per 50 ms step (50; the idle "
                                 "count opens them all at once, like clients reconnecting "
                                 "after a restart)")
        parser.add_argument("--idle-presence", choices=("offline", "online"), default="offline",
                            help="idle_sync: set_presence of the idle /syncs (offline; online "
                                 "is what most clients send)")

    async def run(self, ctx: BenchContext) -> LoadResult:
        args = ctx.args
        api = Api(ctx)
        idle = await api.register_many("idle", args.idle_syncs, args.concurrency)
        sender = await api.register(f"bench_{ctx.run_id}_idlesender")
        room = await api.create_room(sender)
        pid = ctx.server_pid
        run = _IdleRun(Api(ctx), args.idle_timeout_ms, args.idle_presence)
        async with wide_session(len(idle) + 8, args.idle_timeout_ms / 1000 + 60,
                                [run.trace_config()]) as session:
            run.api = Api(ctx, session)
            result = await run.measure(idle, sender, room, pid, args)
        result.extra["first_errors"] = api.errors + run.api.errors
        return result


class _IdleRun:
    def __init__(self, api: Api, timeout_ms: int, presence: str = "offline") -> None:
        self.api, self.timeout_ms, self.presence = api, timeout_ms, presence
        self.outstanding = 0
        self.poll_errors = self.early_returns = self.returns = 0
        # Ramp: monotonic times per long-poll (index) of its first request.
        self.ramp_start = 0.0
        self.first_sent: dict[int, float] = {}
        self.first_parked: dict[int, float] = {}

    def trace_config(self) -> aiohttp.TraceConfig:
        """Records when the headers of each long-poll's first request were written."""
        tc = aiohttp.TraceConfig()

        async def headers_sent(_session: Any, ctx: Any, _params: Any) -> None:
            key = ctx.trace_request_ctx
            if isinstance(key, int):
                self.first_sent.setdefault(key, time.monotonic())

        tc.on_request_headers_sent.append(headers_sent)
        return tc

    async def hold(self, account: Account, since: str, index: int) -> None:
        first = True
        while True:
            self.outstanding += 1
            t0 = time.monotonic()
            try:
                status, data = await self.api.sync(account, since, self.timeout_ms,
                                                   trace=index if first else None,
                                                   presence=self.presence)
            except (TimeoutError, aiohttp.ClientError) as exc:
                status, data = TRANSPORT_ERROR, None
                self.api.note(f"GET /sync (idle): {type(exc).__name__}: {exc}")
            finally:
                self.outstanding -= 1
            if status != 200:
                self.poll_errors += 1
                await asyncio.sleep(1.0)
                continue
            self.returns += 1
            now = time.monotonic()
            waited = now - t0
            if first:
                # Parked at the latest one timeout before it came back (a woken one: when
                # it came back).
                parked = now - self.timeout_ms / 1000
                self.first_parked[index] = now if waited < 0.8 * self.timeout_ms / 1000 \
                    else max(parked, t0)
                first = False
            if waited < 0.8 * self.timeout_ms / 1000:
                self.early_returns += 1
                self.api.note(f"GET /sync (idle) returned after {waited:.1f}s of "
                              f"{self.timeout_ms / 1000:g}s: {_nonempty(data)}")
            since = data["next_batch"]

    async def initial_syncs(self, idle: list[Account], parallel: int) -> list[str]:
        gate = asyncio.Semaphore(parallel)

        async def one(account: Account) -> str:
            async with gate:
                status, data = await self.api.sync(account, presence=self.presence)
            if status != 200:
                raise RuntimeError(f"initial /sync failed: {self.api.errors[-1:]}")
            return str(data["next_batch"])

        return list(await asyncio.gather(*(one(a) for a in idle)))

    async def measure(self, idle: list[Account], sender: Account, room: str, pid: int | None,
                      args: argparse.Namespace) -> LoadResult:
        sinces = await self.initial_syncs(idle, args.concurrency)
        base = _sample(pid)
        tasks = []
        self.ramp_start = time.monotonic()
        for i, (account, since) in enumerate(zip(idle, sinces, strict=True)):
            tasks.append(asyncio.create_task(self.hold(account, since, i)))
            if i % args.idle_ramp_batch == args.idle_ramp_batch - 1:
                await asyncio.sleep(0.05)
        result = LoadResult(requested=max(1, int(args.idle_duration * args.idle_rate)),
                            concurrency=len(idle))
        try:
            await asyncio.sleep(1.0)  # let the last batch connect
            hold0 = _sample(pid)
            await asyncio.sleep(args.idle_hold)
            hold1 = _sample(pid)
            peak, held_min = await self._send_phase(sender, room, pid, args, result)
            send1 = _sample(pid)
            await self._await_first_answers(len(idle))
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        result.extra.update({
            "idle_syncs": len(idle), "held_min": held_min, "poll_errors": self.poll_errors,
            "early_returns": self.early_returns, "poll_returns": self.returns,
            "server_rss_mib_before": mib(base.rss_kib) if base else None,
            "server_rss_mib_peak": mib(max((s.rss_kib for s in peak), default=None)),
            "server_fds_before": base.fds if base else None,
            "server_fds_peak": max((s.fds for s in peak), default=None),
            "server_cpu_pct_hold": cpu_percent(hold0, hold1),
            "server_cpu_pct_send": cpu_percent(hold1, send1),
            **self.ramp_figures(len(idle)),
        })
        return result

    async def _await_first_answers(self, count: int) -> None:
        """Wait (at most timeout + 90 s after the ramp began) until every long-poll has
        come back once, so the *parked* ramp figure covers all of them."""
        limit = self.ramp_start + self.timeout_ms / 1000 + 90
        while len(self.first_parked) < count and time.monotonic() < limit:
            await asyncio.sleep(0.5)

    def ramp_figures(self, count: int) -> dict[str, Any]:
        """Seconds from the first long-poll opened until all were sent / parked."""
        def last(times: dict[int, float]) -> float | None:
            if not times:
                return None
            return round(max(times.values()) - self.ramp_start, 2)

        parked = sorted(t - self.ramp_start for t in self.first_parked.values())
        return {
            "ramp_sent_all_s": last(self.first_sent),
            "ramp_parked_p50_s": round(parked[len(parked) // 2], 2) if parked else None,
            "ramp_parked_all_s": last(self.first_parked),
            "ramp_unaccounted": count - len(self.first_parked),
        }

    async def _send_phase(self, sender: Account, room: str, pid: int | None,
                          args: argparse.Namespace, result: LoadResult,
                          ) -> tuple[list[GroupSample], int]:
        """Open-loop sends at --idle-rate for --idle-duration; samples the server and the
        number of outstanding long-polls every 0.5 s."""
        peak: list[GroupSample] = []
        held_min = self.outstanding

        async def send_one(i: int) -> None:
            t0 = time.perf_counter()
            try:
                status, _ = await self.api.send(sender, room, f"i{i}",
                                                {"msgtype": "m.text", "body": f"flow {i}"})
            except (TimeoutError, aiohttp.ClientError):
                status = TRANSPORT_ERROR
            result.samples.append(Sample(time.perf_counter() - t0, status))

        start = time.perf_counter()
        senders: list[asyncio.Task[None]] = []
        next_sample = start
        for i in range(result.requested):
            due = start + i / args.idle_rate
            while (now := time.perf_counter()) < due:
                if now >= next_sample:
                    held_min = min(held_min, self.outstanding)
                    if (s := _sample(pid)) is not None:
                        peak.append(s)
                    next_sample += 0.5
                await asyncio.sleep(min(due - now, max(0.0, next_sample - now)) or 0.01)
            senders.append(asyncio.create_task(send_one(i)))
        await asyncio.gather(*senders)
        result.elapsed_s = time.perf_counter() - start
        return peak, held_min


def _nonempty(data: dict[str, Any]) -> str:
    """The parts of a /sync body that carry something (to show why it returned)."""
    def full(v: Any) -> bool:
        return bool(v) if not isinstance(v, dict) else any(full(x) for x in v.values())
    return str({k: v for k, v in data.items() if k != "next_batch" and full(v)})[:300]


def _sample(pid: int | None) -> GroupSample | None:
    return sample_group(pid) if pid else None

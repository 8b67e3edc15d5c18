"""fanout: one sender, R receivers long-polling /sync in the same room.

Set-up (untimed): R+1 fresh users; the sender creates a public room, the receivers join
and make an initial /sync. Each receiver then loops: GET /sync?since=<next_batch>
&timeout=<ms>, and re-issues it with the new ``next_batch`` as soon as it returns.

Measured: the sender sends M messages *one at a time*. Before each, it waits until every
receiver has re-issued its long-poll (plus --fanout-settle-ms so the requests are parked
in the server), then records t0 and PUTs the message (content carries ``bench_seq``). A
sample is, per receiver, the time from t0 until that receiver's /sync returned with the
event. A receiver that has not seen it after --fanout-wait seconds counts as an error
(status 0). ops/s is deliveries per second of a *paced* run, not a throughput figure.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field

import aiohttp

from harness.loadgen import TRANSPORT_ERROR, LoadResult, Sample, percentile
from harness.scenarios.base import BenchContext, Scenario, int_range
from harness.scenarios.rooms_api import MESSAGE, Account, Api, timeline, wide_session


@dataclass
class _Slot:
    receivers: int
    arrivals: dict[int, float] = field(default_factory=dict)
    duplicates: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def arrive(self, receiver: int, at: float) -> None:
        if receiver in self.arrivals:
            self.duplicates += 1
            return
        self.arrivals[receiver] = at
        if len(self.arrivals) == self.receivers:
            self.done.set()


class FanoutScenario(Scenario):
    name = "fanout"
    description = "send -> each receiver's long-poll /sync returning with the event"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--fanout-receivers", type=int_range(1, 500), default=10,
                            help="fanout: receivers long-polling /sync (10)")
        parser.add_argument("--fanout-messages", type=int_range(1, 100_000), default=100,
                            help="fanout: messages, sent one at a time (100)")
        parser.add_argument("--fanout-settle-ms", type=int_range(0, 5000), default=30,
                            help="fanout: pause after all long-polls are re-issued (30)")
        parser.add_argument("--fanout-wait", type=float, default=10.0,
                            help="fanout: seconds a receiver may take before a miss (10)")

    async def run(self, ctx: BenchContext) -> LoadResult:
        args = ctx.args
        n, m = args.fanout_receivers, args.fanout_messages
        api = Api(ctx)
        sender, *receivers = await api.register_many("fanout", n + 1, args.concurrency)
        room = await api.create_room(sender)
        for r in receivers:
            await api.join(r, room)
        async with wide_session(n + 4, args.request_timeout + 60) as session:
            run = _FanoutRun(Api(ctx, session), room, receivers, args)
            result = await run.measure(sender, m)
        result.extra["first_errors"] = api.errors + run.api.errors
        return result


class _FanoutRun:
    def __init__(self, api: Api, room: str, receivers: list[Account],
                 args: argparse.Namespace) -> None:
        self.api, self.room, self.receivers, self.args = api, room, receivers, args
        self.issued = [asyncio.Event() for _ in receivers]
        self.slots: dict[int, _Slot] = {}
        self.poll_errors = 0

    async def receive(self, idx: int, account: Account, since: str) -> None:
        while True:
            self.issued[idx].set()
            try:
                status, data = await self.api.sync(account, since, 30_000)
            except (TimeoutError, aiohttp.ClientError) as exc:
                status, data = TRANSPORT_ERROR, None
                self.api.note(f"GET /sync (receiver {idx}): {type(exc).__name__}: {exc}")
            finally:
                self.issued[idx].clear()
            now = time.perf_counter()
            if status != 200:
                self.poll_errors += 1
                await asyncio.sleep(0.5)
                continue
            since = data["next_batch"]
            for ev in timeline(data, self.room):
                seq = (ev.get("content") or {}).get("bench_seq")
                if ev.get("type") == MESSAGE and isinstance(seq, int) and seq in self.slots:
                    self.slots[seq].arrive(idx, now)

    async def measure(self, sender: Account, messages: int) -> LoadResult:
        args, n = self.args, len(self.receivers)
        sinces = []
        for r in self.receivers:
            status, data = await self.api.sync(r)
            if status != 200:
                raise RuntimeError(f"initial /sync failed: {self.api.errors[-1:]}")
            sinces.append(data["next_batch"])
        tasks = [asyncio.create_task(self.receive(i, r, s))
                 for i, (r, s) in enumerate(zip(self.receivers, sinces, strict=True))]
        result = LoadResult(requested=messages * n, concurrency=n)
        put_ms: list[float] = []
        start = time.perf_counter()
        try:
            for seq in range(messages):
                if time.perf_counter() - start > args.time_limit:
                    break
                await self._all_parked()
                slot = self.slots[seq] = _Slot(n)
                t0 = time.perf_counter()
                status, _ = await self.api.send(sender, self.room, f"f{seq}",
                                                {"msgtype": "m.text", "body": f"fanout {seq}",
                                                 "bench_seq": seq})
                put_ms.append((time.perf_counter() - t0) * 1000)
                if status != 200:
                    result.samples.extend(Sample(0.0, status) for _ in range(n))
                    continue
                try:
                    await asyncio.wait_for(slot.done.wait(), args.fanout_wait)
                except TimeoutError:
                    pass
                for idx in range(n):
                    at = slot.arrivals.get(idx)
                    result.samples.append(Sample(at - t0, 200) if at is not None
                                          else Sample(args.fanout_wait, TRANSPORT_ERROR))
        finally:
            result.elapsed_s = time.perf_counter() - start
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        put_ms.sort()
        result.timed_out = len(result.samples) < result.requested
        result.extra.update({
            "receivers": n, "messages_sent": len(put_ms),
            "send_p50_ms": _round(percentile(put_ms, 50)),
            "send_p99_ms": _round(percentile(put_ms, 99)),
            "missed": sum(1 for s in result.samples if s.status == TRANSPORT_ERROR),
            "duplicates": sum(s.duplicates for s in self.slots.values()),
            "poll_errors": self.poll_errors,
        })
        return result

    async def _all_parked(self) -> None:
        """Every receiver has a /sync outstanding again (bounded), then a short settle."""
        try:
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in self.issued)),
                                   self.args.fanout_wait)
        except TimeoutError:
            pass  # a receiver stuck in back-off; its miss is counted below
        await asyncio.sleep(self.args.fanout_settle_ms / 1000)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)

"""send: message throughput and latency, PUT /rooms/{roomId}/send/m.room.message/{txnId}.

Set-up (untimed): ``--send-users`` fresh users. With ``--send-rooms shared`` (default) the
first creates one public room and the others join it, so every message goes into the same
room (the worst case: both servers serialise event creation per room). With ``own`` each
user creates a room of its own and sends only there (sends in different rooms can proceed
in parallel). Nobody is syncing meanwhile.

One operation = one PUT with a fresh txn id, by user ``i % users``; closed loop at
--concurrency. Success = 200 with an ``event_id``.
"""

from __future__ import annotations

import argparse

from harness.loadgen import LoadResult, run_load
from harness.scenarios.base import BenchContext, Scenario, int_range
from harness.scenarios.rooms_api import Api


class SendScenario(Scenario):
    name = "send"
    description = "PUT /rooms/{id}/send/m.room.message/{txn} (1 request per op)"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--messages", type=int_range(1, 1_000_000), default=1000,
                            help="send: messages to send (1000)")
        parser.add_argument("--send-users", type=int_range(1, 1000), default=10,
                            help="send: senders, round-robin (10)")
        parser.add_argument("--send-rooms", choices=("shared", "own"), default="shared",
                            help="send: one room for all senders, or one room each (shared)")

    async def run(self, ctx: BenchContext) -> LoadResult:
        args = ctx.args
        api = Api(ctx)
        users = await api.register_many("send", args.send_users, args.concurrency)
        if args.send_rooms == "own":
            rooms = [await api.create_room(u) for u in users]
        else:
            rooms = [await api.create_room(users[0])] * len(users)
            for u in users[1:]:
                await api.join(u, rooms[0])

        async def op(i: int) -> int:
            k = i % len(users)
            status, _ = await api.send(users[k], rooms[k], f"b{ctx.run_id}-{i}",
                                       {"msgtype": "m.text", "body": f"bench message {i}"})
            return status

        result = await run_load(op, args.messages, args.concurrency, args.time_limit)
        result.extra.update({"senders": len(users), "rooms": len(set(rooms)),
                             "first_errors": api.errors})
        return result

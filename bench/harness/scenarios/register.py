"""register: N fresh users via POST /register with the UIA m.login.dummy flow.

One operation = both requests (the 401 that hands out the UIA session, then the completing
request). Successful users are left in ``ctx.state["users"]`` for later scenarios.
"""

from __future__ import annotations

import argparse

from harness.loadgen import LoadResult, run_load
from harness.scenarios.base import BenchContext, BenchUser, Scenario
from harness.scenarios.matrix import register


class RegisterScenario(Scenario):
    name = "register"
    description = "UIA dummy-flow registration (2 requests per op, 1 password hash)"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--users", type=int, default=200, help="users to register (200)")

    async def run(self, ctx: BenchContext) -> LoadResult:
        candidates = [BenchUser(f"bench_{ctx.run_id}_{i}") for i in range(ctx.args.users)]

        async def op(i: int) -> int:
            status = await register(ctx, candidates[i])
            if status == 200:
                ctx.users.append(candidates[i])
            return status

        return await run_load(op, len(candidates), ctx.args.concurrency, ctx.args.time_limit)

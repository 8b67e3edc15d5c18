"""login: M password logins spread round-robin over the users ``register`` created.

If ``register`` did not run (``--scenarios login``), a small pool of users is registered
first, untimed.
"""

from __future__ import annotations

import argparse

from harness.loadgen import LoadResult, run_load
from harness.scenarios.base import BenchContext, BenchUser, Scenario
from harness.scenarios.matrix import login, register


class LoginScenario(Scenario):
    name = "login"
    description = "m.login.password login (1 request per op, 1 password verification)"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--logins", type=int, default=400, help="logins to perform (400)")

    async def run(self, ctx: BenchContext) -> LoadResult:
        if not ctx.users:
            await self._seed_users(ctx, max(ctx.args.concurrency, 8))
        users = list(ctx.users)

        async def op(i: int) -> int:
            return await login(ctx, users[i % len(users)])

        return await run_load(op, ctx.args.logins, ctx.args.concurrency, ctx.args.time_limit)

    @staticmethod
    async def _seed_users(ctx: BenchContext, count: int) -> None:
        for i in range(count):
            user = BenchUser(f"bench_{ctx.run_id}_login_{i}")
            if await register(ctx, user) == 200:
                ctx.users.append(user)
        if not ctx.users:
            raise RuntimeError(f"{ctx.server}: could not register any user for the login run")

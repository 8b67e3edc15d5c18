"""What operating features cost, measured on real ``parley run`` processes (Parley only,
no Synapse). Two scenarios, each one run:

``send_limits_plugins``: message send throughput and latency with Parley started once
per variant, side by side in one table:

    off       rate limits lifted, in-process backend, no plugins (the bench baseline;
              run first and again last)
    redis     rate limits counted in Redis (budgets lifted so nothing is refused: the
              cost of a shared budget is one Redis round trip per class per request)
    plugins   in-process limits + contrib/example_plugin (keyword/regex spam filter on
              every event, invite blocklist) loaded from the checkout
    all on    Redis limits + the example plugin

``login_flood``: production Argon2id (64 MiB), the default bound on queued hashes
(``password_hashing.max_pending`` = 4 x cores), login limits and attack detection lifted
so the flood reaches the hasher. Honest logins (right password, retrying after a 429 as
told by ``retry_after_ms``) alone, then under a flood of wrong passwords from many
connections; throughput and latency of the honest logins, the flood's answers, and the
server's peak RSS (``VmHWM``) and sampled RSS.

    .venv/bin/python bench/ops_cost.py [--scenarios send_limits_plugins,login_flood]
        [--messages 2000] [--concurrency 8] [--flood 200] [--seconds 15]

Needs a Redis at 127.0.0.1:6379 for the Redis variants (``--redis-db``, default 14; the
keys it writes carry a random prefix and expire on their own).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp  # noqa: E402
from harness import REPO_DIR  # noqa: E402
from harness.loadgen import percentile, run_load  # noqa: E402
from harness.machine import cpu_busy_fraction  # noqa: E402
from harness.parley import PRODUCTION_HASHING, ParleyServer, resolve_parley_cmd  # noqa: E402
from harness.runner import CHEAP_HASHING  # noqa: E402
from harness.scenarios.base import BenchContext  # noqa: E402
from harness.scenarios.rooms_api import Api  # noqa: E402
from harness.servers import free_port  # noqa: E402

PLUGIN_DIR = REPO_DIR / "contrib" / "example_plugin"
PLUGIN = {"name": "parley_example_plugin", "config": {
    "keywords": ["casino", "free crypto", "viagra"],
    "patterns": [r"(?i)buy\s+now", r"https?://spam\.example/"],
    "blocked_servers": ["spam.example", "*.bad.example"],
}}
PASSWORD = "bench-Passw0rd-xyz!"


class VariantServer(ParleyServer):
    """The bench's Parley (generated --dev config, limits lifted) plus ``overrides``, and
    the example plugin importable from the checkout."""

    def __init__(self, workdir: Path, overrides: dict[str, Any],
                 hashing: dict[str, int]) -> None:
        super().__init__(workdir, free_port(), resolve_parley_cmd(REPO_DIR, None), REPO_DIR,
                         hashing=hashing)
        self.overrides = overrides

    def patch(self, config: dict[str, Any]) -> None:
        super().patch(config)
        config.setdefault("logging", {})["level"] = "WARNING"
        for key, value in self.overrides.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value

    def command(self) -> list[str]:
        return ["env", f"PYTHONPATH={PLUGIN_DIR}", *super().command()]


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def log(message: str) -> None:
    print(f"[ops_cost {time.strftime('%H:%M:%S')}] {message}", flush=True)


async def with_server(server: VariantServer, fn: Any) -> Any:
    server.prepare()
    server.start()
    try:
        server.wait_ready(120)
        return await fn(server)
    finally:
        server.stop()


# -- send: limiter and plugins on/off ----------------------------------------------------

async def send_run(server: VariantServer, args: argparse.Namespace) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(limit=args.concurrency)) as session:
        ctx = BenchContext("parley", server.base_url, session, args, secrets.token_hex(3),
                           server_pid=server.pid)
        api = Api(ctx)
        users = await api.register_many("send", 10, args.concurrency)
        room = await api.create_room(users[0])
        for u in users[1:]:
            await api.join(u, room)
        warm = await run_load(lambda i: _send(api, users, room, f"w{i}"), 100,
                              args.concurrency, 60)
        del warm

        result = await run_load(lambda i: _send(api, users, room, str(i)), args.messages,
                                args.concurrency, args.time_limit)
    summary = result.summary()
    summary["first_errors"] = api.errors
    return summary


async def _send(api: Api, users: list[Any], room: str, i: str) -> int:
    user = users[hash(i) % len(users)]
    status, _ = await api.send(user, room, f"t{i}-{secrets.token_hex(3)}",
                               {"msgtype": "m.text", "body": f"bench message {i}"})
    return status


def redis_overrides(db: int) -> dict[str, Any]:
    return {"rate_limits": {"backend": "redis"},
            "redis": {"host": "127.0.0.1", "port": 6379, "db": db,
                      "key_prefix": f"parley-bench-{secrets.token_hex(4)}:"}}


async def send_limits_plugins(root: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    variants: list[tuple[str, dict[str, Any]]] = [("off", {})]
    if _redis_up():
        variants.append(("redis", redis_overrides(args.redis_db)))
    else:
        log("no Redis at 127.0.0.1:6379: the Redis variants are skipped")
    variants.append(("plugins", {"plugins": [PLUGIN]}))
    if _redis_up():
        variants.append(("all on", {**redis_overrides(args.redis_db), "plugins": [PLUGIN]}))
    # The baseline again last: what the order (warm disk caches, other load) accounts for.
    variants.append(("off again", {}))
    rows = []
    for name, overrides in variants:
        busy = cpu_busy_fraction()
        log(f"send_limits_plugins: {name} (CPUs {busy or 0:.0%} busy before) ...")
        server = VariantServer(root / f"send-{name.replace(' ', '_')}", overrides,
                               CHEAP_HASHING)
        summary = await with_server(server, lambda s: send_run(s, args))
        rows.append({"variant": name, **summary})
        log(f"  {summary['ok']} ok, {summary['errors']} errors, {summary['ops_per_s']} msg/s, "
            f"p50 {summary['p50_ms']} ms, p95 {summary['p95_ms']} ms")
    return rows


def _redis_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
        return True
    except OSError:
        return False


# -- login under a flood of wrong passwords ------------------------------------------------

async def login_flood(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    max_pending = 4 * (os.cpu_count() or 1)
    overrides = {"detection": {"enabled": False}}
    server = VariantServer(root / "login-flood", overrides, dict(PRODUCTION_HASHING))
    original_patch = server.patch

    def patch(config: dict[str, Any]) -> None:
        original_patch(config)
        config["password_hashing"]["max_pending"] = max_pending  # the default bound

    server.patch = patch  # type: ignore[method-assign]
    return await with_server(server, lambda s: _flood_run(s, args, max_pending))


async def _honest(session: aiohttp.ClientSession, url: str, user: str,
                  stop_at: float, out: dict[str, Any]) -> None:
    """Log in with the right password until ``stop_at``; a 429 is retried after
    ``retry_after_ms``, as a client should. Latency is per completed login."""
    while time.monotonic() < stop_at:
        began = time.monotonic()
        while True:
            async with session.post(url, json={
                    "type": "m.login.password", "password": PASSWORD,
                    "identifier": {"type": "m.id.user", "user": user}}) as resp:
                body = await resp.json(content_type=None)
                out["attempts"] += 1
                if resp.status == 429:
                    out["refused"] += 1
                    await asyncio.sleep(min(5.0, body.get("retry_after_ms", 1000) / 1000))
                    if time.monotonic() >= stop_at:
                        return
                    continue
                if resp.status == 200:
                    out["latencies"].append(time.monotonic() - began)
                else:
                    out["errors"] += 1
                break


async def _flood_worker(session: aiohttp.ClientSession, url: str, stop_at: float,
                        statuses: dict[int, int]) -> None:
    i = 0
    while time.monotonic() < stop_at:
        i += 1
        try:
            async with session.post(url, json={
                    "type": "m.login.password", "password": f"wrong-{i}",
                    "identifier": {"type": "m.id.user", "user": "honest0"}}) as resp:
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
        except (aiohttp.ClientError, TimeoutError):
            statuses[0] = statuses.get(0, 0) + 1


async def _honest_phase(url: str, users: list[str], seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {"attempts": 0, "refused": 0, "errors": 0, "latencies": []}
    stop_at = time.monotonic() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(_honest(session, url, u, stop_at, out) for u in users))
    lat = sorted(out.pop("latencies"))
    out.update({"logins": len(lat), "logins_per_s": round(len(lat) / seconds, 2),
                "p50_ms": _ms(percentile(lat, 50)), "p95_ms": _ms(percentile(lat, 95))})
    return out


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


async def _flood_run(server: VariantServer, args: argparse.Namespace,
                     max_pending: int) -> dict[str, Any]:
    url = server.base_url + "/_matrix/client/v3/login"
    honest = [f"honest{i}" for i in range(2)]
    async with aiohttp.ClientSession() as session:
        ctx = BenchContext("parley", server.base_url, session, args, "f", server_pid=server.pid)
        api = Api(ctx)
        for name in honest:
            await api.register(name)
    assert server.pid is not None
    log("login_flood: honest logins alone ...")
    alone = await _honest_phase(url, honest, args.seconds / 2)
    base_rss = status_kib(server.pid, "VmRSS")
    try:
        with open(f"/proc/{server.pid}/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # reset VmHWM to the current RSS
        peak_reset = True
    except OSError:
        peak_reset = False
    log(f"login_flood: honest logins under {args.flood} flooding connections ...")
    statuses: dict[int, int] = {}
    rss_samples: list[int] = []
    stop_at = time.monotonic() + args.seconds

    async def sample_rss() -> None:
        while time.monotonic() < stop_at:
            rss_samples.append(status_kib(server.pid or 0, "VmRSS"))
            await asyncio.sleep(0.2)

    flood_conn = aiohttp.TCPConnector(limit=args.flood)
    async with aiohttp.ClientSession(connector=flood_conn,
                                     timeout=aiohttp.ClientTimeout(total=30)) as flood:
        started = time.monotonic()
        results = await asyncio.gather(
            _honest_phase(url, honest, args.seconds),
            sample_rss(),
            *(_flood_worker(flood, url, stop_at, statuses) for _ in range(args.flood)))
        flood_s = time.monotonic() - started
    under = results[0]
    peak = status_kib(server.pid, "VmHWM")
    flood_total = sum(statuses.values())
    return {
        "max_pending": max_pending, "argon2": PRODUCTION_HASHING,
        "honest_alone": alone, "honest_under_flood": under,
        "flood": {"connections": args.flood, "requests": flood_total,
                  "requests_per_s": round(flood_total / flood_s, 1),
                  "statuses": {str(k): v for k, v in sorted(statuses.items())}},
        "rss_mib": {"before_flood": round(base_rss / 1024, 1),
                    "peak_during_flood": round(peak / 1024, 1),
                    "peak_is_since_flood_start": peak_reset,
                    "max_sampled": round(max(rss_samples, default=0) / 1024, 1),
                    "bound": round((base_rss + max_pending * 64 * 1024) / 1024, 1)},
    }


def render(results: dict[str, Any]) -> str:
    out = []
    rows = results.get("send_limits_plugins")
    if rows:
        out += ["### Message send: rate limiter and plugins off / on", "",
                "| variant | msg/s | p50 ms | p95 ms | p99 ms | ok | errors |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        base = rows[0]["ops_per_s"] or 1
        for r in rows:
            out.append(f"| {r['variant']} | {r['ops_per_s']} ({r['ops_per_s'] / base:.0%}) | "
                       f"{r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['ok']} | "
                       f"{r['errors']} |")
        out.append("")
    flood = results.get("login_flood")
    if flood:
        a, u, f, m = (flood["honest_alone"], flood["honest_under_flood"], flood["flood"],
                      flood["rss_mib"])
        out += ["### Login under a flood of wrong passwords", "",
                f"Argon2id t=1 m=64MiB p=2, max_pending {flood['max_pending']}; "
                f"{f['connections']} flooding connections, {f['requests']} flood requests "
                f"({f['requests_per_s']}/s), answers {f['statuses']}.", "",
                "| honest logins | logins/s | p50 ms | p95 ms | attempts | 429s |",
                "|---|---:|---:|---:|---:|---:|",
                f"| alone | {a['logins_per_s']} | {a['p50_ms']} | {a['p95_ms']} | "
                f"{a['attempts']} | {a['refused']} |",
                f"| under flood | {u['logins_per_s']} | {u['p50_ms']} | {u['p95_ms']} | "
                f"{u['attempts']} | {u['refused']} |", "",
                f"RSS: {m['before_flood']} MiB before, peak {m['peak_during_flood']} MiB during "
                f"the flood (sampled max {m['max_sampled']} MiB; bound base + max_pending x "
                f"64 MiB = {m['bound']} MiB).", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default="send_limits_plugins,login_flood")
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--time-limit", type=float, default=120.0)
    p.add_argument("--flood", type=int, default=200, help="flooding connections (200)")
    p.add_argument("--seconds", type=float, default=15.0, help="flood duration (15)")
    p.add_argument("--redis-db", type=int, default=14)
    p.add_argument("--results-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    root = Path(tempfile.mkdtemp(prefix="parley-ops-bench-"))
    results: dict[str, Any] = {"timestamp": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
                               "cpus": os.cpu_count(), "params": vars(args) | {
                                   "results_dir": str(args.results_dir)}}
    try:
        if "send_limits_plugins" in chosen:
            results["send_limits_plugins"] = asyncio.run(send_limits_plugins(root, args))
        if "login_flood" in chosen:
            results["login_flood"] = asyncio.run(login_flood(root, args))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("\n" + render(results))
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"ops_cost-{results['timestamp']}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    log(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

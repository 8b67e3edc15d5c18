"""Orchestration: for each server (Synapse, then Parley) set up, run scenarios, tear down."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import secrets
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import aiohttp

from harness import BENCH_DIR, REPO_DIR
from harness.machine import cpu_busy_fraction
from harness.parley import ParleyServer, resolve_parley_cmd
from harness.pgdb import PgTarget, create_database, drop_database
from harness.report import render, write_json
from harness.scenarios import SCENARIOS, BenchContext
from harness.servers import ManagedServer, free_port
from harness.synapse import DEFAULT_BCRYPT_ROUNDS, SynapseServer, ensure_synapse_installed

SERVER_ORDER = ("synapse", "parley")
BUSY_WARNING = 0.15  # fraction of all CPUs busy before a server starts
SCENARIO_ARG_PREFIXES = ("messages", "send_", "fanout_", "idle_")
LIMITS = {"users": 100_000, "logins": 1_000_000, "concurrency": 256}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Parley vs Synapse benchmark (loopback only)")
    p.add_argument("--only", choices=SERVER_ORDER, help="benchmark just one server")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated subset of: {', '.join(SCENARIOS)}")
    p.add_argument("--concurrency", type=int, default=8, help="operations in flight (8)")
    p.add_argument("--time-limit", type=float, default=300.0,
                   help="seconds after which a scenario stops issuing operations (300)")
    p.add_argument("--request-timeout", type=float, default=60.0,
                   help="per-request timeout in seconds (60)")
    p.add_argument("--startup-timeout", type=float, default=180.0,
                   help="seconds to wait for /_matrix/client/versions (180)")
    p.add_argument("--parley-cmd", help="command for the Parley CLI, e.g. '.venv/bin/parley'")
    p.add_argument("--repo", type=Path, default=REPO_DIR, help="Parley checkout (..)")
    p.add_argument("--synapse-bcrypt-rounds", type=int, default=DEFAULT_BCRYPT_ROUNDS,
                   help=f"Synapse bcrypt_rounds (default {DEFAULT_BCRYPT_ROUNDS}, its own)")
    p.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite",
                   help="database of both servers (sqlite); postgres: a fresh database per "
                        "server on --pg-host:--pg-port as --pg-user, dropped afterwards")
    p.add_argument("--pg-host", default="127.0.0.1")
    p.add_argument("--pg-port", type=int, default=5432)
    p.add_argument("--pg-user", default="postgres")
    p.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    p.add_argument("--keep-tmp", action="store_true", help="keep configs, DBs and logs")
    p.add_argument("--cheap-hashing", action="store_true",
                   help="minimal hash cost on both (Synapse bcrypt_rounds=4, Parley Argon2id "
                        "m=8KiB p=1): measures everything except password hashing")
    for cls in SCENARIOS.values():
        cls.add_arguments(p)
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for key, cap in LIMITS.items():
        value = getattr(args, key)
        if not 1 <= value <= cap:
            parser.error(f"--{key} must be between 1 and {cap}")
    chosen = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    unknown = chosen - SCENARIOS.keys()
    if unknown or not chosen:
        parser.error(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    args.scenarios = [name for name in SCENARIOS if name in chosen]  # registry order
    return args


CHEAP_HASHING: dict[str, int] = {"time_cost": 1, "memory_cost_kib": 8, "parallelism": 1}


def pg_for(key: str, args: argparse.Namespace,
           run_id: str) -> tuple[PgTarget, str] | None:
    """(server, database) for ``--db postgres``: a database per server and run."""
    if args.db != "postgres":
        return None
    return PgTarget(args.pg_host, args.pg_port, args.pg_user), f"bench_{key}_{run_id}"


def make_server(key: str, workdir: Path, args: argparse.Namespace,
                pg: tuple[PgTarget, str] | None = None) -> ManagedServer:
    if key == "synapse":
        ensure_synapse_installed()
        rounds = 4 if args.cheap_hashing else args.synapse_bcrypt_rounds
        return SynapseServer(workdir, free_port(), rounds, pg=pg)
    return ParleyServer(workdir, free_port(), resolve_parley_cmd(args.repo, args.parley_cmd),
                        args.repo, hashing=CHEAP_HASHING if args.cheap_hashing else None,
                        pg=pg)


async def run_scenarios(server: ManagedServer, args: argparse.Namespace,
                        run_id: str) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        ctx = BenchContext(server.name, server.base_url, session, args, run_id,
                           server_pid=server.pid)
        for name in args.scenarios:
            log(f"{server.name}: {name} ...")
            summary = (await SCENARIOS[name]().run(ctx)).summary()
            out[name] = summary
            log(f"{server.name}: {name}: {summary['ok']} ok, {summary['errors']} errors, "
                f"{summary['ops_per_s']} ops/s, p50 {summary['p50_ms']} ms, "
                f"p95 {summary['p95_ms']} ms, statuses {summary['statuses']}")
            for what in summary.get("first_errors") or ():
                log(f"{server.name}: {name}: unexpected answer: {what}")
    return out


def bench_server(key: str, root: Path, args: argparse.Namespace, run_id: str,
                 results: dict[str, Any]) -> None:
    pg = pg_for(key, args, run_id)
    server = make_server(key, root / key, args, pg)
    busy = cpu_busy_fraction()
    results["cpu_busy_before"][key] = busy
    log(f"{key}: CPUs {busy:.0%} busy before start" if busy is not None else f"{key}: start")
    if busy is not None and busy > BUSY_WARNING:
        results["warnings"].append(
            f"{key}: CPUs were {busy:.0%} busy with other work just before it started; "
            "its figures are likely skewed (re-run when the machine is idle)")
    try:
        log(f"{key}: preparing config in {server.workdir}")
        if pg is not None:
            create_database(*pg)
            log(f"{key}: PostgreSQL database {pg[1]} created")
        server.prepare()
        server.start()
        t0 = time.monotonic()
        server.wait_ready(args.startup_timeout)
        log(f"{key}: ready on {server.base_url} after {time.monotonic() - t0:.1f}s")
        results["results"][key] = asyncio.run(run_scenarios(server, args, run_id))
    finally:
        code = server.stop()
        log(f"{key}: stopped (exit code {code})")
        if pg is not None and not args.keep_tmp:
            try:
                drop_database(*pg)
            except Exception as exc:  # never mask the real failure
                log(f"{key}: could not drop database {pg[1]}: {exc}")
        try:
            results["servers"][key] = server.describe()
        except Exception as exc:  # never mask the real failure
            log(f"{key}: could not describe server: {exc}")


def raise_fd_limit(wanted: int = 65_536) -> None:
    """Soft RLIMIT_NOFILE up to the hard limit (the servers inherit it): idle_sync holds
    one socket per long-poll on each side."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit()
    run_id = secrets.token_hex(4)
    results: dict[str, Any] = {
        "timestamp": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
        "run_id": run_id,
        "params": {"users": args.users, "logins": args.logins, "concurrency": args.concurrency,
                   "time_limit_s": args.time_limit, "request_timeout_s": args.request_timeout,
                   "db": args.db, "cpus": os.cpu_count(), "python": platform.python_version(),
                   **{k: v for k, v in vars(args).items() if k.startswith(SCENARIO_ARG_PREFIXES)},
                   "platform": platform.platform()},
        "scenarios": args.scenarios, "servers": {}, "results": {}, "failures": {},
        "cpu_busy_before": {}, "warnings": [],
    }
    root = Path(tempfile.mkdtemp(prefix="parley-bench-"))
    try:
        for key in SERVER_ORDER:
            if args.only and key != args.only:
                continue
            try:
                bench_server(key, root, args, run_id, results)
            except Exception as exc:  # keep going: report what we have for the other server
                traceback.print_exc()
                results["failures"][key] = f"{type(exc).__name__}: {exc}"
    finally:
        if args.keep_tmp:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print("\n" + render(results) + "\n")
    for key, why in results["failures"].items():
        print(f"FAILED {key}: {why.splitlines()[0]}")
    log(f"results written to {write_json(results, args.results_dir)}")
    return 1 if results["failures"] else 0

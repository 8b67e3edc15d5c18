"""Orchestration of bench/workers.py: each configuration on a fresh PostgreSQL database,
its processes started, the phases run, everything stopped and dropped again."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
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
from harness.parley import resolve_parley_cmd
from harness.pgdb import PgTarget, create_database, drop_database
from harness.runner import CHEAP_HASHING, raise_fd_limit
from harness.scenarios.base import int_range
from harness.servers import free_port
from harness.synapse import DEFAULT_BCRYPT_ROUNDS, SynapseServer, ensure_synapse_installed
from harness.workers_report import ceilings, render, write_json
from harness.workers_scenarios import idle_phase, send_phase
from harness.workers_servers import (
    Deployment,
    parley_deployment,
    synapse_deployment,
)

# key -> (server, Parley shape, phases)
CONFIGS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "A": ("parley", "one", ("send", "idle")),
    "B": ("parley", "persisters", ("send",)),
    "C": ("parley", "readers", ("idle",)),
    "D": ("synapse", "", ("send", "idle")),
    "E": ("parley", "full", ("send", "idle")),  # not in the default run: 5 processes
    "W": ("parley", "persisters-direct", ("send",)),  # B, sends to each room's writer
}
BUSY_WARNING = 0.15


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Parley workers vs one process vs Synapse "
                                            "(PostgreSQL, loopback only)")
    p.add_argument("--configs", default="A,B,W,C,D",
                   help="configurations to run, in this order (A,B,W,C,D)")
    p.add_argument("--phases", default="send,idle",
                   help="phases to run where a configuration has them (send,idle)")
    p.add_argument("--messages", type=int_range(1, 1_000_000), default=2000,
                   help="send: messages (2000)")
    p.add_argument("--concurrency", type=int_range(1, 256), default=16,
                   help="send: requests in flight; also set-up parallelism (16)")
    p.add_argument("--send-users", type=int_range(1, 1000), default=20,
                   help="send: senders, one room each (20)")
    p.add_argument("--idle-syncs", type=int_range(1, 20_000), default=2000,
                   help="idle: idle long-polls held (2000)")
    p.add_argument("--idle-timeout-ms", type=int_range(1000, 120_000), default=30_000,
                   help="idle: /sync timeout of the idle long-polls (30000)")
    p.add_argument("--idle-hold", type=float, default=5.0,
                   help="idle: seconds of holding only, measured, before the fan-out (5)")
    p.add_argument("--idle-ramp-batch", type=int_range(1, 20_000), default=50,
                   help="idle: long-polls opened per 50 ms step (50)")
    p.add_argument("--fanout-receivers", type=int_range(1, 500), default=10,
                   help="idle: fan-out receivers long-polling in one room (10)")
    p.add_argument("--fanout-messages", type=int_range(1, 100_000), default=100,
                   help="idle: fan-out messages, one at a time (100)")
    p.add_argument("--fanout-settle-ms", type=int_range(0, 5000), default=30,
                   help="idle: pause after all receivers re-issued their long-poll (30)")
    p.add_argument("--fanout-wait", type=float, default=10.0,
                   help="idle: seconds a receiver may take before a miss (10)")
    p.add_argument("--time-limit", type=float, default=300.0,
                   help="seconds after which a phase stops issuing operations (300)")
    p.add_argument("--request-timeout", type=float, default=60.0)
    p.add_argument("--startup-timeout", type=float, default=180.0)
    p.add_argument("--production-hashing", action="store_true",
                   help="production password-hashing cost (default: minimal on both, as "
                        "run.py --cheap-hashing: registration is set-up here, not measured)")
    p.add_argument("--parley-cmd", help="command for the Parley CLI (the repo venv's)")
    p.add_argument("--repo", type=Path, default=REPO_DIR)
    p.add_argument("--pg-host", default="127.0.0.1")
    p.add_argument("--pg-port", type=int, default=5432)
    p.add_argument("--pg-user", default="postgres")
    p.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    p.add_argument("--keep-tmp", action="store_true", help="keep configs, logs, databases")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.configs = [c.strip().upper() for c in args.configs.split(",") if c.strip()]
    args.phases = {x.strip() for x in args.phases.split(",") if x.strip()}
    if not args.configs or set(args.configs) - CONFIGS.keys():
        parser.error(f"--configs: a subset of {','.join(CONFIGS)}")
    if not args.phases or args.phases - {"send", "idle"}:
        parser.error("--phases: a subset of send,idle")
    return args


def log(message: str) -> None:
    print(f"[workers {time.strftime('%H:%M:%S')}] {message}", flush=True)


def make_deployment(key: str, root: Path, args: argparse.Namespace, run_id: str,
                    ) -> Deployment:
    server, shape, _ = CONFIGS[key]
    pg = (PgTarget(args.pg_host, args.pg_port, args.pg_user),
          f"bench_w{key.lower()}_{run_id}")
    workdir = root / key
    if server == "synapse":
        ensure_synapse_installed()
        rounds = DEFAULT_BCRYPT_ROUNDS if args.production_hashing else 4
        return synapse_deployment(key, SynapseServer(workdir, free_port(), rounds, pg=pg), pg)
    hashing = None if args.production_hashing else CHEAP_HASHING
    return parley_deployment(key, shape, workdir, resolve_parley_cmd(args.repo, args.parley_cmd),
                             args.repo, hashing, pg, run_id)


async def run_phases(dep: Deployment, phases: list[str], args: argparse.Namespace,
                     run_id: str, out: dict[str, Any], failures: dict[str, str]) -> None:
    """Each phase's figures go into ``out`` as soon as it ends; a phase that fails is
    recorded in ``failures`` and the next one still runs."""
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        for phase in phases:
            log(f"{dep.key}: {phase} ...")
            try:
                if phase == "send":
                    out["send"] = await send_phase(dep, args, run_id, session)
                    out["send"]["ceilings"] = ceilings(out["send"])
                    log_send(dep.key, out["send"])
                else:
                    out["idle"] = await idle_phase(dep, args, run_id, session, log)
                    log_idle(dep.key, out["idle"])
            except Exception as exc:  # keep going: report the other phases
                traceback.print_exc()
                failures[f"{dep.key}.{phase}"] = f"{type(exc).__name__}: {exc}"


def log_send(key: str, send: dict[str, Any]) -> None:
    log(f"{key}: send: {send['ok']} ok, {send['errors']} errors, {send['ops_per_s']} msg/s, "
        f"p50 {send['p50_ms']} ms, p95 {send['p95_ms']} ms, CPU s "
        f"{send['cpu_s_per_process']} + DB {send['db_cpu_s']}, machine "
        f"{send['machine_busy_cpu_s']}, split {send.get('messages_per_writer')}")
    for what in send.get("first_errors") or ():
        log(f"{key}: send: unexpected answer: {what}")


def log_idle(key: str, idle: dict[str, Any]) -> None:
    fan = idle["fanout"]
    log(f"{key}: idle: {idle['held_at_start']} held {idle['syncs_per_reader']}, RSS held "
        f"{idle['rss_mib_held']} MiB, CPU % holding {idle['hold_cpu_pct_per_process']}, "
        f"fan-out p50 {fan.get('p50_ms')} p95 {fan.get('p95_ms')} ms, missed "
        f"{fan.get('missed')}, early returns {idle['early_returns']}"
        + (f", FAN-OUT FAILED: {idle['fanout_failed']}" if idle["fanout_failed"] else ""))
    for what in idle.get("first_errors") or ():
        log(f"{key}: idle: unexpected answer: {what}")


def bench_config(key: str, root: Path, args: argparse.Namespace, run_id: str,
                 results: dict[str, Any]) -> None:
    phases = [p for p in ("send", "idle") if p in CONFIGS[key][2] and p in args.phases]
    if not phases:
        return
    dep = make_deployment(key, root, args, run_id)
    conf: dict[str, Any] = {"label": dep.label, "server": dep.server, "processes": dep.roles}
    results["configs"][key] = conf
    busy = cpu_busy_fraction()
    results["cpu_busy_before"][key] = busy
    log(f"{key} ({dep.label}): CPUs {busy:.0%} busy before start" if busy is not None
        else f"{key}: start")
    if busy is not None and busy > BUSY_WARNING:
        results["warnings"].append(f"{key}: CPUs were {busy:.0%} busy with other work just "
                                   "before it started; its figures are likely skewed")
    try:
        create_database(*dep.pg)
        dep.procs[0].prepare()
        t0 = time.monotonic()
        dep.start(args.startup_timeout)
        log(f"{key}: {len(dep.procs)} process(es) ready after {time.monotonic() - t0:.1f}s "
            f"(entry {dep.base_url}, /sync {dep.sync_urls or 'main'})")
        asyncio.run(run_phases(dep, phases, args, run_id, conf, results["failures"]))
    finally:
        codes = dep.stop()
        log(f"{key}: stopped (exit codes {codes})")
        if not args.keep_tmp:
            try:
                drop_database(*dep.pg)
            except Exception as exc:  # never mask the real failure
                log(f"{key}: could not drop database {dep.pg[1]}: {exc}")
        try:
            conf["describe"] = dep.procs[0].describe()
        except Exception as exc:  # never mask the real failure
            log(f"{key}: could not describe: {exc}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit()
    run_id = secrets.token_hex(4)
    results: dict[str, Any] = {
        "timestamp": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
        "run_id": run_id,
        "params": {k: v for k, v in vars(args).items()
                   if k.startswith(("messages", "concurrency", "send_", "idle_", "fanout_",
                                    "time_limit"))}
        | {"configs": args.configs, "phases": sorted(args.phases), "cpus": os.cpu_count(),
           "python": platform.python_version(), "platform": platform.platform(),
           "hashing": "production" if args.production_hashing
           else "minimal (Argon2id m=8KiB, bcrypt rounds 4)",
           "send_route": "every PUT to the main process's client port (W: to the "
                         "room's writer)"},
        "configs": {}, "failures": {}, "cpu_busy_before": {}, "warnings": [],
    }
    root = Path(tempfile.mkdtemp(prefix="parley-workers-bench-"))
    try:
        for key in args.configs:
            try:
                bench_config(key, root, args, run_id, results)
            except Exception as exc:  # keep going: report the others
                traceback.print_exc()
                results["failures"][key] = f"{type(exc).__name__}: {exc}"
    finally:
        if args.keep_tmp:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print("\n" + render(results) + "\n")
    log(f"results written to {write_json(results, args.results_dir)}")
    return 1 if results["failures"] else 0

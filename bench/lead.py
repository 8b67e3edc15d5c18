#!/usr/bin/env python3
"""The single-process lead (issue 18), Parley beside Synapse 1.163.2 in one run (SQLite):

    state_storage      one room, N state changes (joins of distinct users and custom state
                       with changing content), then the database size of each
    big_initial_sync   one account in R rooms of M members: its initial /sync, full state
                       and lazy-loading members (median of a few)
    idle_lead          N idle long-poll /syncs (10,000 for Parley, 1,000 for Synapse by
                       default): RSS, and fan-out latency while they are held

    python3 bench/lead.py                                    # all three, default sizes
    python3 bench/lead.py --scenarios state_storage --state-changes 2000
    python3 bench/lead.py --scenarios big_initial_sync --rooms 50 --members 50 \\
        --data-dir /tmp/lead --reuse                         # keep/reuse the populated dirs
    python3 bench/lead.py --scenarios idle_lead --idle-parley 10000 --idle-synapse 1000

Servers run one at a time (Synapse first) with cheap password hashing and rate limits
lifted (as run.py's --cheap-hashing). Results: markdown on stdout, JSON in
bench/results/lead-<timestamp>.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.bootstrap import reexec_in_bench_venv  # noqa: E402

if __name__ == "__main__":
    reexec_in_bench_venv(Path(__file__).resolve())

from harness import lead_scenarios as sc  # noqa: E402
from harness.lead_servers import db_size, heap_diff, make_lead_server  # noqa: E402
from harness.machine import cpu_busy_fraction  # noqa: E402
from harness.runner import raise_fd_limit  # noqa: E402
from harness.scenarios.base import int_range  # noqa: E402

SCENARIOS = ("state_storage", "big_initial_sync", "idle_lead")
SERVERS = ("synapse", "parley")


def log(message: str) -> None:
    print(f"[lead {time.strftime('%H:%M:%S')}] {message}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--only", choices=SERVERS)
    p.add_argument("--concurrency", type=int_range(1, 256), default=8,
                   help="requests in flight while populating (8)")
    p.add_argument("--data-dir", type=Path,
                   help="keep each scenario's server dirs here (default: a temp dir, removed)")
    p.add_argument("--reuse", action="store_true",
                   help="big_initial_sync: start the populated dirs in --data-dir again "
                        "(same --rooms/--members) instead of populating")
    p.add_argument("--results-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--startup-timeout", type=float, default=300.0)
    g = p.add_argument_group("state_storage")
    g.add_argument("--state-changes", type=int_range(2, 1_000_000), default=10_000)
    g.add_argument("--state-keys", type=int_range(1, 100_000), default=100,
                   help="state keys the custom state events cycle through (100)")
    g = p.add_argument_group("big_initial_sync")
    g.add_argument("--rooms", type=int_range(1, 10_000), default=300)
    g.add_argument("--members", type=int_range(2, 10_000), default=300,
                   help="members per room, the account included (300)")
    g.add_argument("--sync-repeat", type=int_range(1, 50), default=3)
    g = p.add_argument_group("idle_lead")
    g.add_argument("--idle-parley", type=int_range(1, 50_000), default=10_000)
    g.add_argument("--idle-synapse", type=int_range(1, 50_000), default=1_000)
    g.add_argument("--idle-timeout-ms", type=int_range(1000, 120_000), default=30_000)
    g.add_argument("--idle-hold", type=float, default=5.0,
                   help="seconds after all long-polls are out before measuring (5)")
    g.add_argument("--memprofile", action="store_true",
                   help="idle_lead: run Parley under tracemalloc and report where the heap "
                        "grew while the long-polls were parked (slows it down)")
    g.add_argument("--fanout-receivers", type=int_range(1, 500), default=10)
    g.add_argument("--fanout-messages", type=int_range(1, 100_000), default=100)
    g.add_argument("--fanout-settle-ms", type=int_range(0, 5000), default=30)
    g.add_argument("--fanout-wait", type=float, default=10.0)
    g.add_argument("--request-timeout", type=float, default=120.0)
    g.add_argument("--time-limit", type=float, default=600.0)
    return p


def run_on(key: str, workdir: Path, args: argparse.Namespace,
           body: Any, memprobe: Path | None = None) -> tuple[dict[str, Any], Any]:
    """Start the server in ``workdir``, run ``body(server)`` (a coroutine function), stop it."""
    server = make_lead_server(key, workdir)
    if memprobe is not None:
        server.memprobe_dir = memprobe
    busy = cpu_busy_fraction()
    log(f"{key}: CPUs {busy or 0:.0%} busy before start; dir {workdir}")
    server.prepare()
    server.start()
    try:
        t0 = time.monotonic()
        server.wait_ready(args.startup_timeout)
        log(f"{key}: ready after {time.monotonic() - t0:.1f} s")
        out = asyncio.run(body(server))
    finally:
        code = server.stop()
        log(f"{key}: stopped (exit {code})")
    return {"cpu_busy_before": busy}, (server, out)


def scenario_state_storage(key: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    workdir = root / "state_storage" / key
    if workdir.exists():
        shutil.rmtree(workdir)
    meta, (server, out) = run_on(key, workdir, args, lambda s: sc.state_storage(
        s.base_url, s.shared_secret, args, lambda m: log(f"{key}: {m}")))
    size = db_size(server.db_path, workdir)
    log(f"{key}: database {size['bytes_vacuumed'] / 2**20:.1f} MiB vacuumed, state tables "
        f"{size['state_bytes'] / 2**20:.1f} MiB")
    return {**meta, **out, "db": size}


def scenario_big_sync(key: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    workdir = root / f"big_initial_sync-{args.rooms}x{args.members}" / key
    marker = sc.read_marker(workdir)
    wanted = {"rooms": args.rooms, "members": args.members}
    reuse = bool(args.reuse and marker and all(marker.get(k) == v for k, v in wanted.items()))
    if args.reuse and not reuse:
        log(f"{key}: nothing to reuse in {workdir} for {wanted}; populating")
    if not reuse and workdir.exists():
        shutil.rmtree(workdir)

    async def body(server: Any) -> dict[str, Any]:
        say = lambda m: log(f"{key}: {m}")  # noqa: E731
        populated = marker if reuse else await sc.populate_big(
            server.base_url, server.shared_secret, args.rooms, args.members,
            args.concurrency, say)
        if not reuse:
            sc.write_marker(workdir, populated)
        say("initial syncs")
        return {"populate": populated, "reused": reuse,
                **await sc.measure_initial_sync(server.base_url, populated["owner"],
                                                args.sync_repeat, say)}

    meta, (server, out) = run_on(key, workdir, args, body)
    return {**meta, **out, "db_bytes": server.db_path.stat().st_size}


def scenario_idle(key: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    workdir = root / "idle_lead" / key
    if workdir.exists():
        shutil.rmtree(workdir)
    idle = args.idle_parley if key == "parley" else args.idle_synapse
    probe = workdir / "memprobe" if args.memprofile and key == "parley" else None
    snaps: dict[str, Path] = {}

    def snapshotter(server: Any) -> Any:
        async def snap(label: str) -> None:
            n = len(snaps) + 1
            os.kill(server.pid, signal.SIGUSR2)
            done = probe / f"snap-{n}.done"
            for _ in range(1200):
                if done.exists():
                    break
                await asyncio.sleep(0.1)
            snaps[label] = probe / f"snap-{n}.pickle"
            log(f"{key}: heap snapshot '{label}' taken")
        return snap if probe else None

    if probe:
        probe.mkdir(parents=True)
    meta, (_, out) = run_on(key, workdir, args, lambda s: sc.idle_lead(
        s.base_url, s.pid, idle, args, secrets.token_hex(3), lambda m: log(f"{key}: {m}"),
        snapshotter(s)), memprobe=probe)
    if probe and {"before", "held"} <= snaps.keys():
        out["heap_growth"] = heap_diff(snaps["before"], snaps["held"], idle)
        print(render_heap(out["heap_growth"], idle))
    return {**meta, **out}


def render_heap(diff: dict[str, Any], per: int) -> str:
    lines = [f"Parley heap growth with {per} long-polls parked: {diff['total_kib']} KiB, "
             f"{diff['bytes_per_unit']} B per long-poll (tracemalloc, Python objects only)",
             "", "| where (line) | KiB | B / long-poll | blocks |", "|---|---:|---:|---:|"]
    for r in diff["by_line"]:
        lines.append(f"| {r['where']} | {r['kib']} | {r['bytes_per_unit']} | {r['blocks']} |")
    return "\n".join(lines)


RUNNERS = {"state_storage": scenario_state_storage, "big_initial_sync": scenario_big_sync,
           "idle_lead": scenario_idle}


def ratio(p: float | None, s: float | None) -> str:
    return f"{p / s:.2f}x" if p is not None and s else "-"


def mb(n: int | None) -> float | None:
    return None if n is None else round(n / 2**20, 2)


def render(results: dict[str, Any]) -> str:
    """One table per scenario: figure, Synapse, Parley, Parley / Synapse."""
    rows: list[tuple[str, str, Any, Any]] = []
    r = results["results"]

    def add(scen: str, label: str, get: Any) -> None:
        vals = []
        for key in SERVERS:
            try:
                vals.append(get(r[scen][key]))
            except (KeyError, TypeError):
                vals.append(None)
        rows.append((scen, label, vals[0], vals[1]))

    if "state_storage" in r:
        add("state_storage", "state changes", lambda x: x["state_changes"])
        add("state_storage", "state changes/s (joins + custom state)",
            lambda x: x["state_changes_per_s"])
        add("state_storage", "DB MiB as left (db + WAL)", lambda x: mb(x["db"]["bytes_as_left"]))
        add("state_storage", "DB MiB after VACUUM", lambda x: mb(x["db"]["bytes_vacuumed"]))
        add("state_storage", "state tables MiB (after VACUUM)",
            lambda x: mb(x["db"]["state_bytes"]))
        add("state_storage", "state + event tables MiB", lambda x: mb(x["db"]["room_bytes"]))
    if "big_initial_sync" in r:
        add("big_initial_sync", "rooms x members",
            lambda x: f"{x['populate']['rooms']}x{x['populate']['members']}")
        add("big_initial_sync", "populate joins/s", lambda x: x["populate"]["joins_per_s"])
        for kind in ("full", "lazy"):
            add("big_initial_sync", f"initial sync {kind}: median s",
                lambda x, k=kind: x[k]["median_s"])
            add("big_initial_sync", f"initial sync {kind}: first s",
                lambda x, k=kind: x[k]["first_s"])
            add("big_initial_sync", f"initial sync {kind}: MB",
                lambda x, k=kind: round(x[k]["bytes"] / 1e6, 1))
            add("big_initial_sync", f"initial sync {kind}: state events",
                lambda x, k=kind: x[k]["state_events"])
            add("big_initial_sync", f"initial sync {kind}: members sent",
                lambda x, k=kind: x[k]["member_events"])
    if "idle_lead" in r:
        add("idle_lead", "idle long-polls", lambda x: x["idle_syncs"])
        add("idle_lead", "held at start / end",
            lambda x: f"{x['held_at_start']} / {x['held_at_end']}")
        add("idle_lead", "RSS MiB before", lambda x: x["rss_mib_before"])
        add("idle_lead", "RSS MiB held", lambda x: x["rss_mib_held"])
        add("idle_lead", "RSS MiB peak (during fan-out)", lambda x: x["rss_mib_peak"])
        add("idle_lead", "KiB per long-poll", lambda x: x["kib_per_long_poll"])
        for k in ("p50_ms", "p95_ms", "p99_ms"):
            add("idle_lead", f"fan-out {k.replace('_ms', '')} ms", lambda x, k=k: x["fanout"][k])
        add("idle_lead", "fan-out misses / errors",
            lambda x: f"{x['fanout']['missed']} / {x['fanout']['errors']}")
        add("idle_lead", "long-poll errors / early returns",
            lambda x: f"{x['poll_errors']} / {x['early_returns']}")
    out = ["| scenario | figure | Synapse | Parley | Parley / Synapse |", "|---|---|---:|---:|---:|"]
    for scen, label, s, p in rows:
        num = isinstance(s, (int, float)) and isinstance(p, (int, float))
        out.append(f"| {scen} | {label} | {s if s is not None else '-'} | "
                   f"{p if p is not None else '-'} | {ratio(p, s) if num else ''} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    chosen = [s for s in SCENARIOS if s in {x.strip() for x in args.scenarios.split(",")}]
    if not chosen:
        raise SystemExit(f"no known scenario in {args.scenarios!r}; known: {SCENARIOS}")
    if args.reuse and not args.data_dir:
        raise SystemExit("--reuse needs --data-dir")
    raise_fd_limit()
    soft = __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)[0]
    need = max(args.idle_parley, args.idle_synapse) + 200
    if "idle_lead" in chosen and soft < need:
        raise SystemExit(f"RLIMIT_NOFILE {soft} < {need}: lower --idle-parley/--idle-synapse")
    root = args.data_dir or Path(tempfile.mkdtemp(prefix="parley-lead-"))
    root.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "timestamp": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "scenarios": chosen, "results": {}, "failures": {},
    }
    try:
        for scen in chosen:
            for key in SERVERS:
                if args.only and key != args.only:
                    continue
                log(f"== {scen} on {key}")
                try:
                    out = RUNNERS[scen](key, root, args)
                    results["results"].setdefault(scen, {})[key] = out
                except Exception as exc:  # report the other server's figures anyway
                    traceback.print_exc()
                    results["failures"][f"{scen}/{key}"] = f"{type(exc).__name__}: {exc}"
    finally:
        if not args.data_dir:
            shutil.rmtree(root, ignore_errors=True)
    print("\n" + render(results) + "\n")
    for what, why in results["failures"].items():
        print(f"FAILED {what}: {why.splitlines()[0]}")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"lead-{results['timestamp']}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    log(f"results written to {path}")
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

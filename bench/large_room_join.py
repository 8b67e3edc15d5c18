"""A large remote room join, Parley beside Synapse in one run (issue 16, "Speed").

Three servers over TLS on loopback (test CA and process helpers of tests/interop/rig.py):

    H   Synapse, hosts a public room with N members (default 1000), populated first
    S   Synapse, a user joins the room through H
    P   Parley (this checkout), a user joins the room through H

For each repetition, fresh S and P are started (so each join is a server's first join of
the room, not a local one) and their users join one after the other, the order
alternating per repetition. Measured per joiner (seconds from the start of the join):

    join     POST /join/{alias or id}?server_name=H returned 200
    usable   the last of: /messages shows the populated history (backfill included),
             /joined_members lists every member H lists, and a message the joiner sent
             is stored on H

and the RSS of S and P (before the join, after it was usable, and the peak).

    .venv/bin/python bench/large_room_join.py --members 20          # smoke, ~30 s
    .venv/bin/python bench/large_room_join.py                       # N=1000
    .venv/bin/python bench/large_room_join.py --host-dir /tmp/bigH  # keep H populated
    .venv/bin/python bench/large_room_join.py --host-dir /tmp/bigH --reuse --reps 3
    .venv/bin/python bench/large_room_join.py --profile-parley      # py-spy on P's join

Results: a markdown table on stdout and bench/results/large_room_join-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path[:0] = [str(REPO_DIR), str(BENCH_DIR)]

import aiohttp  # noqa: E402
from harness.big_room import (  # noqa: E402
    POPULATE_TAG,
    Account,
    Client,
    JoinTiming,
    PopulatePlan,
    joined_members,
    leave_and_wait,
    measure_join,
    populate,
    register_open,
    send_text,
)
from harness.joinbench_servers import (  # noqa: E402
    BenchParley,
    BenchSynapse,
    HostSynapse,
    notary_of,
    proc_memory,
)
from harness.pyspy_summary import PySpy  # noqa: E402

from tests.interop.certs import TestCa  # noqa: E402
from tests.interop.rig import synapse_python, synapse_version  # noqa: E402

STATE_FILE = "joinbench_host.json"
RESULTS_DIR = BENCH_DIR / "results"


def say(text: str) -> None:
    print(text, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, default=1000,
                   help="members of the room on H besides its admin (default 1000)")
    p.add_argument("--reps", type=int, default=1, help="repetitions (fresh S and P each)")
    p.add_argument("--concurrency", type=int, default=8, help="populate: requests in flight")
    p.add_argument("--host-dir", type=Path, default=None,
                   help="keep H (config, keys, database) in this directory after the run")
    p.add_argument("--reuse", action="store_true",
                   help="start the populated H found in --host-dir instead of populating")
    p.add_argument("--join-by", choices=("alias", "id"), default="alias")
    p.add_argument("--only", choices=("synapse", "parley"), default=None,
                   help="measure one joiner only")
    p.add_argument("--parley-db", choices=("sqlite", "postgres"),
                   default=os.environ.get("PARLEY_TEST_DB", "sqlite"))
    p.add_argument("--parley-join", choices=("default", "partial", "full"), default="default",
                   help="P's federation.partial_state_joins: the checkout's default, on "
                        "(send_join with omit_members) or off (the whole state in the join)")
    p.add_argument("--no-notary", action="store_true",
                   help="S and P do not trust H as a key notary (a reused H then holds "
                        "events of gone servers that they cannot verify)")
    p.add_argument("--no-chatter", action="store_true",
                   help="H's admin sends no message after a joiner left (the next join's "
                        "prev event is then that leave, a state event)")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="seconds a joiner may take to join and become usable")
    p.add_argument("--profile-parley", action="store_true",
                   help="sample P with py-spy during its join (needs py-spy, --py-spy)")
    p.add_argument("--profile-window", choices=("join", "usable"), default="join",
                   help="profile POST /join only, or until the room is usable")
    p.add_argument("--py-spy", default=shutil.which("py-spy") or "/tmp/joinbench-tools/bin/py-spy")
    p.add_argument("--parley-log-level", choices=("DEBUG", "INFO"), default=None,
                   help="P's logging.level (DEBUG logs each join's phase timings)")
    p.add_argument("--keep-logs", type=Path, default=None,
                   help="copy the servers' logs (and the profile) into this directory")
    args = p.parse_args(argv)
    for name, low, high in (("members", 1, 20_000), ("reps", 1, 20),
                            ("concurrency", 1, 64)):
        if not low <= getattr(args, name) <= high:
            p.error(f"--{name} must be in [{low}, {high}]")
    if not 10 <= args.timeout <= 7200:
        p.error("--timeout must be in [10, 7200]")
    if args.reuse and args.host_dir is None:
        p.error("--reuse needs --host-dir")
    return args


# ---- H ------------------------------------------------------------------------------------


def host_state(host_dir: Path | None) -> dict[str, Any] | None:
    if host_dir is None or not (host_dir / STATE_FILE).exists():
        return None
    return json.loads((host_dir / STATE_FILE).read_text())


async def bring_up_host(args: argparse.Namespace, ca: TestCa,
                        session: aiohttp.ClientSession) -> tuple[HostSynapse, dict[str, Any]]:
    state = host_state(args.host_dir)
    if state is not None and not args.reuse:
        raise SystemExit(f"{args.host_dir} already holds a populated H; pass --reuse "
                         "or remove it")
    if args.reuse and state is None:
        raise SystemExit(f"--reuse: no populated H in {args.host_dir} ({STATE_FILE})")
    if state is not None and state["members"] != args.members:
        raise SystemExit(f"H in {args.host_dir} has {state['members']} members, "
                         f"not --members {args.members}")
    host = HostSynapse(ca, args.host_dir, state)
    t0 = time.monotonic()
    host.start()
    say(f"H (Synapse) up as {host.server_name} in {time.monotonic() - t0:.1f}s")
    if state is not None:
        return host, state
    client = Client(session, host.base_url)
    plan = PopulatePlan(members=args.members, concurrency=args.concurrency)
    try:
        result = await populate(client, host.shared_secret, plan, "", say)
    except BaseException:  # interrupted or failed: H goes too (a half-filled dir stays)
        host.stop()
        raise
    state = {
        "members": args.members, "room_id": result.room_id, "alias": result.alias,
        "admin": {"user_id": result.admin.user_id, "token": result.admin.token},
        "messages": result.messages, "state_changes": result.state_changes,
        "populate_s": round(result.seconds, 1), **host.ports(),
    }
    say(f"populated in {result.seconds:.0f}s: {args.members} members, "
        f"{result.messages} messages, {result.state_changes} state changes")
    if args.host_dir is not None:
        (args.host_dir / STATE_FILE).write_text(json.dumps(state, indent=1))
    return host, state


# ---- one joiner ---------------------------------------------------------------------------


async def run_joiner(kind: str, server: Any, args: argparse.Namespace, state: dict[str, Any],
                     host: HostSynapse, session: aiohttp.ClientSession,
                     profile_to: Path | None) -> dict[str, Any]:
    client = Client(session, server.base_url)
    hclient = Client(session, host.base_url)
    admin = Account(state["admin"]["user_id"], state["admin"]["token"])
    account = await register_open(client, "joiner" + secrets.token_hex(4))
    expected = await joined_members(hclient, admin.token, state["room_id"])
    target = state["alias"] if args.join_by == "alias" else state["room_id"]
    before = proc_memory(server.pid)
    spy = PySpy(args.py_spy, server.pid, profile_to) if profile_to else None
    if spy is not None:
        spy.start()
    try:
        timing: JoinTiming = await measure_join(
            client, account, target, host.server_name, hclient, admin.token, expected,
            kind, timeout_s=args.timeout,
            on_joined=spy.interrupt if spy is not None and args.profile_window == "join"
            else None)
    finally:
        if spy is not None:
            spy.stop()
    after = proc_memory(server.pid)
    if timing.join_s is not None and not await leave_and_wait(
            client, account, state["room_id"], hclient, admin.token):
        timing.errors.append("leave: H still lists the joiner (later joins may try this "
                             "server for backfill after it is stopped)")
    if not args.no_chatter:
        # The room talks on: the newest event before the next join is a message, not
        # this leave (see README: Parley's backfill and a state event at the edge).
        await send_text(hclient, admin.token, state["room_id"],
                        f"{POPULATE_TAG}: after {kind} left")
    row = {
        "joiner": kind, "server_name": server.server_name, "join_s": timing.join_s,
        "timeline_s": timing.timeline_s, "members_s": timing.members_s,
        "echo_s": timing.echo_s, "usable_s": timing.usable_s,
        "members_expected": len(expected) + 1, "members_seen": timing.members_seen,
        "rss_before_mib": before.get("rss_mib"), "rss_after_mib": after.get("rss_mib"),
        "rss_peak_mib": after.get("hwm_mib"), "errors": timing.errors,
    }
    say(f"  {kind:8} join {fmt(timing.join_s)}s, usable {fmt(timing.usable_s)}s "
        f"(timeline {fmt(timing.timeline_s)}, members {fmt(timing.members_s)} "
        f"[{timing.members_seen}/{len(expected) + 1}], echo {fmt(timing.echo_s)}), "
        f"RSS {row['rss_after_mib']} MiB" + (f"; errors: {timing.errors}" if timing.errors
                                             else ""))
    if spy is not None:
        row["profile"] = spy.summary()
    return row


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


async def one_rep(rep: int, args: argparse.Namespace, ca: TestCa, state: dict[str, Any],
                  host: HostSynapse, session: aiohttp.ClientSession,
                  logs: Path | None, notary: dict[str, Any] | None) -> list[dict[str, Any]]:
    order = ["synapse", "parley"] if rep % 2 == 0 else ["parley", "synapse"]
    if args.only:
        order = [args.only]
    servers: dict[str, Any] = {}
    rows = []
    try:
        for kind in order:  # both up before either joins: the same background load
            t0 = time.monotonic()
            servers[kind] = (BenchSynapse(ca, f"s{rep}", notary) if kind == "synapse"
                             else BenchParley(ca, f"p{rep}", args.parley_db, notary,
                                              partial_state_setting(args.parley_join),
                                              args.parley_log_level))
            servers[kind].start()
            say(f"rep {rep + 1}: {kind} up as {servers[kind].server_name} "
                f"in {time.monotonic() - t0:.1f}s")
        for kind in order:
            profile_to = None
            if kind == "parley" and args.profile_parley:
                profile_to = (logs or Path(tempfile.gettempdir())) / f"parley-join-r{rep}.txt"
            row = await run_joiner(kind, servers[kind], args, state, host, session, profile_to)
            row["rep"] = rep + 1
            row["position"] = order.index(kind) + 1
            rows.append(row)
    finally:
        for kind, server in servers.items():
            if logs is not None:
                server.copy_logs(logs, f"r{rep + 1}-{kind}")
            server.stop()
    return rows


def partial_state_setting(choice: str, resolve: bool = False) -> bool | None:
    """``federation.partial_state_joins`` for P (None: leave the checkout's default; with
    ``resolve``, that default itself)."""
    if choice != "default":
        return choice == "partial"
    if not resolve:
        return None
    from homeserver.config.federation import FederationConfig

    return getattr(FederationConfig(), "partial_state_joins", None)


# ---- report -------------------------------------------------------------------------------


def median(rows: list[dict[str, Any]], kind: str, key: str) -> float | None:
    values = [r[key] for r in rows if r["joiner"] == kind and r[key] is not None]
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def render(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    out = [f"## Large room join: {meta['members']} members on H (Synapse "
           f"{meta['synapse_version']}), {meta['reps']} rep(s), join by {meta['join_by']}, "
           f"Parley partial_state_joins={meta['parley_partial_state_joins']}", "",
           "| rep | # | joiner | join s | timeline s | members s | echo s | usable s "
           "| members | RSS before MiB | RSS after MiB | RSS peak MiB |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['rep']} | {r['position']} | {r['joiner']} | {fmt(r['join_s'])} "
                   f"| {fmt(r['timeline_s'])} | {fmt(r['members_s'])} | {fmt(r['echo_s'])} "
                   f"| {fmt(r['usable_s'])} | {r['members_seen']}/{r['members_expected']} "
                   f"| {r['rss_before_mib']} | {r['rss_after_mib']} | {r['rss_peak_mib']} |")
    out += ["", "| median | Synapse | Parley | Parley/Synapse |", "|---|---:|---:|---:|"]
    for key, label in (("join_s", "join s"), ("usable_s", "usable s"),
                       ("rss_after_mib", "RSS after MiB"), ("rss_peak_mib", "RSS peak MiB")):
        s, p = median(rows, "synapse", key), median(rows, "parley", key)
        out.append(f"| {label} | {fmt(s)} | {fmt(p)} | {ratio(p, s)} |")
    errors = [f"rep {r['rep']} {r['joiner']}: {e}" for r in rows for e in r["errors"]]
    if errors:
        out += ["", "Errors:", *[f"* {e}" for e in errors]]
    for r in rows:
        if r.get("profile"):
            out += ["", f"Parley profile (rep {r['rep']}, py-spy over the "
                        f"{meta['profile_window']} window, % of samples, all threads):",
                    "", "```", r["profile"], "```"]
    return "\n".join(out)


async def main_async(args: argparse.Namespace) -> int:
    if not os.path.exists(synapse_python()):
        say(f"no Synapse at {synapse_python()}; running bench/setup_synapse.sh")
        subprocess.run(["bash", str(BENCH_DIR / "setup_synapse.sh")], check=True)
    if args.profile_parley and not os.path.exists(args.py_spy):
        raise SystemExit(f"--profile-parley: no py-spy at {args.py_spy} (pip install py-spy "
                         "into a venv of its own and pass --py-spy)")
    work = Path(tempfile.mkdtemp(prefix="joinbench-"))
    if args.host_dir is not None:
        args.host_dir.mkdir(parents=True, exist_ok=True)
    if args.keep_logs is not None:
        args.keep_logs.mkdir(parents=True, exist_ok=True)
    ca = TestCa(str(work / "ca"))
    connector = aiohttp.TCPConnector(limit=max(16, args.concurrency * 2))
    rows: list[dict[str, Any]] = []
    started = time.time()
    async with aiohttp.ClientSession(connector=connector) as session:
        host, state = await bring_up_host(args, ca, session)
        try:
            notary = None if args.no_notary else notary_of(host, ca.ca_path)
            for rep in range(args.reps):
                rows += await one_rep(rep, args, ca, state, host, session, args.keep_logs,
                                      notary)
        finally:
            if args.keep_logs is not None:
                host.copy_logs(args.keep_logs, "host")
            host.stop()
            shutil.rmtree(work, ignore_errors=True)
    meta = {"members": args.members, "reps": args.reps, "join_by": args.join_by,
            "profile_window": args.profile_window, "notary": not args.no_notary,
            "parley_partial_state_joins": partial_state_setting(args.parley_join, True),
            "synapse_version": synapse_version(), "parley_db": args.parley_db,
            "populate_s": state.get("populate_s"), "messages": state.get("messages"),
            "state_changes": state.get("state_changes"),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "wall_s": round(time.time() - started, 1)}
    say("")
    say(render(rows, meta))
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"large_room_join-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    say(f"\nwritten to {out}")
    return 1 if any(r["errors"] for r in rows) else 0


async def _cancellable(args: argparse.Namespace) -> int:
    """main_async, cancelled by SIGTERM or SIGINT (also when started in the background,
    where SIGINT is ignored), so every server is stopped on the way out."""
    task = asyncio.ensure_future(main_async(args))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        say("interrupted: servers stopped")
        return 130


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    return asyncio.run(_cancellable(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


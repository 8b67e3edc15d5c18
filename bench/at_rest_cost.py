"""What optional encryption at rest of message content and profiles costs, measured on
real ``parley run`` processes (Parley only, no Synapse), started once per variant and
compared side by side:

    off           no key-encryption key (nothing sealed; the baseline)
    key only      ``secrets.at_rest_key`` set: server-held secrets (TOTP, pushkeys, key
                  file) sealed, event JSON and profiles in plaintext
    content       ``secrets.encrypt_event_content`` + ``secrets.encrypt_profiles``: every
                  event's JSON and profile field sealed (AES-256-GCM envelopes bound to
                  their row, homeserver/crypto/content.py)

For each variant: message send throughput and latency (``PUT /send``, ``--messages``
over ``--concurrency`` connections, 10 users in one room), then reads of that history:
initial ``/sync`` (every event of the timeline and the room state decrypted) and
``/messages?limit=100`` backwards pages. The variants run ``--rounds`` times in a
rotating order (a shared machine's noise hits each alike) and each figure is the
median over the rounds; the server's CPU time per operation (its process group, from
/proc) is shown next to the wall-clock figures, being much less disturbed by other
load on a shared machine. Before that, the pure CPU cost of sealing and opening one
typical event JSON in-process (no server, no database).

    .venv/bin/python bench/at_rest_cost.py [--rounds 3] [--messages 2000]
        [--syncs 300] [--pages 300] [--concurrency 8]

Results are printed as Markdown tables and written to bench/results/at_rest_cost-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp  # noqa: E402
from harness.loadgen import run_load  # noqa: E402
from harness.machine import cpu_busy_fraction  # noqa: E402
from harness.procstat import sample_group  # noqa: E402
from harness.runner import CHEAP_HASHING  # noqa: E402
from harness.scenarios.base import BenchContext  # noqa: E402
from harness.scenarios.rooms_api import Api  # noqa: E402
from ops_cost import VariantServer, with_server  # noqa: E402

KEY = base64.b64encode(os.urandom(32)).decode("ascii")  # a throwaway KEK for the run


def variants() -> list[tuple[str, dict[str, Any]]]:
    key = {"secrets": {"at_rest_key": KEY}}
    content = {"secrets": {"at_rest_key": KEY, "encrypt_event_content": True,
                           "encrypt_profiles": True}}
    return [("off", {}), ("key only", key), ("content", content)]


def log(message: str) -> None:
    print(f"[at_rest_cost {time.strftime('%H:%M:%S')}] {message}", flush=True)


async def measure(server: VariantServer, args: argparse.Namespace) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(limit=args.concurrency)) as session:
        ctx = BenchContext("parley", server.base_url, session, args, secrets.token_hex(3),
                           server_pid=server.pid)
        api = Api(ctx)
        users = await api.register_many("enc", 10, args.concurrency)
        room = await api.create_room(users[0])
        for u in users[1:]:
            await api.join(u, room)

        async def send(i: int, tag: str) -> int:
            user = users[i % len(users)]
            status, _ = await api.send(user, room, f"{tag}{i}-{secrets.token_hex(3)}",
                                       {"msgtype": "m.text",
                                        "body": f"bench message {i}: " + "lorem ipsum " * 8})
            return status

        await run_load(lambda i: send(i, "w"), 100, args.concurrency, 60)  # warm-up
        cpu = CpuMeter(server.pid)
        sent = await run_load(lambda i: send(i, "m"), args.messages, args.concurrency,
                              args.time_limit)
        send_cpu = cpu.per_op(sent.summary()["ok"])

        async def initial_sync(i: int) -> int:
            status, _ = await api.sync(users[i % len(users)])
            return status

        cpu = CpuMeter(server.pid)
        synced = await run_load(initial_sync, args.syncs, args.concurrency, args.time_limit)
        sync_cpu = cpu.per_op(synced.summary()["ok"])

        async def page(i: int) -> int:
            path = (f"/_matrix/client/v3/rooms/{quote(room, safe='')}/messages")
            status, data = await api.call("GET", path, users[i % len(users)].token,
                                          params={"dir": "b", "limit": "100"})
            if status == 200 and len(data.get("chunk", [])) != 100:
                api.note(f"/messages returned {len(data.get('chunk', []))} events")
                return -1
            return status

        cpu = CpuMeter(server.pid)
        paged = await run_load(page, args.pages, args.concurrency, args.time_limit)
        page_cpu = cpu.per_op(paged.summary()["ok"])
    return {"send": sent.summary() | {"cpu_ms_per_op": send_cpu},
            "initial_sync": synced.summary() | {"cpu_ms_per_op": sync_cpu},
            "messages_100": paged.summary() | {"cpu_ms_per_op": page_cpu},
            "first_errors": api.errors}


class CpuMeter:
    """Server CPU time (user + system, its process group) from now on, per operation:
    less disturbed than wall-clock throughput by other load on a shared machine."""

    def __init__(self, pid: int | None) -> None:
        self._pid = pid
        self._start = sample_group(pid) if pid else None

    def per_op(self, ops: int) -> float | None:
        end = sample_group(self._pid) if self._pid else None
        if self._start is None or end is None or ops <= 0:
            return None
        return round((end.cpu_s - self._start.cpu_s) * 1000 / ops, 3)


METRICS = ("send", "initial_sync", "messages_100")


async def run_all(root: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every run: (round, variant, results)."""
    runs = []
    order = variants()
    for n in range(args.rounds):
        for name, overrides in order[n % len(order):] + order[:n % len(order)]:
            busy = cpu_busy_fraction()
            log(f"round {n + 1}: {name} (CPUs {busy or 0:.0%} busy before) ...")
            workdir = root / f"{name.replace(' ', '_')}-{n}"
            server = VariantServer(workdir, overrides, CHEAP_HASHING)
            result = await with_server(server, lambda s: measure(s, args))
            runs.append({"round": n + 1, "variant": name, **result})
            for what in METRICS:
                r = result[what]
                log(f"  {what}: {r['ok']} ok, {r['errors']} errors, {r['ops_per_s']}/s, "
                    f"p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms, "
                    f"server CPU {r['cpu_ms_per_op']} ms/op")
            shutil.rmtree(workdir, ignore_errors=True)
    return runs


def medians(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant and metric, the median over the rounds of each figure."""
    rows = []
    for name, _ in variants():
        mine = [r for r in runs if r["variant"] == name]
        row: dict[str, Any] = {"variant": name, "rounds": len(mine)}
        for what in METRICS:
            row[what] = {k: statistics.median(r[what][k] or 0 for r in mine)
                         for k in ("ops_per_s", "p50_ms", "p95_ms", "p99_ms", "cpu_ms_per_op")}
            row[what]["ok"] = sum(r[what]["ok"] for r in mine)
            row[what]["errors"] = sum(r[what]["errors"] for r in mine)
        rows.append(row)
    return rows


def crypto_cost(samples: int = 2000) -> dict[str, float]:
    """Microseconds to seal / open one typical message event's JSON (in-process)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from homeserver.crypto.at_rest import Keyring, SecretVault
    from homeserver.crypto.content import FieldCodec, event_location

    codec = FieldCodec(SecretVault(Keyring({"k": base64.b64decode(KEY)}, "k")), True)
    event = json.dumps({
        "type": "m.room.message", "room_id": "!abcdefghijklmnop:example.org",
        "sender": "@someone:example.org", "origin_server_ts": 1_700_000_000_000,
        "content": {"msgtype": "m.text", "body": "bench message: " + "lorem ipsum " * 8},
        "depth": 1234, "prev_events": ["$" + "a" * 43], "auth_events": ["$" + "b" * 43] * 3,
        "hashes": {"sha256": "c" * 43}, "signatures": {"example.org": {"ed25519:a": "d" * 86}},
    })
    loc = event_location("$" + "e" * 43)
    t0 = time.perf_counter()
    sealed = [codec.seal(event, loc) for _ in range(samples)]
    t1 = time.perf_counter()
    for s in sealed:
        codec.open(s, loc)
    t2 = time.perf_counter()
    return {"json_bytes": len(event), "sealed_bytes": len(sealed[0]),
            "seal_us": round((t1 - t0) / samples * 1e6, 1),
            "open_us": round((t2 - t1) / samples * 1e6, 1)}


def render(rows: list[dict[str, Any]], crypto: dict[str, float]) -> str:
    out = ["### Crypto per event (in-process, one core)", "",
           f"A {crypto['json_bytes']}-byte event JSON is stored as {crypto['sealed_bytes']} "
           f"bytes; sealing takes {crypto['seal_us']} us, opening {crypto['open_us']} us.",
           ""]
    titles = {"send": "Message send (PUT /send)",
              "initial_sync": "Initial /sync (10 users, one room with the history)",
              "messages_100": "/messages?dir=b&limit=100"}
    for what, title in titles.items():
        out += [f"### {title} (median of {rows[0]['rounds']} rounds)", "",
                "| variant | server CPU ms/op | ops/s | p50 ms | p95 ms | p99 ms | ok | errors |",
                "|---|---:|---:|---:|---:|---:|---:|---:|"]
        base = rows[0][what]["ops_per_s"] or 1
        base_cpu = rows[0][what]["cpu_ms_per_op"] or 1
        for row in rows:
            r = row[what]
            out.append(f"| {row['variant']} | {r['cpu_ms_per_op']} "
                       f"({r['cpu_ms_per_op'] / base_cpu:.0%}) | {r['ops_per_s']} "
                       f"({r['ops_per_s'] / base:.0%}) | {r['p50_ms']} | {r['p95_ms']} | "
                       f"{r['p99_ms']} | {r['ok']} | {r['errors']} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="runs of every variant (3)")
    p.add_argument("--messages", type=int, default=2000, help="messages sent (2000)")
    p.add_argument("--syncs", type=int, default=300, help="initial syncs (300)")
    p.add_argument("--pages", type=int, default=300, help="/messages pages of 100 (300)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--time-limit", type=float, default=120.0)
    p.add_argument("--results-dir", type=Path,
                   default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="parley-at-rest-bench-"))
    results: dict[str, Any] = {"timestamp": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
                               "cpus": os.cpu_count(),
                               "params": vars(args) | {"results_dir": str(args.results_dir)}}
    results["crypto"] = crypto_cost()
    log(f"crypto per event: {results['crypto']}")
    try:
        results["runs"] = asyncio.run(run_all(root, args))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results["medians"] = medians(results["runs"])
    print("\n" + render(results["medians"], results["crypto"]))
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"at_rest_cost-{results['timestamp']}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    log(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

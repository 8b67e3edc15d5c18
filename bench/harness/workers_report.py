"""Tables and JSON of bench/workers.py, and the per-core arithmetic behind them.

Per core: msg/s per CPU-second is messages answered 200 divided by the CPU seconds
(utime+stime) the deployment's processes used while sending; "+DB" adds the CPU of the
PostgreSQL backends connected to its database. What more cores would give is an
estimate from the same figures, not a measurement: a Python process uses at most about
one core, so a deployment cannot go past ``messages / CPU s of its busiest process``
per second, and a machine of k cores not past ``k x messages / (server + DB CPU s)``
(the load generator's own CPU, which shares this machine, left out).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CORES = (2, 4, 8)


def ceilings(send: dict[str, Any]) -> dict[str, Any]:
    """Estimated msg/s with k cores: min(one-core bound of the busiest process,
    k cores / CPU per message of server + DB)."""
    ok = send.get("ok") or 0
    per_proc = send.get("cpu_s_per_process") or []
    total = (send.get("cpu_s") or 0) + (send.get("db_cpu_s") or 0)
    if not ok or not per_proc or max(per_proc) <= 0 or total <= 0:
        return {}
    process_bound = ok / max(per_proc)
    return {"busiest_process_bound_msg_s": round(process_bound, 1),
            **{f"est_msg_s_{k}_cores": round(min(process_bound, k * ok / total), 1)
               for k in CORES}}


def per_cpu(send: dict[str, Any]) -> tuple[float | None, float | None]:
    ok = send.get("ok") or 0
    cpu, db = send.get("cpu_s") or 0, send.get("db_cpu_s") or 0
    return (round(ok / cpu, 1) if cpu else None,
            round(ok / (cpu + db), 1) if cpu + db else None)


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, list):
        return " / ".join(_f(v, digits) for v in value)
    return f"{value:,}" if isinstance(value, int) else str(value)


def send_table(results: dict[str, Any]) -> str:
    lines = ["| configuration | msg/s | p50 ms | p95 ms | errors | CPU s (per process) | "
             "DB CPU s | msg per CPU-s | msg per CPU-s +DB | RSS MiB | est. msg/s @2/4/8 "
             "cores |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|"]
    for key, conf in results["configs"].items():
        send = conf.get("send")
        if not send:
            continue
        own, with_db = per_cpu(send)
        est = send.get("ceilings") or {}
        cores = " / ".join(_f(est.get(f"est_msg_s_{k}_cores"), 0) for k in CORES)
        lines.append(
            f"| {key}. {conf['label']} | {_f(send['ops_per_s'])} | {_f(send['p50_ms'])} | "
            f"{_f(send['p95_ms'])} | {send['errors']} | {_f(send['cpu_s'], 2)} "
            f"({_f(send['cpu_s_per_process'], 2)}) | {_f(send['db_cpu_s'], 2)} | "
            f"{_f(own)} | {_f(with_db)} | {_f(send['rss_mib'])} | {cores} |")
    return "\n".join(lines)


def idle_table(results: dict[str, Any]) -> str:
    lines = ["| configuration | long-polls held (per reader) | RSS MiB before / held / peak "
             "(held per process) | KiB per poll | CPU % holding (per process) | DB CPU % "
             "holding | fan-out p50 / p95 ms | fan-out CPU s | missed / early / errors |",
             "|---|---|---|---:|---|---:|---|---:|---|"]
    for key, conf in results["configs"].items():
        idle = conf.get("idle")
        if not idle:
            continue
        fan = idle["fanout"] or {}
        readers = f" ({_f(idle['syncs_per_reader'], 0)})" if idle["syncs_per_reader"] else ""
        lines.append(
            f"| {key}. {conf['label']} | {idle['held_at_start']}{readers} | "
            f"{_f(idle['rss_mib_before'])} / {_f(idle['rss_mib_held'])} / "
            f"{_f(idle['rss_mib_peak'])} ({_f(idle['rss_mib_held_per_process'])}) | "
            f"{_f(idle['kib_per_long_poll'])} | {_f(idle['hold_cpu_pct'])} "
            f"({_f(idle['hold_cpu_pct_per_process'])}) | {_f(idle['hold_db_cpu_pct'])} | "
            f"{_f(fan.get('p50_ms'))} / {_f(fan.get('p95_ms'))}"
            f"{' (failed)' if idle.get('fanout_failed') else ''} | "
            f"{_f(idle['fanout_cpu']['cpu_s'], 2)} | {_f(fan.get('missed'))} / "
            f"{idle['early_returns']} / {idle['poll_errors'] + (fan.get('poll_errors') or 0)} |")
    return "\n".join(lines)


def render(results: dict[str, Any]) -> str:
    p = results["params"]
    head = (f"Parameters: messages={p['messages']} concurrency={p['concurrency']} "
            f"send_users={p['send_users']} (own room each) idle_syncs={p['idle_syncs']} "
            f"idle_timeout_ms={p['idle_timeout_ms']} fanout={p['fanout_receivers']} receivers x "
            f"{p['fanout_messages']} messages; PostgreSQL, {p['cpus']} CPUs, one "
            f"configuration at a time; hashing: {p['hashing']}")
    busy = ", ".join(f"{k} {v:.0%}" for k, v in results["cpu_busy_before"].items()
                     if v is not None)
    parts = [head, send_table(results), idle_table(results),
             f"CPUs busy with other work just before each configuration started: {busy}"]
    parts += [f"WARNING: {w}" for w in results.get("warnings", [])]
    parts += [f"FAILED {k}: {v.splitlines()[0]}" for k, v in results["failures"].items()]
    return "\n\n".join(parts)


def write_json(results: dict[str, Any], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"workers-{results['timestamp']}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path

"""Markdown comparison table and JSON results file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# (summary key, label, higher_is_better or None when no ratio makes sense)
METRICS: list[tuple[str, str, bool | None]] = [
    ("ops_per_s", "ops/s", True),
    ("p50_ms", "p50 ms", False),
    ("p95_ms", "p95 ms", False),
    ("p99_ms", "p99 ms", False),
    ("errors", "errors", None),
    ("rate_limited", "429s", None),
    ("not_run", "not run", None),
]
# Scenario-specific figures (LoadResult.extra); a row appears only where a server has one.
EXTRA_METRICS: list[tuple[str, str, bool | None]] = [
    ("send_p50_ms", "PUT send p50 ms", False),
    ("send_p99_ms", "PUT send p99 ms", False),
    ("missed", "deliveries missed", None),
    ("duplicates", "duplicate deliveries", None),
    ("idle_syncs", "idle long-polls", None),
    ("ramp_sent_all_s", "s until all long-polls sent", False),
    ("ramp_parked_p50_s", "s until half the long-polls in flight", False),
    ("ramp_parked_all_s", "s until all long-polls in flight", False),
    ("ramp_unaccounted", "long-polls never answered (ramp)", None),
    ("held_min", "long-polls held (min)", None),
    ("poll_errors", "long-poll errors", None),
    ("early_returns", "idle early returns", None),
    ("server_rss_mib_before", "server RSS MiB before", False),
    ("server_rss_mib_peak", "server RSS MiB peak", False),
    ("server_fds_peak", "server open fds peak", None),
    ("server_cpu_pct_hold", "server CPU % holding", False),
    ("server_cpu_pct_send", "server CPU % sending", False),
]
SERVERS = (("synapse", "Synapse"), ("parley", "Parley"))
# What the header mentions, per scenario.
SCENARIO_PARAMS = {
    "register": ("users",), "login": ("logins",),
    "send": ("messages", "send_users", "send_rooms"),
    "fanout": ("fanout_receivers", "fanout_messages"),
    "idle_sync": ("idle_syncs", "idle_timeout_ms", "idle_duration", "idle_rate"),
}


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


def _ratio(parley: Any, synapse: Any, higher_is_better: bool | None) -> str:
    if higher_is_better is None or not parley or not synapse:
        return "—"
    arrow = "higher is better" if higher_is_better else "lower is better"
    return f"{parley / synapse:.2f}× ({arrow})"


def markdown_table(results: dict[str, Any]) -> str:
    scenarios: list[str] = results["scenarios"]
    by_server: dict[str, dict[str, Any]] = results["results"]
    lines = ["| scenario | metric | Synapse | Parley | ratio Parley/Synapse |",
             "|---|---|---:|---:|---|"]
    for scenario in scenarios:
        for key, label, direction in METRICS + EXTRA_METRICS:
            values = [by_server.get(s, {}).get(scenario, {}).get(key) for s, _ in SERVERS]
            if (key, label, direction) in EXTRA_METRICS and all(v is None for v in values):
                continue
            lines.append(f"| {scenario} | {label} | {_fmt(values[0])} | {_fmt(values[1])} | "
                         f"{_ratio(values[1], values[0], direction)} |")
    return "\n".join(lines)


def hashing_line(results: dict[str, Any]) -> str:
    parts = []
    for key, label in SERVERS:
        info = results["servers"].get(key)
        if info:
            parts.append(f"{label} {info['version']}: {info['password_hashing_text']}")
    if not parts:
        return ""
    line = "Password hashing cost: " + " vs ".join(parts)
    costs = [results["servers"].get(k, {}).get("password_hashing", {}).get("single_hash")
             for k, _ in SERVERS]
    if costs[0] and costs[1] and costs[1]["cpu_ms"] > 0.5 and costs[0]["cpu_ms"] > 0.5:
        ratio = costs[0]["cpu_ms"] / costs[1]["cpu_ms"]
        line += (f". One Synapse hash costs {ratio:.1f}× the CPU of one Parley hash here"
                 + ("; use --synapse-bcrypt-rounds to compare at matched cost."
                    if not 0.67 <= ratio <= 1.5 else " (same cost class)."))
    return line


def render(results: dict[str, Any]) -> str:
    p = results["params"]
    shown = [k for s in results["scenarios"] for k in SCENARIO_PARAMS.get(s, ()) if k in p]
    head = ("Parameters: " + " ".join(f"{k}={p[k]}" for k in shown)
            + f" concurrency={p['concurrency']} (one server at a time, {p['cpus']} CPUs, "
            + f"{'PostgreSQL' if p.get('db') == 'postgres' else 'SQLite'})")
    warnings = [f"WARNING: {w}" for w in results.get("warnings", [])]
    return "\n\n".join([head, markdown_table(results), hashing_line(results), *warnings])


def write_json(results: dict[str, Any], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{results['timestamp']}.json"
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    return path

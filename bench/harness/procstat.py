"""Resource use of a server's process group, read from /proc (Linux only).

The servers run in their own session (``start_new_session``), so the leader's pid is the
process group id and any helper processes it forks are in the same group.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class GroupSample:
    at: float  # time.monotonic()
    rss_kib: int  # sum of VmRSS over the group
    cpu_s: float  # user + system CPU seconds consumed so far, summed over the group
    fds: int  # open file descriptors (sockets included), summed over the group
    procs: int


def _stat_fields(pid: str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # [state, ppid, pgrp, ..., utime(11), stime(12)]


def _rss_kib(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _fd_count(pid: str) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def sample_group(pgid: int) -> GroupSample | None:
    """Totals over every live process whose process group is *pgid* (None if none)."""
    rss = fds = procs = 0
    ticks = 0
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is None or len(fields) < 13 or fields[2] != str(pgid):
            continue
        procs += 1
        ticks += int(fields[11]) + int(fields[12])
        rss += _rss_kib(pid)
        fds += _fd_count(pid)
    if not procs:
        return None
    return GroupSample(time.monotonic(), rss, ticks / _TICKS, fds, procs)


def cpu_percent(a: GroupSample | None, b: GroupSample | None) -> float | None:
    """CPU use between two samples, in % of one core (200 = both cores of a 2-core box)."""
    if a is None or b is None or b.at <= a.at:
        return None
    return round(100 * (b.cpu_s - a.cpu_s) / (b.at - a.at), 1)


def mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)

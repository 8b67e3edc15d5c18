"""Measure one password hash at each server's configured cost, in that server's own venv,
so the report can show the two settings are in the same cost class on this machine."""

from __future__ import annotations

import subprocess
from pathlib import Path

from harness.servers import clean_env

# Best of 7 (after one warm-up): wall-clock ms and process CPU ms (all threads; Argon2 with
# parallelism=2 uses two). CPU ms is what bounds throughput once every core is busy.
_TIMER = """
import time
def probe(fn, n=7):
    fn()
    wall, cpu = [], []
    for _ in range(n):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0); cpu.append(time.process_time() - c0)
    print(round(min(wall) * 1000, 1), round(min(cpu) * 1000, 1))
"""

HashCost = dict[str, float]


def _run(python: Path, code: str) -> HashCost | None:
    if not python.exists():
        return None
    out = subprocess.run([str(python), "-c", _TIMER + code], capture_output=True, text=True,
                         timeout=120, check=False, env=clean_env())
    try:
        wall, cpu = out.stdout.strip().splitlines()[-1].split()
        return {"wall_ms": float(wall), "cpu_ms": float(cpu)}
    except (ValueError, IndexError):
        return None


def describe_cost(cost: HashCost | None) -> str:
    if cost is None:
        return "cost not measured"
    return f"{cost['wall_ms']:g} ms wall / {cost['cpu_ms']:g} ms CPU per hash here"


def bcrypt_cost(python: Path, rounds: int) -> HashCost | None:
    """Cost of one bcrypt hash at *rounds* (single-threaded)."""
    return _run(python, "import bcrypt\n"
                        f"salt = bcrypt.gensalt({rounds})\n"
                        "probe(lambda: bcrypt.hashpw(b'bench-Passw0rd', salt))")


def argon2_cost(
    python: Path, time_cost: int, memory_kib: int, parallelism: int
) -> HashCost | None:
    """Cost of one Argon2id hash with the given parameters."""
    return _run(python, "from argon2 import PasswordHasher\n"
                        f"h = PasswordHasher(time_cost={time_cost}, memory_cost={memory_kib}, "
                        f"parallelism={parallelism})\n"
                        "probe(lambda: h.hash('bench-Passw0rd'))")

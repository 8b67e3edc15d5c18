"""Measure one password hash at each server's configured cost, in that server's own venv,
so the report can show the two settings are in the same cost class on this machine."""

from __future__ import annotations

import subprocess
from pathlib import Path

from harness.servers import clean_env

_TIMER = """
import statistics, time
def probe(fn, n=5):
    fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
    print(round(statistics.median(times) * 1000, 1))
"""


def _run(python: Path, code: str) -> float | None:
    if not python.exists():
        return None
    out = subprocess.run([str(python), "-c", _TIMER + code], capture_output=True, text=True,
                         timeout=120, check=False, env=clean_env())
    try:
        return float(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def bcrypt_ms(python: Path, rounds: int) -> float | None:
    """Median ms of one bcrypt hash at *rounds*, single-threaded."""
    return _run(python, "import bcrypt\n"
                        f"salt = bcrypt.gensalt({rounds})\n"
                        "probe(lambda: bcrypt.hashpw(b'bench-Passw0rd', salt))")


def argon2_ms(python: Path, time_cost: int, memory_kib: int, parallelism: int) -> float | None:
    """Median ms of one Argon2id hash with the given parameters."""
    return _run(python, "from argon2 import PasswordHasher\n"
                        f"h = PasswordHasher(time_cost={time_cost}, memory_cost={memory_kib}, "
                        f"parallelism={parallelism})\n"
                        "probe(lambda: h.hash('bench-Passw0rd'))")

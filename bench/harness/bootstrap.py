"""Make sure the harness runs inside bench/.venv-bench (stdlib only; runs before aiohttp exists)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from harness import BENCH_DIR

BENCH_VENV = BENCH_DIR / ".venv-bench"
REQUIREMENTS = BENCH_DIR / "requirements.txt"
_STAMP = BENCH_VENV / ".requirements.sha256"
_GUARD = "PARLEY_BENCH_BOOTSTRAPPED"


def _in_bench_venv() -> bool:
    return Path(sys.prefix).resolve() == BENCH_VENV.resolve()


def ensure_bench_venv() -> Path:
    """Create bench/.venv-bench and install requirements.txt into it (idempotent)."""
    python = BENCH_VENV / "bin" / "python"
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and _STAMP.exists() and _STAMP.read_text().strip() == wanted:
        return python
    if not python.exists():
        print(f"[bench] creating {BENCH_VENV}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
    print(f"[bench] installing {REQUIREMENTS.name} into {BENCH_VENV}", file=sys.stderr)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)], check=True
    )
    _STAMP.write_text(wanted + "\n")
    return python


def reexec_in_bench_venv(script: Path) -> None:
    """Re-execute *script* with the bench venv's interpreter unless already running in it."""
    if _in_bench_venv():
        return
    if os.environ.get(_GUARD):
        raise SystemExit(f"[bench] re-exec loop: still not inside {BENCH_VENV}")
    python = ensure_bench_venv()
    os.environ[_GUARD] = "1"
    os.execv(str(python), [str(python), str(script), *sys.argv[1:]])

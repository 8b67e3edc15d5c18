#!/usr/bin/env python3
"""Benchmark Parley against Synapse: ``python bench/run.py --help``.

Re-executes itself inside bench/.venv-bench (created on first use) so the load generator's
dependencies never touch the system Python or the repo's .venv.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.bootstrap import reexec_in_bench_venv  # noqa: E402

reexec_in_bench_venv(Path(__file__).resolve())

from harness.runner import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

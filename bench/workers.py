#!/usr/bin/env python3
"""Parley with workers beside one process and Synapse, on PostgreSQL (issue 18):
``python3 bench/workers.py --help``; bench/README.md "Workers".

Configurations, one at a time, each on a fresh PostgreSQL database (dropped afterwards)
and, for Parley with workers, a Redis key prefix of its own:

  A  Parley, one process (no workers section)        send, idle
  B  Parley, main + 2 event persisters (p1, p2)       send
  C  Parley, main + 2 client readers                 idle
  D  Synapse (bench/.venv-synapse), one process       send, idle
  E  Parley, main + 2 persisters + 2 readers          send, idle  (only with --configs)
  W  as B, the bench sending to each room's writer    send        (only with --configs)

Re-executes itself inside bench/.venv-bench like run.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.bootstrap import reexec_in_bench_venv  # noqa: E402

reexec_in_bench_venv(Path(__file__).resolve())

from harness.workers_runner import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

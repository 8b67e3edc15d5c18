"""Loaded into a server under test by ``bench/lead.py --memprofile`` (PYTHONPATH), never
into production: with ``PYTHONTRACEMALLOC`` set, SIGUSR2 writes a tracemalloc snapshot to
``$BENCH_MEMPROBE_DIR/snap-<n>.pickle`` so the bench can diff the heap between two moments
(e.g. before and after N long-polls were parked) without touching the server's code."""

import os
import signal
import tracemalloc

_DIR = os.environ.get("BENCH_MEMPROBE_DIR")
_count = [0]


def _dump(_signum, _frame):
    if not (_DIR and tracemalloc.is_tracing()):
        return
    _count[0] += 1
    tracemalloc.take_snapshot().dump(os.path.join(_DIR, f"snap-{_count[0]}.pickle"))
    open(os.path.join(_DIR, f"snap-{_count[0]}.done"), "w").close()


if _DIR:
    signal.signal(signal.SIGUSR2, _dump)

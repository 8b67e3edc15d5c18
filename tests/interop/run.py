"""``make interop``: Parley against the pinned Synapse, over TLS on loopback.

Runs the trial tests of tests/interop/ with ``PARLEY_INTEROP=1`` (they skip
otherwise) and prints a short summary: the Synapse version, Parley's database engine,
one line per test and the time taken. Synapse must already be installed
(``bench/setup_synapse.sh``, which the Makefile target runs first). Parley's engine
follows ``PARLEY_TEST_DB`` (sqlite by default); Synapse always uses SQLite.

    .venv/bin/python -m tests.interop.run [trial test names...]
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from tests.interop.rig import synapse_python, synapse_version

# trial's tree reporter: "    test_x ...   [OK]", the verdict possibly on a later line
# (a long name, or a client library printing in between).
_STARTED = re.compile(r"^\s+(test_\w+) \.\.\.")
_VERDICT = re.compile(r"\[(OK|FAIL|ERROR|SKIPPED|UNEXPECTED SUCCESS|TODO)\]\s*$")


def main(argv: list[str]) -> int:
    python = synapse_python()
    if not os.path.exists(python):
        print(f"interop: no Synapse at {python}; run bench/setup_synapse.sh first",
              file=sys.stderr)
        return 2
    engine = os.environ.get("PARLEY_TEST_DB", "sqlite")
    env = dict(os.environ, PARLEY_INTEROP="1", PARLEY_TEST_DB=engine)
    targets = argv or ["tests.interop", "tests.e2e.test_two_servers"]
    cmd = [sys.executable, "-m", "twisted.trial", "--temp-directory=_trial_temp_interop",
           *targets]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    assert proc.stdout is not None
    results: list[tuple[str, str]] = []
    pending: str | None = None
    for line in proc.stdout:
        sys.stdout.write(line)
        begins = _STARTED.match(line)
        if begins:
            pending = begins.group(1)
        verdict = _VERDICT.search(line)
        if verdict and pending is not None:
            results.append((pending, verdict.group(1)))
            pending = None
    code = proc.wait()
    took = time.monotonic() - t0

    counts: dict[str, int] = {}
    for _, outcome in results:
        counts[outcome] = counts.get(outcome, 0) + 1
    print("\n== interop summary ==")
    print(f"synapse {synapse_version(python)} (SQLite) <-> parley (this checkout, {engine}),"
          " federation over TLS from a test CA, servers named 127.0.0.1:PORT")
    for name, outcome in results:
        print(f"  {outcome:8} {name}")
    print(f"{counts.get('OK', 0)} passed, {counts.get('FAIL', 0) + counts.get('ERROR', 0)} "
          f"failed, {counts.get('SKIPPED', 0)} skipped in {took:.0f}s "
          f"(trial exit code {code})")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Run the trial suite once per database engine and print one closing line:
``tests: N passed, N failed, N skipped``.

Engines come from ``PARLEY_TEST_ENGINES`` (default ``sqlite,postgres``).
PostgreSQL settings: ``PARLEY_TEST_PG_HOST`` (127.0.0.1), ``PARLEY_TEST_PG_PORT`` (5432),
``PARLEY_TEST_PG_USER`` (postgres), ``PARLEY_TEST_PG_DATABASE`` (test),
``PARLEY_TEST_PG_PASSWORD`` (unset). Each test gets its own schema.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

_SUMMARY = re.compile(r"^(PASSED|FAILED) \((.*)\)\s*$")


def _counts(output: str) -> dict[str, int]:
    counts = {"successes": 0, "failures": 0, "errors": 0, "skips": 0,
              "expectedFailures": 0, "unexpectedSuccesses": 0}
    for line in output.splitlines():
        m = _SUMMARY.match(line.strip())
        if m:
            for part in m.group(2).split(","):
                key, _, value = part.strip().partition("=")
                if key in counts:
                    counts[key] = int(value)
    return counts


# Every PostgreSQL test creates and drops a schema of ~100 tables: the system catalogs
# fill with dead rows, and where autovacuum is off (as on some CI machines) DDL -- each
# test's migrations -- grows slower run after run (seen: 0.35 s -> 1.8 s per test).
_CATALOGS = ("pg_attribute", "pg_depend", "pg_class", "pg_index", "pg_type", "pg_constraint",
             "pg_attrdef", "pg_sequence", "pg_trigger", "pg_rewrite", "pg_description",
             "pg_statistic", "pg_namespace")


def vacuum_pg_catalogs() -> None:
    """VACUUM the test database's system catalogs (a no-op for a role not allowed to:
    PostgreSQL then only warns). Never fails the run."""
    try:
        import psycopg2

        from tests.harness import pg_settings

        s = pg_settings()
        conn = psycopg2.connect(host=s["host"], port=s["port"], user=s["user"],
                                dbname=s["database"], password=s.get("password"),
                                connect_timeout=5)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = '300s'")
            cur.execute("VACUUM " + ", ".join(f"pg_catalog.{t}" for t in _CATALOGS))
        conn.close()
        print("== postgres: vacuumed the system catalogs", flush=True)
    except Exception as e:  # noqa: BLE001 (hygiene only: the tests report real problems)
        print(f"== postgres: catalog vacuum skipped ({str(e).strip()[:200]})", flush=True)


def run_engine(engine: str, targets: list[str]) -> tuple[dict[str, int], int]:
    env = dict(os.environ, PARLEY_TEST_DB=engine)
    jobs = os.environ.get("PARLEY_TEST_JOBS", "2")
    cmd = [sys.executable, "-m", "twisted.trial", f"--jobs={jobs}",
           f"--temp-directory=_trial_temp_{engine}", *targets]
    print(f"== trial on {engine}: {' '.join(cmd[3:])}", flush=True)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line)
    code = proc.wait()
    return _counts("".join(lines)), code


def main() -> int:
    engines = [e.strip() for e in os.environ.get("PARLEY_TEST_ENGINES", "sqlite,postgres")
               .split(",") if e.strip()]
    targets = sys.argv[1:] or ["tests"]
    total = {"passed": 0, "failed": 0, "skipped": 0}
    worst = 0
    for engine in engines:
        if engine == "postgres":
            vacuum_pg_catalogs()
        c, code = run_engine(engine, targets)
        passed = c["successes"] + c["expectedFailures"]
        failed = c["failures"] + c["errors"] + c["unexpectedSuccesses"]
        if code != 0 and failed == 0:
            failed = 1  # trial itself failed (import error, crash)
        print(f"{engine}: {passed} passed, {failed} failed, {c['skips']} skipped", flush=True)
        total["passed"] += passed
        total["failed"] += failed
        total["skipped"] += c["skips"]
        worst = max(worst, code)
    print(f"tests: {total['passed']} passed, {total['failed']} failed, "
          f"{total['skipped']} skipped")
    return 1 if total["failed"] or worst else 0


if __name__ == "__main__":
    sys.exit(main())

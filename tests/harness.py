"""Test rig: a real Parley on a loopback port, on SQLite or PostgreSQL, with a
controllable clock, driven over HTTP with treq.

The engine comes from ``PARLEY_TEST_DB`` (``sqlite`` default, or ``postgres``).
On PostgreSQL every test gets its own schema, dropped afterwards. If PostgreSQL
is not reachable the tests are skipped with a message saying what is needed.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from typing import Any

import treq
from twisted.internet import reactor, task
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from homeserver.app import Homeserver, build_homeserver
from homeserver.auth.access_tokens import generate_signing_key_pem
from homeserver.clock import Clock
from homeserver.config import parse_config
from homeserver.config.model import DEFAULT_RATE_LIMITS, Config

TEST_PASSWORD = "correct-horse-battery"


def test_engine() -> str:
    return os.environ.get("PARLEY_TEST_DB", "sqlite")


def pg_settings() -> dict[str, Any]:
    out: dict[str, Any] = {
        "host": os.environ.get("PARLEY_TEST_PG_HOST", "127.0.0.1"),
        "port": int(os.environ.get("PARLEY_TEST_PG_PORT", "5432")),
        "user": os.environ.get("PARLEY_TEST_PG_USER", "postgres"),
        "database": os.environ.get("PARLEY_TEST_PG_DATABASE", "test"),
    }
    if os.environ.get("PARLEY_TEST_PG_PASSWORD"):
        out["password"] = os.environ["PARLEY_TEST_PG_PASSWORD"]
    return out


_pg_checked: str | None = None


def require_postgres() -> None:
    """Skip (with the reason) if the test PostgreSQL cannot be reached."""
    global _pg_checked
    if _pg_checked is None:
        import psycopg2

        s = pg_settings()
        try:
            conn = psycopg2.connect(host=s["host"], port=s["port"], user=s["user"],
                                    dbname=s["database"], password=s.get("password"),
                                    connect_timeout=5)
            conn.close()
            _pg_checked = ""
        except Exception as e:  # noqa: BLE001
            _pg_checked = (
                f"PostgreSQL not reachable at {s['host']}:{s['port']} as {s['user']} "
                f"(database {s['database']}): {str(e).strip()}. Start PostgreSQL or set "
                f"PARLEY_TEST_PG_HOST/PORT/USER/DATABASE/PASSWORD."
            )
    if _pg_checked:
        raise unittest.SkipTest(_pg_checked)


# Ports handed to servers that bind them later are drawn below the kernel's ephemeral
# range (Linux: 32768-60999), which listen(0) and outgoing connections of the parallel
# trial workers draw from: a port found free there could be taken before it is bound.
_PORT_RANGE = (20000, 32000)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and outside the ephemeral range."""
    import random
    import socket

    for _ in range(200):
        port = random.randrange(*_PORT_RANGE)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # everything taken: fall back to the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def drop_pg_schema(schema: str) -> None:
    import psycopg2
    import psycopg2.errors

    s = pg_settings()
    conn = psycopg2.connect(host=s["host"], port=s["port"], user=s["user"],
                            dbname=s["database"], password=s.get("password"))
    conn.autocommit = True
    try:
        # A test's last background transaction can still hold a lock on one of its
        # tables for a moment; PostgreSQL then breaks the deadlock with DROP as the
        # victim. The drop is idempotent, so try again.
        # A straggling transaction of the finished test is ended first, and the drop
        # waits for locks at most 10 s at a time (never a hung tear-down).
        for attempt in range(5):
            try:
                with conn.cursor() as cur:
                    cur.execute("SET lock_timeout = '10s'")
                    cur.execute(
                        "SELECT DISTINCT l.pid FROM pg_locks l"
                        " JOIN pg_class c ON c.oid = l.relation"
                        " JOIN pg_namespace n ON n.oid = c.relnamespace"
                        " WHERE n.nspname = %s AND l.pid <> pg_backend_pid()", (schema,))
                    for (pid,) in cur.fetchall():
                        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
                    cur.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                return
            except (psycopg2.errors.DeadlockDetected, psycopg2.errors.LockNotAvailable):
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
    finally:
        conn.close()


def make_config(data_dir: str, engine: str | None = None, *, pg_schema: str | None = None,
                **overrides: Any) -> tuple[Config, str | None]:
    """A test config (cheap Argon2, open registration); returns (config, pg schema).
    On PostgreSQL the schema is ``pg_schema`` or a new one."""
    engine = engine or test_engine()
    schema = None
    if engine == "postgres":
        schema = pg_schema or "t_" + secrets.token_hex(8)
        database: dict[str, Any] = {"engine": "postgres", "schema": schema, "pool_max": 4,
                                    **pg_settings()}
    else:
        database = {"engine": "sqlite", "path": os.path.join(data_dir, "test.db")}
    raw: dict[str, Any] = {
        "server_name": "test.local",
        "public_baseurl": "http://127.0.0.1/",
        "data_dir": data_dir,
        "listeners": [{"port": 0, "bind_addresses": ["127.0.0.1"]}],
        "database": database,
        "auth": {"signing_keys": [{"kid": "test1", "algorithm": "EdDSA",
                                   "key": _test_key()}]},
        "password_hashing": {"time_cost": 1, "memory_cost_kib": 8, "parallelism": 1},
        "password_policy": {"enabled": True, "min_length": 8},
        "registration": {"enabled": True},
        "logging": {"level": "WARNING", "format": "text"},
        # The login lockout and spraying detectors: generous for the same reason as the
        # rate limits below (tests/rest/test_detection.py sets its own).
        "detection": {"login_failures": {"per_account": {"max_failures": 1000},
                                         "per_ip": {"max_failures": 1000}},
                      "password_spraying": {"distinct_accounts": 1000}},
        # The clock is frozen in tests: generous limits so only rate-limit tests hit them.
        "rate_limits": {k: {"per_second": 1000, "burst": 1_000_000}
                        for k in DEFAULT_RATE_LIMITS} | {"media_upload": {
                            "per_second": 1e12, "burst": 1 << 50}},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return parse_config(raw, base_dir=None), schema


_KEY: str | None = None


def _test_key() -> str:
    global _KEY
    if _KEY is None:
        _KEY = generate_signing_key_pem("EdDSA")
    return _KEY


async def _pooled_config(test: unittest.TestCase | None, data_dir: str, engine: str,
                         **overrides: Any) -> tuple[Config, str | None]:
    """A test config whose PostgreSQL schema is migrated and empty, reused from an earlier
    test of this process when one is free (tests/pg_pool.py); released on ``test``'s
    cleanup, or (``test`` None) by the caller with ``pg_pool.release``."""
    if engine != "postgres":
        return make_config(data_dir, engine, **overrides)
    from homeserver.app import open_database
    from storage.migrations import migrate
    from tests import pg_pool

    schema, migrated = pg_pool.acquire()
    config, _ = make_config(data_dir, engine, pg_schema=schema, **overrides)
    if test is not None:
        test.addCleanup(pg_pool.release, schema)
    if not migrated:
        db = open_database(config)
        try:
            await migrate(db, int(time.time() * 1000))
        finally:
            db.close()
        pg_pool.capture(schema)
    return config, schema


class Response:
    def __init__(self, code: int, body: bytes, headers: Any, phrase: bytes = b"") -> None:
        self.code = code
        self.phrase = phrase
        self.raw = body
        self.headers = headers
        try:
            self.json: Any = json.loads(body) if body else None
        except ValueError:
            self.json = None

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def __repr__(self) -> str:
        return f"<Response {self.code} {self.raw[:300]!r}>"


class HomeserverTestCase(unittest.TestCase):
    """Starts a homeserver per test. Override :meth:`config_overrides` to adjust config."""

    timeout = 60
    engine: str | None = None  # None: from PARLEY_TEST_DB

    def config_overrides(self) -> dict[str, Any]:
        return {}

    async def setUp(self) -> None:  # type: ignore[override]
        engine = self.engine or test_engine()
        if engine == "postgres":
            require_postgres()
        self.data_dir = tempfile.mkdtemp(prefix="parley-test-")
        # Released at the end of tearDown, once every server on it has stopped (trial
        # runs cleanups *before* tearDown).
        self.config, self.pg_schema = await _pooled_config(None, self.data_dir, engine,
                                                           **self.config_overrides())
        try:
            await self._build()
        except BaseException:
            self._release_schema()
            raise

    def _release_schema(self) -> None:
        schema, self.pg_schema = self.pg_schema, None
        if schema:
            from tests import pg_pool

            pg_pool.release(schema)

    async def _build(self) -> None:
        # A controllable clock, starting at the real time so timestamps look real.
        self.reactor_time = task.Clock()
        self.reactor_time.advance(time.time())
        self.clock = Clock(self.reactor_time)
        self.hs: Homeserver = await build_homeserver(self.config, clock=self.clock)
        port = self.hs.listen(reactor)[0]
        self.base_url = f"http://127.0.0.1:{port.getHost().port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    async def tearDown(self) -> None:  # type: ignore[override]
        try:
            await self.hs.stop()
            await self.pool.closeCachedConnections()
        finally:
            self._release_schema()

    def count_password_hashes(self) -> list[int]:
        """From now on, every Argon2 hash or verify the server runs appends to the list
        returned (tests that hashing costs the same, or nothing, on a path)."""
        hasher = self.hs.registration._hasher  # noqa: SLF001
        calls: list[int] = []
        real_run = hasher.run

        async def counting_run(fn: Any) -> Any:
            calls.append(1)
            return await real_run(fn)

        hasher.run = counting_run  # type: ignore[method-assign]
        return calls

    def advance(self, seconds: float) -> None:
        """Move server time forward (token expiry etc.) without sleeping."""
        self.reactor_time.advance(seconds)

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        raw_body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        hdrs = {k: [v] for k, v in (headers or {}).items()}
        if token is not None:
            hdrs["Authorization"] = [f"Bearer {token}"]
        data = raw_body
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            hdrs.setdefault("Content-Type", ["application/json"])
        resp = await treq.request(method, self.base_url + path, data=data, headers=hdrs,
                                  pool=self.pool)
        content = await resp.content()
        return Response(resp.code, content, resp.headers, resp.phrase)

    async def register(
        self, localpart: str, password: str = TEST_PASSWORD, **extra: Any
    ) -> dict[str, Any]:
        """Register through the UIA dummy flow; returns the 200 body."""
        body = {"username": localpart, "password": password, **extra}
        first = await self.request("POST", "/_matrix/client/v3/register", body)
        self.assertEqual(first.code, 401, first)
        body["auth"] = {"type": "m.login.dummy", "session": first.json["session"]}
        second = await self.request("POST", "/_matrix/client/v3/register", body)
        self.assertEqual(second.code, 200, second)
        return second.json

    async def login(
        self, user: str, password: str = TEST_PASSWORD, **extra: Any
    ) -> Response:
        return await self.request("POST", "/_matrix/client/v3/login", {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password, **extra,
        })

    def assertMatrixError(  # noqa: N802 (unittest style)
        self, resp: Response, code: int, errcode: str
    ) -> None:
        self.assertEqual(resp.code, code, resp)
        self.assertIsInstance(resp.json, dict, resp)
        self.assertEqual(resp.json.get("errcode"), errcode, resp)
        self.assertIsInstance(resp.json.get("error"), str, resp)


class DatabaseTestCase(unittest.TestCase):
    """A migrated, empty database of the engine under test (no HTTP server)."""

    timeout = 60
    migrate_on_setup = True

    async def setUp(self) -> None:  # type: ignore[override]
        from homeserver.app import open_database
        from storage.migrations import migrate

        engine = test_engine()
        if engine == "postgres":
            require_postgres()
        self.data_dir = tempfile.mkdtemp(prefix="parley-db-")
        if self.migrate_on_setup:
            self.config, self.pg_schema = await _pooled_config(self, self.data_dir, engine)
        else:  # the test migrates (or not) itself: a new, empty schema
            self.config, self.pg_schema = make_config(self.data_dir, engine)
            if self.pg_schema:
                self.addCleanup(drop_pg_schema, self.pg_schema)
        self.db = open_database(self.config)
        self.addCleanup(self.db.close)
        if self.migrate_on_setup:
            await migrate(self.db, int(time.time() * 1000))

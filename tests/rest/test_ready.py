"""GET /ready (readiness) next to /health (liveness): 200 while the database answers,
503 with a Matrix error when it does not, on every listener."""

from __future__ import annotations

from typing import Any

from homeserver.app import open_database
from tests.harness import HomeserverTestCase, make_config


class ReadyTest(HomeserverTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"listeners": [
            {"port": 0, "bind_addresses": ["127.0.0.1"], "resources": ["client"]},
            {"port": 0, "bind_addresses": ["127.0.0.1"], "resources": ["federation"]},
            {"port": 0, "bind_addresses": ["127.0.0.1"], "resources": ["metrics"]},
        ]}

    async def _get(self, index: int, path: str) -> Any:
        saved = self.base_url
        self.base_url = f"http://127.0.0.1:{self.hs.ports[index].getHost().port}"
        try:
            return await self.request("GET", path)
        finally:
            self.base_url = saved

    def _break_database(self) -> None:
        """Point the server's pool at a database that cannot be opened (a directory for
        SQLite, a closed port for PostgreSQL), as when the database goes away; the
        original pool comes back for the tear-down."""
        if self.config.database.engine == "sqlite":
            override = {"path": self.data_dir}  # a directory: "unable to open database file"
        else:
            override = {"port": 1}
        broken_config, _ = make_config(self.data_dir, self.config.database.engine,
                                       database=override)
        broken = open_database(broken_config)
        db = self.hs.db
        original = db._pool  # noqa: SLF001
        db._pool = broken._pool  # noqa: SLF001

        def restore() -> None:
            if db._pool is not original:  # noqa: SLF001
                db._pool = original  # noqa: SLF001
                broken.close()

        self.addCleanup(restore)
        self._restore = restore

    async def test_ready_on_every_listener(self) -> None:
        for index in (0, 1, 2):
            resp = await self._get(index, "/ready")
            self.assertEqual(resp.code, 200, resp)
            self.assertEqual(resp.json, {"status": "ready", "checks": {"database": "ok"}})

    async def test_database_down_is_503_then_recovers(self) -> None:
        self._break_database()
        for index in (0, 2):
            resp = await self._get(index, "/ready")
            self.assertMatrixError(resp, 503, "M_UNKNOWN")
            self.assertIn("database", resp.json["error"])
            # Liveness does not depend on the database.
            resp = await self._get(index, "/health")
            self.assertEqual(resp.code, 200, resp)
        self._restore()
        resp = await self._get(0, "/ready")
        self.assertEqual(resp.code, 200, resp)

    async def test_draining_is_503(self) -> None:
        """Once a graceful shutdown begins the load balancer is told to go elsewhere."""
        self.hs.readiness.draining = True
        resp = await self._get(0, "/ready")
        self.assertMatrixError(resp, 503, "M_UNKNOWN")
        self.assertIn("shutting down", resp.json["error"])

"""``parley create-user --role`` and ``parley set-role`` (subprocesses, SQLite)."""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile

import yaml
from twisted.trial import unittest

from tests.unit.test_cli import parley

ENV = {"PARLEY_NEW_USER_PASSWORD": "a-strong-password"}


class CliRolesTest(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.config = os.path.join(self.dir, "parley.yaml")
        out = parley("generate-config", "--server-name", "cli.test", "--output", self.config,
                     "--data-dir", os.path.join(self.dir, "data"), "--dev")
        self.assertEqual(out.returncode, 0, out.stderr)
        with open(self.config) as f:
            cfg = yaml.safe_load(f)
        cfg["password_hashing"] = {"time_cost": 1, "memory_cost_kib": 8, "parallelism": 1}
        cfg["admin_roles"] = {"helpdesk": ["users.read"]}
        with open(self.config, "w") as f:
            yaml.safe_dump(cfg, f)

    def _row(self, user_id: str) -> tuple:
        db = sqlite3.connect(os.path.join(self.dir, "data", "parley.db"))
        return db.execute("SELECT is_admin, admin_role FROM users WHERE user_id = ?",
                          (user_id,)).fetchone()

    def test_create_user_with_role_and_set_role(self) -> None:
        out = parley("create-user", "-c", self.config, "mod", "--role", "moderator", env=ENV)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("@mod:cli.test: role none -> moderator", out.stdout)
        self.assertEqual(self._row("@mod:cli.test"), (0, "moderator"))
        out = parley("set-role", "-c", self.config, "mod", "admin")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(self._row("@mod:cli.test"), (1, "admin"))
        out = parley("set-role", "-c", self.config, "@mod:cli.test", "helpdesk")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(self._row("@mod:cli.test"), (0, "helpdesk"))
        out = parley("set-role", "-c", self.config, "mod", "none")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(self._row("@mod:cli.test"), (0, None))
        # Every change is in the audit trail.
        out = parley("audit", "export", "-c", self.config)
        entries = [json.loads(line) for line in out.stdout.splitlines()]
        roles = [e["details"].get("new_role") for e in entries
                 if (e.get("details") or {}).get("action") == "set_role"]
        self.assertEqual(roles, ["moderator", "admin", "helpdesk", None])
        self.assertEqual(parley("audit", "verify", "-c", self.config).returncode, 0)

    def test_unknown_role_or_user(self) -> None:
        out = parley("create-user", "-c", self.config, "x", "--role", "wizard", env=ENV)
        self.assertEqual(out.returncode, 1)
        self.assertIn("unknown role", out.stderr)
        self.assertIsNone(self._row("@x:cli.test") if os.path.exists(
            os.path.join(self.dir, "data", "parley.db")) else None)
        parley("migrate", "-c", self.config)
        out = parley("set-role", "-c", self.config, "ghost", "support")
        self.assertEqual(out.returncode, 1)
        self.assertIn("no such user", out.stderr)

"""The ``parley`` command as an operator uses it (subprocesses, SQLite)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile

import yaml
from twisted.trial import unittest


def parley(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "homeserver", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


class CliTest(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.config = os.path.join(self.dir, "parley.yaml")
        out = parley("generate-config", "--server-name", "cli.test", "--output", self.config,
                     "--data-dir", os.path.join(self.dir, "data"), "--dev")
        self.assertEqual(out.returncode, 0, out.stderr)
        # Cheap hashing for the test.
        with open(self.config) as f:
            cfg = yaml.safe_load(f)
        cfg["password_hashing"] = {"time_cost": 1, "memory_cost_kib": 8, "parallelism": 1}
        with open(self.config, "w") as f:
            yaml.safe_dump(cfg, f)

    def test_generated_config_is_private(self) -> None:
        self.assertEqual(os.stat(self.config).st_mode & 0o077, 0)
        again = parley("generate-config", "--output", self.config)
        self.assertEqual(again.returncode, 1)
        self.assertIn("exists", again.stderr)

    def test_migrate_and_create_user(self) -> None:
        out = parley("migrate", "-c", self.config)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("applied migrations", out.stdout)
        self.assertIn("up to date", parley("migrate", "-c", self.config).stdout)
        out = parley("create-user", "-c", self.config, "boss", "--admin",
                     env={"PARLEY_NEW_USER_PASSWORD": "a-strong-password"})
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("@boss:cli.test (admin)", out.stdout)
        db = sqlite3.connect(os.path.join(self.dir, "data", "parley.db"))
        row = db.execute("SELECT is_admin, password_hash FROM users WHERE user_id = ?",
                         ("@boss:cli.test",)).fetchone()
        self.assertEqual(row[0], 1)
        self.assertTrue(row[1].startswith("$argon2id$"))
        dup = parley("create-user", "-c", self.config, "boss",
                     env={"PARLEY_NEW_USER_PASSWORD": "a-strong-password"})
        self.assertEqual(dup.returncode, 1)
        self.assertIn("already taken", dup.stderr)

    def test_database_newer_than_code_refuses(self) -> None:
        self.assertEqual(parley("migrate", "-c", self.config).returncode, 0)
        db = sqlite3.connect(os.path.join(self.dir, "data", "parley.db"))
        db.execute("INSERT INTO schema_version VALUES (9999, 'future', 0)")
        db.commit()
        for cmd in ("migrate", "run"):
            out = parley(cmd, "-c", self.config)
            self.assertEqual(out.returncode, 1, out.stderr)
            self.assertIn("9999", out.stderr)

    def test_invalid_config_names_the_key(self) -> None:
        with open(self.config) as f:
            cfg = yaml.safe_load(f)
        cfg["registration"]["enabeld"] = True
        with open(self.config, "w") as f:
            yaml.safe_dump(cfg, f)
        out = parley("run", "-c", self.config)
        self.assertEqual(out.returncode, 1)
        self.assertIn("registration.enabeld", out.stderr)

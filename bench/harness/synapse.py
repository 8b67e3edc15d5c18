"""Synapse under test: pinned PyPI release in bench/.venv-synapse, SQLite or PostgreSQL,
loopback only."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from harness import BENCH_DIR
from harness.hashcost import bcrypt_cost, describe_cost
from harness.pgdb import PgTarget
from harness.servers import ManagedServer, clean_env

SYNAPSE_VENV = BENCH_DIR / ".venv-synapse"
SETUP_SCRIPT = BENCH_DIR / "setup_synapse.sh"
DEFAULT_BCRYPT_ROUNDS = 12  # Synapse's own default (synapse/config/registration.py)

_HIGH = {"per_second": 100_000, "burst_count": 100_000}
# Every client-relevant rate limiter, so the bench measures work rather than 429s.
RATE_LIMITS: dict[str, Any] = {
    "rc_message": _HIGH,
    "rc_registration": _HIGH,
    "rc_registration_token_validity": _HIGH,
    "rc_login": {"address": _HIGH, "account": _HIGH, "failed_attempts": _HIGH},
    "rc_admin_redaction": _HIGH,
    "rc_joins": {"local": _HIGH, "remote": _HIGH},
    "rc_joins_per_room": _HIGH,
    "rc_3pid_validation": _HIGH,
    "rc_invites": {"per_room": _HIGH, "per_user": _HIGH, "per_issuer": _HIGH},
    "rc_third_party_invite": _HIGH,
    "rc_presence": {"per_user": _HIGH},
    "rc_room_creation": _HIGH,
    "rc_media_create": _HIGH,
    "rc_delayed_event_mgmt": _HIGH,
    "rc_reports": _HIGH,
    "rc_user_directory": _HIGH,
    "rc_profile": _HIGH,
    "rc_key_requests": _HIGH,
}


def ensure_synapse_installed() -> None:
    """Run bench/setup_synapse.sh (idempotent; a no-op once the pinned version is present)."""
    subprocess.run(["bash", str(SETUP_SCRIPT)], check=True, env=clean_env())


class SynapseServer(ManagedServer):
    name = "synapse"

    def __init__(self, workdir: Path, port: int, bcrypt_rounds: int = DEFAULT_BCRYPT_ROUNDS,
                 pg: tuple[PgTarget, str] | None = None):
        super().__init__(workdir, port)
        self.bcrypt_rounds = bcrypt_rounds
        self.pg = pg  # (server, database name) for PostgreSQL, else SQLite
        self.config_path = workdir / "hs.yaml"
        self.python = SYNAPSE_VENV / "bin" / "python"

    def prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [str(self.python), "-m", "synapse.app.homeserver", "--server-name", "localhost",
             "--config-path", str(self.config_path), "--data-directory", str(self.workdir),
             "--generate-config", "--report-stats=no"],
            cwd=self.workdir, check=True, env=clean_env(),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        config = yaml.safe_load(self.config_path.read_text())
        config.update(self.overrides())
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def overrides(self) -> dict[str, Any]:
        return {
            "listeners": [{
                "port": self.port, "bind_addresses": ["127.0.0.1"], "type": "http",
                "tls": False, "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }],
            "database": self.database(),
            "enable_registration": True,
            "enable_registration_without_verification": True,
            "bcrypt_rounds": self.bcrypt_rounds,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "report_stats": False,
            **RATE_LIMITS,
        }

    def database(self) -> dict[str, Any]:
        if self.pg is None:
            return {"name": "sqlite3", "args": {"database": str(self.workdir / "homeserver.db")}}
        target, name = self.pg
        # Synapse's own defaults for the pool (cp_min 5, cp_max 10).
        return {"name": "psycopg2", "args": {
            "user": target.user, "host": target.host, "port": target.port,
            "database": name, "cp_min": 5, "cp_max": 10}}

    def command(self) -> list[str]:
        return [str(self.python), "-m", "synapse.app.homeserver", "-c", str(self.config_path)]

    def version(self) -> str:
        out = subprocess.run(
            [str(self.python), "-c",
             "from importlib.metadata import version; print(version('matrix-synapse'))"],
            capture_output=True, text=True, check=False, env=clean_env(),
        )
        return out.stdout.strip() or "unknown"

    def describe(self) -> dict[str, Any]:
        cost = bcrypt_cost(self.python, self.bcrypt_rounds)
        return {
            "name": "Synapse",
            "version": self.version(),
            "database": "sqlite" if self.pg is None else "postgres",
            "password_hashing": {"algorithm": "bcrypt", "rounds": self.bcrypt_rounds,
                                 "single_hash": cost},
            "password_hashing_text": f"bcrypt rounds={self.bcrypt_rounds} "
                                     f"({describe_cost(cost)})",
            "config_overrides": "registration open (no verification), rc_* limits raised, "
                                "loopback client listener, no key servers",
        }

"""Parley under test: the repo's own CLI, a generated --dev config, production hashing cost."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from harness import REPO_DIR
from harness.hashcost import argon2_cost, describe_cost
from harness.pgdb import PgTarget
from harness.servers import ManagedServer, clean_env

# Parley's production default (homeserver/config/model.py: PasswordHashingConfig).
PRODUCTION_HASHING: dict[str, int] = {"time_cost": 1, "memory_cost_kib": 65536, "parallelism": 2}
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def resolve_parley_cmd(repo: Path, override: str | None) -> list[str]:
    """How to invoke the ``parley`` CLI: --parley-cmd, else the repo venv (installing it via
    ``make install`` if needed), else ``python -m homeserver.cli`` from the repo venv."""
    if override:
        return shlex.split(override)
    venv = repo / ".venv" / "bin"
    if not (venv / "parley").exists() and (repo / "Makefile").exists() and shutil.which("make"):
        subprocess.run(["make", "-C", str(repo), "install"], check=False)
    if (venv / "parley").exists():
        return [str(venv / "parley")]
    if (venv / "python").exists() and (repo / "homeserver" / "cli.py").exists():
        return [str(venv / "python"), "-m", "homeserver.cli"]
    raise RuntimeError(
        f"no Parley CLI found ({venv / 'parley'} missing); run `make install` or pass --parley-cmd"
    )


class ParleyServer(ManagedServer):
    name = "parley"

    def __init__(self, workdir: Path, port: int, cli: list[str], repo: Path = REPO_DIR,
                 hashing: dict[str, int] | None = None,
                 pg: tuple[PgTarget, str] | None = None) -> None:
        super().__init__(workdir, port)
        self.pg = pg  # (server, database name) for PostgreSQL, else the generated SQLite
        self.hashing = hashing or PRODUCTION_HASHING
        self.cli = cli
        self.repo = repo
        self.config_path = workdir / "parley.yaml"
        self.data_dir = workdir / "data"
        self.notes: list[str] = []
        self.limit_classes: list[str] = []

    def cwd(self) -> Path:
        return self.repo  # lets `python -m homeserver.cli` import the package from a checkout

    def prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [*self.cli, "generate-config", "--server-name", "localhost",
             "--output", str(self.config_path), "--data-dir", str(self.data_dir),
             "--port", str(self.port), "--dev"],
            cwd=self.repo, check=True, env=clean_env(),
        )
        config = yaml.safe_load(self.config_path.read_text())
        self.limit_classes = self._limit_classes()
        self.patch(config)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def _limit_classes(self) -> list[str]:
        """The rate-limit classes this checkout knows (asked of its own interpreter, as
        the harness's Python need not have Parley's dependencies)."""
        python = [*self.cli[:1]] if self.cli and self.cli[0].endswith("python") else None
        code = "from homeserver.config.model import DEFAULT_RATE_LIMITS as d; print(' '.join(d))"
        if python is None:
            python = [str(self.repo / ".venv" / "bin" / "python")]
        out = subprocess.run([*python, "-c", code], cwd=self.repo, check=True, env=clean_env(),
                             capture_output=True, text=True).stdout.split()
        return out or ["login", "registration", "uia_password"]

    def patch(self, config: dict[str, Any]) -> None:
        """Only the hashing cost and the rate limits are changed; everything else is
        checked, not altered (except narrowing a non-loopback bind address to 127.0.0.1)."""
        config["password_hashing"] = dict(self.hashing)
        if self.pg is not None:
            target, name = self.pg
            # pool_max: the default of a generated PostgreSQL config (README).
            config["database"] = {"engine": "postgres", "host": target.host,
                                  "port": target.port, "user": target.user,
                                  "database": name, "pool_min": 1, "pool_max": 10}
        # As for Synapse (its rc_* limits), the auth rate limits and the cap on queued
        # password hashes are lifted, so the bench measures work rather than 429s.
        config["password_hashing"]["max_pending"] = 100_000
        # Every limit class (rate_limits.<class>, as Synapse's rc_* are all lifted);
        # media_upload counts bytes, so its lifted budget is bytes too.
        config["rate_limits"] = {name: {"per_second": 1_000_000_000, "burst": 1_000_000_000}
                                 for name in self.limit_classes}
        if not config.get("registration", {}).get("enabled", False):
            raise RuntimeError("generated --dev config does not enable registration")
        ports = []
        for listener in config.get("listeners", []):
            ports.append(listener.get("port"))
            binds = listener.get("bind_addresses") or []
            if not binds or any(b not in LOOPBACK for b in binds):
                self.notes.append(f"bind_addresses {binds} narrowed to ['127.0.0.1']")
                listener["bind_addresses"] = ["127.0.0.1"]
        if self.port not in ports:
            raise RuntimeError(f"generated config has no listener on port {self.port}: {ports}")

    def command(self) -> list[str]:
        return [*self.cli, "run", "-c", str(self.config_path)]

    def version(self) -> str:
        out = subprocess.run(
            ["git", "-C", str(self.repo), "describe", "--always", "--dirty"],
            capture_output=True, text=True, check=False,
        )
        return out.stdout.strip() or "working tree (no commits)"

    def python(self) -> Path:
        """The interpreter Parley runs under (for the hash-cost probe)."""
        first = Path(self.cli[0])
        if first.name.startswith("python"):
            return first
        sibling = first.parent / "python"
        return sibling if sibling.exists() else self.repo / ".venv" / "bin" / "python"

    def describe(self) -> dict[str, Any]:
        config = yaml.safe_load(self.config_path.read_text()) if self.config_path.exists() else {}
        ph = config.get("password_hashing", PRODUCTION_HASHING)
        mib = ph["memory_cost_kib"] / 1024
        cost = argon2_cost(self.python(), ph["time_cost"], ph["memory_cost_kib"],
                           ph["parallelism"])
        return {
            "name": "Parley",
            "version": self.version(),
            "database": config.get("database", {}).get("engine", "unknown"),
            "password_hashing": {"algorithm": "argon2id", **ph, "single_hash": cost},
            "password_hashing_text": (
                f"Argon2id t={ph['time_cost']} m={mib:g}MiB p={ph['parallelism']} "
                f"({describe_cost(cost)})"
            ),
            "logging": config.get("logging", {}),
            "config_overrides": "generate-config --dev; password_hashing set to production "
                                "default; auth rate limits lifted"
                                + ("; " + "; ".join(self.notes) if self.notes else ""),
        }

"""A fresh PostgreSQL database per server and run, for ``run.py --db postgres``.

Both servers get a database of their own on the local PostgreSQL (``psql`` as the
``postgres`` role, trust auth on loopback, as on the test machine), created with
``LC_COLLATE 'C'`` / ``LC_CTYPE 'C'`` from ``template0`` because Synapse refuses any
other collation; dropped again when the server has stopped (unless ``--keep-tmp``).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from harness.servers import clean_env

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class PgTarget:
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"


def _psql(target: PgTarget, sql: str) -> None:
    subprocess.run(
        ["psql", "-h", target.host, "-p", str(target.port), "-U", target.user, "-d", "postgres",
         "-v", "ON_ERROR_STOP=1", "-q", "-c", sql],
        check=True, env=clean_env(), stdout=subprocess.DEVNULL,
    )


def create_database(target: PgTarget, name: str) -> None:
    """A new, empty database ``name`` (refused if it exists: names carry the run id)."""
    if not _NAME.match(name):
        raise ValueError(f"bad database name {name!r}")
    _psql(target, f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' "
                  f"LC_COLLATE 'C' LC_CTYPE 'C'")


def drop_database(target: PgTarget, name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"bad database name {name!r}")
    _psql(target, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

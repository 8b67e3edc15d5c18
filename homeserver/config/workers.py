"""The ``workers`` config section: the processes of a multi-process deployment.

```yaml
redis: {host: 127.0.0.1, port: 6379}   # required with workers: replication runs over it
database: {engine: postgres, ...}      # required with workers: every process shares it
workers:
  main:                                # optional: the process started without --worker
    role: main
  client1:
    role: client                       # serves reads (sync, room reads, profile, keys)
    listeners:
      - {port: 8081, bind_addresses: [127.0.0.1], x_forwarded: true}
```

``parley run -c FILE`` starts the main process; ``parley run -c FILE --worker NAME``
starts the worker NAME with its own listeners (the top-level ``listeners`` when it names
none). Without a ``workers`` section Parley is one process, as before: nothing replicates.
Roles are ``main`` (every endpoint, every background job, the one writer of every
stream) and ``client`` (the read endpoints of homeserver/replication/routing.py; writes
are answered 404 ``M_UNRECOGNIZED`` and must be routed to the main process).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from homeserver.config.model import Config, ListenerConfig

ROLES = ("main", "client")
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}\Z"


@dataclass(frozen=True)
class WorkerConfig:
    name: str
    role: str
    listeners: tuple[ListenerConfig, ...] = ()


@dataclass(frozen=True)
class WorkersConfig:
    workers: dict[str, WorkerConfig] = field(default_factory=dict)
    # This process: its name (``main`` unless started with --worker) and role.
    instance: str = "main"
    role: str = "main"

    @property
    def enabled(self) -> bool:
        """Several processes share the database: replication runs."""
        return bool(self.workers)

    @property
    def is_main(self) -> bool:
        """The main process writes every stream and runs the background jobs."""
        return self.role == "main"


def workers_schema(listener: dict[str, Any]) -> dict[str, Any]:
    """JSON schema of the section (homeserver/config/schema.py gives its LISTENER)."""
    return {
        "type": "object",
        "propertyNames": {"pattern": NAME_PATTERN},
        "maxProperties": 256,
        "additionalProperties": {
            "type": "object", "additionalProperties": False, "required": ["role"],
            "properties": {
                "role": {"enum": list(ROLES)},
                "listeners": {"type": "array", "items": listener, "maxItems": 16},
            },
        },
    }


def parse_workers(raw: dict[str, Any] | None, rel: Callable[[str], str],
                  engine: str, has_redis: bool) -> WorkersConfig:
    """``workers``: refuse what cannot work (no Redis, SQLite, two main processes)."""
    from homeserver.config.loader import ConfigError
    from homeserver.config.model import ListenerConfig

    if not raw:
        return WorkersConfig()
    if not has_redis:
        raise ConfigError("workers: needs a 'redis' section (replication runs over Redis)")
    if engine != "postgres":
        raise ConfigError("workers: needs database.engine 'postgres' (every process "
                          "shares the database)")
    mains = [n for n, w in raw.items() if w["role"] == "main"]
    if len(mains) > 1:
        raise ConfigError(f"workers: only one worker may have role 'main' ({', '.join(mains)})")
    workers: dict[str, WorkerConfig] = {}
    for name, w in raw.items():
        listeners = tuple(
            ListenerConfig(
                port=li["port"],
                bind_addresses=li.get("bind_addresses", ["127.0.0.1"]),
                resources=li.get("resources", ["client"]),
                x_forwarded=li.get("x_forwarded", False),
                tls_certificate_path=rel(li["tls"]["certificate_path"]) if "tls" in li else None,
                tls_private_key_path=rel(li["tls"]["private_key_path"]) if "tls" in li else None,
                tls_min_version=li.get("tls", {}).get("min_version", "1.2"),
            )
            for li in w.get("listeners", []))
        if w["role"] == "client" and any("federation" in li.resources for li in listeners):
            raise ConfigError(f"workers.{name}: a client worker serves no federation resource")
        workers[name] = WorkerConfig(name, w["role"], listeners)
    return WorkersConfig(workers=workers, instance=mains[0] if mains else "main")


def select_worker(config: Config, name: str | None) -> Config:
    """The config of the process ``parley run --worker NAME`` starts (``name`` None: the
    main process). Unknown names are refused with the known ones."""
    from homeserver.config.loader import ConfigError

    wc = config.workers
    if name is None:
        return config
    if not re.match(NAME_PATTERN, name):
        raise ConfigError(f"--worker: invalid worker name {name!r}")
    worker = wc.workers.get(name)
    if worker is None:
        known = ", ".join(sorted(wc.workers)) or "none configured"
        raise ConfigError(f"--worker {name}: no such worker in 'workers' ({known})")
    return dataclasses.replace(
        config, workers=dataclasses.replace(wc, instance=name, role=worker.role),
        listeners=list(worker.listeners) or config.listeners)

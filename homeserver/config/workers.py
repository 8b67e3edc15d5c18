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

A process that accepts writes forwarded by other processes (the main process; event
persisters) names where its ``replication`` listener is reachable; the main process's
entry also carries the deployment's shared secret (inline, ``{env: VAR}`` or ``{file:
PATH}``; never logged). With it, a client worker forwards the writes it does not serve
over internal HTTP instead of refusing them (homeserver/replication/forwarding.py):

```yaml
listeners:                             # the main process's own listeners
  - {port: 8008, x_forwarded: true}
  - {port: 9093, bind_addresses: [127.0.0.1], resources: [replication]}
workers:
  main:
    role: main
    replication: {host: 127.0.0.1, port: 9093, secret: {env: PARLEY_REPLICATION_SECRET}}
```

``parley run -c FILE`` starts the main process; ``parley run -c FILE --worker NAME``
starts the worker NAME with its own listeners (the top-level ``listeners`` when it names
none). Without a ``workers`` section Parley is one process, as before: nothing replicates.
Roles are ``main`` (every endpoint, every background job, the one writer of every
stream) and ``client`` (the read endpoints of homeserver/replication/routing.py; writes
are answered 404 ``M_UNRECOGNIZED`` and must be routed to the main process).
``federation_sender``, ``pusher`` and ``appservice`` (sharded by a hash of the
destination, user id or service id), ``media`` and ``background`` (one at most) take that
work off the main process (homeserver/replication/roles.py); with no worker of such a
role, the main process does it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from homeserver.config.model import Config, ListenerConfig

ROLES = ("main", "client", "federation_sender", "pusher", "appservice", "media",
         "background", "event_persister")
# Roles whose work is split between their instances by a stable hash of a key
# (homeserver/replication/roles.py): destination server, user id, appservice id.
SHARDED_ROLES = ("federation_sender", "pusher", "appservice")
# Roles one instance at most may have (their jobs must not run twice).
SINGLE_ROLES = ("background",)
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}\Z"


MIN_SECRET_LENGTH = 16
# ``auth.session_cache_ttl`` with workers: a revocation whose Redis message is lost still
# reaches every process within it (homeserver/replication/__init__.py).
REVOCATION_BOUND_DEFAULT = "1s"
_SECRET = {"anyOf": [  # as homeserver/config/schema.py's SECRET (which imports this module)
    {"type": "string", "minLength": 1},
    {"type": "object", "additionalProperties": False, "required": ["env"],
     "properties": {"env": {"type": "string", "minLength": 1}}},
    {"type": "object", "additionalProperties": False, "required": ["file"],
     "properties": {"file": {"type": "string", "minLength": 1}}},
]}


@dataclass(frozen=True)
class ReplicationEndpoint:
    """Where a process's ``replication`` listener is reachable by the other processes."""

    host: str
    port: int

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@dataclass(frozen=True)
class WorkerConfig:
    name: str
    role: str
    listeners: tuple[ListenerConfig, ...] = ()
    replication: ReplicationEndpoint | None = None


@dataclass(frozen=True)
class WorkersConfig:
    workers: dict[str, WorkerConfig] = field(default_factory=dict)
    # This process: its name (``main`` unless started with --worker) and role.
    instance: str = "main"
    role: str = "main"
    # The shared secret of internal requests (forwarded writes); never in a repr or log.
    replication_secret: str | None = field(default=None, repr=False)
    # The events stream's writers (``stream_writers.events``; homeserver/config/
    # stream_writers.py). Empty: the main process is its one writer, as before.
    event_writers: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        """Several processes share the database: replication runs."""
        return bool(self.workers)

    @property
    def is_main(self) -> bool:
        """The main process writes every stream and runs the background jobs."""
        return self.role == "main"

    def instances_of(self, role: str) -> tuple[str, ...]:
        """The workers of ``role``, sorted by name: the shard order of sharded roles
        (stable whatever order the file lists them in)."""
        return tuple(sorted(n for n, w in self.workers.items() if w.role == role))

    def runs(self, role: str) -> bool:
        """Whether this process does the work of ``role`` (senders, media, background):
        a worker of that role does; the main process does while no worker has it."""
        if self.role == role:
            return True
        return self.is_main and not self.instances_of(role)

    @property
    def main_name(self) -> str:
        return next((n for n, w in self.workers.items() if w.role == "main"), "main")

    def endpoint(self, name: str) -> ReplicationEndpoint | None:
        """Where worker ``name`` accepts forwarded requests (None: it does not)."""
        worker = self.workers.get(name)
        return worker.replication if worker is not None else None

    @property
    def forwards_writes(self) -> bool:
        """Whether writes reach the main process over internal HTTP (else a client
        worker refuses them and the reverse proxy must route them)."""
        return self.replication_secret is not None and self.endpoint(self.main_name) is not None


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
                "replication": {
                    "type": "object", "additionalProperties": False,
                    "required": ["host", "port"],
                    "properties": {
                        "host": {"type": "string", "minLength": 1, "maxLength": 255},
                        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                        "secret": _SECRET,
                    },
                },
            },
        },
    }


def parse_workers(raw: dict[str, Any] | None, rel: Callable[[str], str],
                  engine: str, has_redis: bool) -> WorkersConfig:
    """``workers``: refuse what cannot work (no Redis, SQLite, two main processes)."""
    from homeserver.config.loader import ConfigError, resolve_secret
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
        if w["role"] not in ("main", "media") \
                and any("federation" in li.resources for li in listeners):
            raise ConfigError(f"workers.{name}: a {w['role']} worker serves no federation "
                              "resource")
        rep = w.get("replication")
        if rep is not None and "secret" in rep and w["role"] != "main":
            raise ConfigError(f"workers.{name}.replication.secret: the deployment's secret "
                              "is given on the main process's entry")
        endpoint = ReplicationEndpoint(rep["host"], rep["port"]) if rep else None
        workers[name] = WorkerConfig(name, w["role"], listeners, endpoint)
    for role in SINGLE_ROLES:
        several = sorted(n for n, w in workers.items() if w.role == role)
        if len(several) > 1:
            raise ConfigError(f"workers: only one worker may have role {role!r} "
                              f"({', '.join(several)}): its jobs must not run twice")
    secret = None
    main_rep = raw[mains[0]].get("replication") if mains else None
    if main_rep is not None:
        secret = resolve_secret(main_rep.get("secret"), f"workers.{mains[0]}.replication.secret")
        if secret is None or len(secret) < MIN_SECRET_LENGTH:
            raise ConfigError(f"workers.{mains[0]}.replication.secret: required, at least "
                              f"{MIN_SECRET_LENGTH} characters")
    return WorkersConfig(workers=workers, instance=mains[0] if mains else "main",
                         replication_secret=secret)


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

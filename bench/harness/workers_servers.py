"""Deployments for bench/workers.py: Parley as one process or as main + workers, and
Synapse, each on a fresh PostgreSQL database; resource use summed over their processes.

A deployment is a list of managed processes, each started in a session of its own (so
each is its own process group, see procstat.py). Parley's workers run the main
process's config file with ``--worker NAME``, as ``contrib/systemd/parley-worker@.service``
and tests/e2e/test_workers_ops.py do. Nothing of Parley's code is changed; the config
differences from run.py's Parley are the ``redis``/``workers``/``stream_writers``
sections (README "Workers"), main's ``replication`` listener and a Redis key prefix of
the run's own, so parallel runs on the shared Redis never see each other's messages.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.parley import ParleyServer
from harness.pgdb import PgTarget
from harness.procstat import sample_group
from harness.servers import ManagedServer, clean_env, free_port

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
# The names of the persisters, in stream_writers.events order (the hash splits rooms
# over this list: tests/e2e/test_workers_ops.py uses the same two).
WRITERS = ("p1", "p2")
READERS = ("client1", "client2")


def ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports."""
    out: list[int] = []
    while len(out) < n:
        p = free_port()
        if p not in out:
            out.append(p)
    return out


class ParleyMain(ParleyServer):
    """The main process of a multi-process Parley (or one process when ``workers`` is
    empty): run.py's Parley config plus the sections a deployment with workers needs."""

    def __init__(self, workdir: Path, port: int, cli: list[str], repo: Path,
                 hashing: dict[str, int] | None, pg: tuple[PgTarget, str],
                 workers: dict[str, dict[str, Any]], redis_prefix: str,
                 writers: tuple[str, ...] = ()) -> None:
        super().__init__(workdir, port, cli, repo, hashing=hashing, pg=pg)
        self.workers = workers
        self.redis_prefix = redis_prefix
        self.writers = writers
        self.replication_port = free_port() if workers else 0
        self.secret = "bench-replication-" + secrets.token_hex(12)

    def prepare(self) -> None:
        # Workers read the signing key from the shared data_dir: it must exist first.
        self.data_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
        super().prepare()

    def patch(self, config: dict[str, Any]) -> None:
        super().patch(config)
        if not self.workers:
            return
        config["redis"] = {"host": REDIS_HOST, "port": REDIS_PORT,
                           "key_prefix": self.redis_prefix}
        config["listeners"].append({"port": self.replication_port,
                                    "bind_addresses": ["127.0.0.1"],
                                    "resources": ["replication"]})
        main = {"role": "main", "replication": {"host": "127.0.0.1",
                                                "port": self.replication_port,
                                                "secret": self.secret}}
        config["workers"] = {"main": main, **self.workers}
        if self.writers:
            config["stream_writers"] = {"events": list(self.writers)}
        # Rate-limit budgets stay per process ("memory"): every limit is lifted anyway,
        # and a Redis round trip per request would be a cost of the limiter, not of
        # the deployment shape (ops_cost.py measures the limiter).


class ParleyWorker(ManagedServer):
    """``parley run -c <main's config> --worker NAME``, its client API on ``port``."""

    def __init__(self, main: ParleyMain, name: str, port: int) -> None:
        self.name = name
        super().__init__(main.workdir, port)
        self.main = main

    def prepare(self) -> None:
        """Nothing: the worker runs the main process's config."""

    def cwd(self) -> Path:
        return self.main.cwd()

    def command(self) -> list[str]:
        return [*self.main.cli, "run", "-c", str(self.main.config_path), "--worker", self.name]

    def describe(self) -> dict[str, Any]:
        return {"name": f"Parley worker {self.name}"}


def client_worker(port: int) -> dict[str, Any]:
    return {"role": "client", "listeners": [{"port": port, "bind_addresses": ["127.0.0.1"]}]}


def event_persister(port: int, rep_port: int) -> dict[str, Any]:
    return {"role": "event_persister",
            "replication": {"host": "127.0.0.1", "port": rep_port},
            "listeners": [{"port": port, "bind_addresses": ["127.0.0.1"]},
                          {"port": rep_port, "bind_addresses": ["127.0.0.1"],
                           "resources": ["replication"]}]}


@dataclass
class Deployment:
    """One configuration under test: its processes (``procs[0]`` is the main one, whose
    client port is the deployment's entry point), its database and where /sync goes."""

    key: str
    label: str
    server: str  # "parley" or "synapse"
    procs: list[ManagedServer]
    pg: tuple[PgTarget, str]
    roles: list[str]  # per process, for the report
    sync_urls: list[str] = field(default_factory=list)  # empty: /sync goes to main
    writers: tuple[str, ...] = ()
    # Writer name -> its client URL, when sends go straight to the room's writer (as a
    # proxy routing by room would); empty: every send goes to main, which forwards it.
    send_direct: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return self.procs[0].base_url

    def start(self, timeout_s: float) -> None:
        for proc in self.procs:  # main first: workers need its migrations and data dir
            proc.start()
            proc.wait_ready(timeout_s)

    def stop(self) -> list[int | None]:
        return [proc.stop() for proc in reversed(self.procs)]

    def pgids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]


def parley_deployment(key: str, shape: str, workdir: Path, cli: list[str], repo: Path,
                      hashing: dict[str, int] | None, pg: tuple[PgTarget, str],
                      run_id: str) -> Deployment:
    """``shape``: "one" (no workers section), "persisters" (main + p1, p2; with
    "persisters-direct" the bench sends to each room's writer instead of main),
    "readers" (main + client1, client2) or "full" (main + all four, as
    docker/compose.workers.yml)."""
    direct = shape == "persisters-direct"
    shape = "persisters" if direct else shape
    prefix = f"bench{run_id}{key}:"
    workers: dict[str, dict[str, Any]] = {}
    names: list[str] = []
    worker_ports: list[int] = []
    if shape in ("persisters", "full"):
        for name in WRITERS:
            port, rep = ports(2)
            workers[name] = event_persister(port, rep)
            names.append(name)
            worker_ports.append(port)
    if shape in ("readers", "full"):
        for name in READERS:
            port = free_port()
            workers[name] = client_worker(port)
            names.append(name)
            worker_ports.append(port)
    if shape not in ("one", "persisters", "readers", "full"):
        raise ValueError(f"unknown Parley shape {shape!r}")
    writers = WRITERS if shape in ("persisters", "full") else ()
    main = ParleyMain(workdir, free_port(), cli, repo, hashing, pg, workers, prefix, writers)
    procs: list[ManagedServer] = [main]
    procs += [ParleyWorker(main, n, p) for n, p in zip(names, worker_ports, strict=True)]
    labels = {"one": "Parley, one process",
              "persisters": "Parley, main + 2 event persisters"
                            + (", sends to the room's writer" if direct else ""),
              "readers": "Parley, main + 2 client readers",
              "full": "Parley, main + 2 persisters + 2 readers"}
    sync_urls = [p.base_url for p in procs if p.name in READERS]
    return Deployment(key, labels[shape], "parley", procs, pg, ["main"] + names,
                      sync_urls=sync_urls, writers=writers,
                      send_direct={p.name: p.base_url for p in procs
                                   if direct and p.name in WRITERS})


def synapse_deployment(key: str, server: ManagedServer,
                       pg: tuple[PgTarget, str]) -> Deployment:
    return Deployment(key, "Synapse, one process", "synapse", [server], pg, ["main"])


# ---- resource use --------------------------------------------------------------------------

@dataclass(frozen=True)
class Usage:
    """CPU seconds (utime+stime) per process of a deployment, of its PostgreSQL backends,
    and RSS summed over its processes, at one moment."""

    cpu_s: list[float]
    rss_kib: list[int]
    db_cpu_s: dict[int, float]  # backend pid -> CPU seconds so far
    machine_busy_s: float  # non-idle CPU seconds of the whole machine so far (all users)


def usage(dep: Deployment) -> Usage:
    cpu, rss = [], []
    for pgid in dep.pgids():
        s = sample_group(pgid)
        cpu.append(s.cpu_s if s else 0.0)
        rss.append(s.rss_kib if s else 0)
    return Usage(cpu, rss, db_backend_cpu(dep.pg), machine_busy_s())


def machine_busy_s() -> float:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_delta(a: Usage, b: Usage) -> dict[str, Any]:
    """CPU seconds between two samples: per process, their sum, and the database's
    (backends that lived through both samples, plus the whole life of new ones)."""
    per_proc = [round(y - x, 2) for x, y in zip(a.cpu_s, b.cpu_s, strict=True)]
    db = sum(cpu - a.db_cpu_s.get(pid, 0.0) for pid, cpu in b.db_cpu_s.items())
    return {"cpu_s_per_process": per_proc, "cpu_s": round(sum(per_proc), 2),
            "db_cpu_s": round(db, 2),
            "machine_busy_cpu_s": round(b.machine_busy_s - a.machine_busy_s, 2)}


def db_backend_cpu(pg: tuple[PgTarget, str]) -> dict[int, float]:
    """CPU seconds of every PostgreSQL backend connected to the deployment's database
    (the server may run as another user: /proc/<pid>/stat is world-readable)."""
    target, name = pg
    out = subprocess.run(
        ["psql", "-h", target.host, "-p", str(target.port), "-U", target.user, "-d", "postgres",
         "-Atc", f"SELECT pid FROM pg_stat_activity WHERE datname = '{name}'"],
        capture_output=True, text=True, check=False, env=clean_env())
    ticks = os.sysconf("SC_CLK_TCK")
    result: dict[int, float] = {}
    for line in out.stdout.split():
        try:
            with open(f"/proc/{int(line)}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            result[int(line)] = (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, ValueError, IndexError):
            continue
    return result

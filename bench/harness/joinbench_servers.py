"""The three servers of bench/large_room_join.py, built on tests/interop/rig.py.

* :class:`BenchSynapse`: the rig's Synapse (TLS federation from the test CA, SQLite)
  with every ``rc_*`` limit lifted as the bench does (harness/synapse.py), inbound
  federation limits included.
* :class:`HostSynapse`: the same, in a directory that can outlive the run (``--host-dir``)
  with fixed ports (its server name ``127.0.0.1:<port>`` is in every event of the room,
  so a reused host must come back on the same port), and a registration shared secret
  for the admin registration API. The certificate is issued afresh by each run's CA.
* :class:`BenchParley`: the rig's ``parley run`` with federation over TLS, every rate
  limit class lifted and a long outbound request timeout (a large room's send_join
  answer takes a while to build and to read).

S and P trust H as their notary (``trusted_key_servers``, H's key pinned), as servers
in the wild trust matrix.org: the room holds events of servers that are gone (the
joiners of earlier repetitions and runs), whose signatures can only be checked with
keys H cached while they were up.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from harness.synapse import RATE_LIMITS
from homeserver.config.model import DEFAULT_RATE_LIMITS
from tests.e2e.server_process import free_port
from tests.interop.certs import TestCa
from tests.interop.rig import FederatedParley, ServerStartError, SynapseProcess, _synapse_env
from tests.interop.scenarios import server_keys

_LIFTED_FEDERATION = {"window_size": 1000, "sleep_limit": 100_000, "sleep_delay": 1,
                      "reject_limit": 100_000, "concurrent": 1000}
PARLEY_REQUEST_TIMEOUT = "300s"


def proc_memory(pid: int | None) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of one process, in MiB (empty if it is gone)."""
    out: dict[str, float] = {}
    if pid is None:
        return out
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key = "rss_mib" if line.startswith("VmRSS") else "hwm_mib"
                    out[key] = round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return out


def notary_of(host: SynapseProcess, ca_path: str) -> dict[str, Any]:
    """H as a ``trusted_key_servers`` entry, its key fetched (and self-signature checked)
    over TLS."""
    keys = server_keys(host, ca_path)
    return {"server_name": host.server_name,
            "verify_keys": {kid: v["key"] for kid, v in keys["verify_keys"].items()}}


def _copy(paths: list[str], dest: Path, label: str) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for path in paths:
        if path and os.path.exists(path):
            shutil.copyfile(path, dest / f"{label}-{os.path.basename(path)}")


class BenchSynapse(SynapseProcess):
    def __init__(self, ca: TestCa, label: str = "synapse",
                 notary: dict[str, Any] | None = None) -> None:
        super().__init__(ca, label)
        self.notary = notary

    def _overrides(self) -> dict[str, Any]:
        out = super()._overrides()
        out.update(RATE_LIMITS)
        out["rc_federation"] = dict(_LIFTED_FEDERATION)
        if self.notary is not None:
            out["trusted_key_servers"] = [dict(self.notary)]
        return out

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def copy_logs(self, dest: Path, label: str) -> None:
        d = self.tmp_dir or ""
        _copy([os.path.join(d, "homeserver.log"), os.path.join(d, "synapse.stdout.log")],
              dest, label)


class HostSynapse(BenchSynapse):
    def __init__(self, ca: TestCa, host_dir: Path | None,
                 state: dict[str, Any] | None = None) -> None:
        super().__init__(ca, "host")
        self.host_dir = host_dir
        if state is not None:
            self.port = int(state["port"])
            self.federation_port = int(state["federation_port"])
            self.server_name = f"127.0.0.1:{self.federation_port}"
        self.shared_secret = ""

    def ports(self) -> dict[str, Any]:
        return {"port": self.port, "federation_port": self.federation_port,
                "server_name": self.server_name}

    def _overrides(self) -> dict[str, Any]:
        out = super()._overrides()
        out["registration_shared_secret"] = self.shared_secret
        return out

    def start(self) -> None:
        if not os.path.exists(self.python):
            raise ServerStartError(f"no Synapse interpreter at {self.python} "
                                   "(run bench/setup_synapse.sh)")
        directory = str(self.host_dir) if self.host_dir else tempfile.mkdtemp(
            prefix="joinbench-host-")
        self.tmp_dir = directory
        config_path = os.path.join(directory, "homeserver.yaml")
        if not os.path.exists(config_path):
            done = subprocess.run(
                [self.python, "-m", "synapse.app.homeserver", "--server-name",
                 self.server_name, "--config-path", config_path, "--data-directory",
                 directory, "--generate-config", "--report-stats=no"],
                cwd=directory, capture_output=True, timeout=120, env=_synapse_env(),
                check=False)
            if done.returncode != 0:
                raise ServerStartError("synapse --generate-config failed: "
                                       + done.stderr.decode("utf-8", "replace")[-2000:])
        with open(config_path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
        self.shared_secret = config.get("registration_shared_secret") or secrets.token_hex(24)
        config.update(self._overrides())  # the certificate of this run's CA, limits, ...
        with open(config_path, "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        self.log_path = os.path.join(directory, "synapse.stdout.log")
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        self._proc = subprocess.Popen(
            [self.python, "-m", "synapse.app.homeserver", "-c", config_path],
            cwd=directory, stdin=subprocess.DEVNULL, stdout=self._log_file,
            stderr=subprocess.STDOUT, env=_synapse_env(), start_new_session=True)
        self._wait_until_serving()

    def stop(self) -> None:
        if self.host_dir is not None:
            self.tmp_dir = None  # kept: the rig's stop() removes only tmp_dir
        super().stop()


class BenchParley(FederatedParley):
    def __init__(self, ca: TestCa, label: str, engine: str,
                 notary: dict[str, Any] | None = None,
                 partial_state: bool | None = None, log_level: str | None = None) -> None:
        federation: dict[str, Any] = {"request_timeout": PARLEY_REQUEST_TIMEOUT}
        if notary is not None:
            federation["trusted_key_servers"] = [dict(notary)]
        if partial_state is not None:  # None: the checkout's default
            federation["partial_state_joins"] = partial_state
        super().__init__(ca, label, engine=engine, federation=federation)
        lifted = {"per_second": 1_000_000_000, "burst": 1_000_000_000}
        self.config_overrides = {"rate_limits": {name: dict(lifted)
                                                 for name in DEFAULT_RATE_LIMITS}}
        if log_level is not None:  # DEBUG: the join's phase timings (federation.remote_join)
            self.config_overrides["logging"] = {"level": log_level}

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def copy_logs(self, dest: Path, label: str) -> None:
        _copy([self.log_path or ""], dest, label)


__all__ = ["BenchParley", "BenchSynapse", "HostSynapse", "free_port", "notary_of",
           "proc_memory"]

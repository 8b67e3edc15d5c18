"""Federating servers on loopback for the two-server and Synapse interop tests.

TLS: Parley's listeners take ``tls: {certificate_path, private_key_path}`` already
(homeserver/app.py ``_listen``), so each server gets two listeners: the client API on
plain HTTP (what the test clients use) and the federation API over TLS with a
certificate from :class:`tests.interop.certs.TestCa`. Servers are named
``127.0.0.1:<federation port>``: an IP literal with an explicit port is connected to
as is (no well-known, no SRV, no DNS), and the certificate is checked for that IP.
Every server trusts only the test CA for outbound federation, and allows loopback
through its SSRF guard (Parley ``federation.ip_range_allowlist``; Synapse
``ip_range_whitelist`` plus an empty ``federation_ip_range_blacklist``, see
:meth:`SynapseProcess._overrides`).

Synapse runs from its own virtualenv (``bench/setup_synapse.sh`` installs the pinned
PyPI release; ``PARLEY_INTEROP_SYNAPSE_PYTHON`` overrides the interpreter).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

import yaml

from tests.e2e.server_process import (
    REPO_ROOT,
    ServerProcess,
    ServerStartError,
    _child_env,
    free_port,
)
from tests.interop.certs import TestCa

SYNAPSE_PYTHON_ENV = "PARLEY_INTEROP_SYNAPSE_PYTHON"
DEFAULT_SYNAPSE_PYTHON = os.path.join(REPO_ROOT, "bench", ".venv-synapse", "bin", "python")
SYNAPSE_START_TIMEOUT_S = 120.0
SYNAPSE_STOP_TIMEOUT_S = 20.0
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class FederatedParley(ServerProcess):
    """``parley run`` with federation on: client API on plain HTTP (``base_url``),
    federation over TLS on ``federation_port``, named ``127.0.0.1:<federation_port>``."""

    def __init__(self, ca: TestCa, label: str, engine: str | None = None,
                 federation: dict[str, Any] | None = None) -> None:
        self.federation_port = free_port()
        super().__init__(server_name=f"127.0.0.1:{self.federation_port}", engine=engine)
        self.ca = ca
        self.cert = ca.issue(label)
        self.federation_extra = federation or {}

    @property
    def federation_url(self) -> str:
        return f"https://127.0.0.1:{self.federation_port}"

    def _patch_config(self) -> None:
        super()._patch_config()
        assert self.config_path is not None
        with open(self.config_path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
        config["listeners"] = [
            {"port": self.port, "bind_addresses": ["127.0.0.1"], "resources": ["client"]},
            {"port": self.federation_port, "bind_addresses": ["127.0.0.1"],
             "resources": ["federation"],
             "tls": {"certificate_path": self.cert.certificate_path,
                     "private_key_path": self.cert.private_key_path}},
        ]
        config["federation"] = {
            "enabled": True,
            "tls_ca_file": self.ca.ca_path,
            "ip_range_allowlist": ["127.0.0.0/8"],
            "request_timeout": "10s",
            **self.federation_extra,
        }
        with open(self.config_path, "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f, sort_keys=False)

    # -- down and back up (same data, config and ports) ----------------------------------

    def go_down(self) -> None:
        """Stop the process (SIGTERM) but keep its data, database and ports."""
        proc, self._proc = self._proc, None
        assert proc is not None, "server not running"
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def come_back(self) -> None:
        """Start the process again after :meth:`go_down` and wait until it serves."""
        assert self._proc is None and self.config_path is not None
        assert self._log_file is not None
        self._log_file.write(b"\n--- back up ---\n")
        self._log_file.flush()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "homeserver", "run", "-c", self.config_path],
            stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
            cwd=self.tmp_dir, env=_child_env(),
        )
        self._wait_until_serving()


# Synapse's rate limits, raised so that a test measures behaviour rather than 429s.
_HIGH = {"per_second": 1000, "burst_count": 1000}
SYNAPSE_RATE_LIMITS: dict[str, Any] = {
    "rc_message": _HIGH,
    "rc_registration": _HIGH,
    "rc_login": {"address": _HIGH, "account": _HIGH, "failed_attempts": _HIGH},
    "rc_joins": {"local": _HIGH, "remote": _HIGH},
    "rc_invites": {"per_room": _HIGH, "per_user": _HIGH, "per_issuer": _HIGH},
    "rc_key_requests": _HIGH,
    "rc_federation": {"window_size": 1000, "sleep_limit": 1000, "sleep_delay": 1,
                      "reject_limit": 1000, "concurrent": 100},
}


def synapse_python() -> str:
    return os.environ.get(SYNAPSE_PYTHON_ENV) or DEFAULT_SYNAPSE_PYTHON


def synapse_version(python: str | None = None) -> str:
    done = subprocess.run(
        [python or synapse_python(), "-c",
         "from importlib.metadata import version; print(version('matrix-synapse'))"],
        capture_output=True, text=True, timeout=60, env=_synapse_env(), check=False)
    return done.stdout.strip() or "unknown"


def _synapse_env() -> dict[str, str]:
    """Ours minus anything that would put Parley's venv or checkout on Synapse's path."""
    return {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}


class SynapseProcess:
    """The pinned Synapse on SQLite: client API on plain HTTP, federation over TLS,
    named ``127.0.0.1:<federation port>``, trusting only the test CA."""

    def __init__(self, ca: TestCa, label: str = "synapse") -> None:
        self.python = synapse_python()
        self.ca = ca
        self.cert = ca.issue(label)
        self.port = free_port()
        self.federation_port = free_port()
        self.server_name = f"127.0.0.1:{self.federation_port}"
        self.tmp_dir: str | None = None
        self.log_path: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def federation_url(self) -> str:
        return f"https://127.0.0.1:{self.federation_port}"

    def start(self) -> None:
        if not os.path.exists(self.python):
            raise ServerStartError(f"no Synapse interpreter at {self.python} "
                                   "(run bench/setup_synapse.sh or `make interop`)")
        self.tmp_dir = tempfile.mkdtemp(prefix="parley-interop-synapse-")
        config_path = os.path.join(self.tmp_dir, "homeserver.yaml")
        done = subprocess.run(
            [self.python, "-m", "synapse.app.homeserver", "--server-name", self.server_name,
             "--config-path", config_path, "--data-directory", self.tmp_dir,
             "--generate-config", "--report-stats=no"],
            cwd=self.tmp_dir, capture_output=True, timeout=120, env=_synapse_env(), check=False)
        if done.returncode != 0:
            raise ServerStartError("synapse --generate-config failed: "
                                   + done.stderr.decode("utf-8", "replace")[-2000:])
        with open(config_path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
        config.update(self._overrides())
        with open(config_path, "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        self.log_path = os.path.join(self.tmp_dir, "synapse.stdout.log")
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        self._proc = subprocess.Popen(
            [self.python, "-m", "synapse.app.homeserver", "-c", config_path],
            cwd=self.tmp_dir, stdin=subprocess.DEVNULL, stdout=self._log_file,
            stderr=subprocess.STDOUT, env=_synapse_env(), start_new_session=True)
        self._wait_until_serving()

    def _overrides(self) -> dict[str, Any]:
        assert self.tmp_dir is not None
        return {
            "listeners": [
                {"port": self.port, "bind_addresses": ["127.0.0.1"], "type": "http",
                 "tls": False, "x_forwarded": False,
                 "resources": [{"names": ["client"], "compress": False}]},
                {"port": self.federation_port, "bind_addresses": ["127.0.0.1"],
                 "type": "http", "tls": True, "x_forwarded": False,
                 "resources": [{"names": ["federation"], "compress": False}]},
            ],
            "tls_certificate_path": self.cert.certificate_path,
            "tls_private_key_path": self.cert.private_key_path,
            "database": {"name": "sqlite3",
                         "args": {"database": os.path.join(self.tmp_dir, "homeserver.db")}},
            "enable_registration": True,
            "enable_registration_without_verification": True,
            "bcrypt_rounds": 4,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "report_stats": False,
            "federation_verify_certificates": True,
            "federation_custom_ca_list": [self.ca.ca_path],
            "ip_range_whitelist": ["127.0.0.0/8"],
            # Synapse checks IP-literal server names against the federation blocklist
            # alone (matrixfederationclient.py: BlocklistingAgentWrapper without the
            # allowlist), so loopback must leave the federation blocklist.
            "federation_ip_range_blacklist": [],
            "presence": {"enabled": False},
            **SYNAPSE_RATE_LIMITS,
        }

    def _wait_until_serving(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + SYNAPSE_START_TIMEOUT_S
        url = self.base_url + "/_matrix/client/versions"
        last = "no attempt"
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                tail = self.log_tail()
                self.stop()
                raise ServerStartError(f"synapse exited with {code}; log:\n{tail}")
            try:
                with _NO_PROXY.open(url, timeout=2) as resp:
                    if resp.status == 200 and "versions" in json.loads(resp.read()):
                        return
            except (OSError, ValueError) as e:
                last = repr(e)
            time.sleep(0.2)
        tail = self.log_tail()
        self.stop()
        raise ServerStartError(f"synapse did not serve {url} in time ({last}); log:\n{tail}")

    def log_tail(self, max_bytes: int = 4000) -> str:
        chunks = []
        for name in ("synapse.stdout.log", "homeserver.log"):
            path = os.path.join(self.tmp_dir or "", name)
            if self.tmp_dir and os.path.exists(path):
                with open(path, "rb") as f:
                    chunks.append(f"[{name}]\n" + f.read()[-max_bytes:].decode("utf-8", "replace"))
        return "\n".join(chunks) or "(no synapse log)"

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=SYNAPSE_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=SYNAPSE_STOP_TIMEOUT_S)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.tmp_dir is not None and not os.environ.get("PARLEY_INTEROP_KEEP"):
            tmp, self.tmp_dir = self.tmp_dir, None
            shutil.rmtree(tmp, ignore_errors=True)

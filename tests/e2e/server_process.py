"""A real Parley server in a child process, for end-to-end tests with real clients.

Unlike ``tests.harness`` (which builds the homeserver in the test's own reactor),
this goes through the shipped entry points -- ``parley generate-config --dev`` and
``parley run -c`` -- so an e2e test also covers the CLI, config loading, start-up
migrations and the listener exactly as ``make run`` uses them.

The engine follows ``PARLEY_TEST_DB`` like the rest of the suite: on ``postgres``
the server gets its own schema, dropped again by :meth:`ServerProcess.stop`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

import yaml

from tests.harness import drop_pg_schema, pg_settings, require_postgres, test_engine
from tests.harness import free_port as harness_free_port

#: The checkout the tests run from; the child imports Parley from here (see ``_child_env``).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: Loopback must never go through an ``http_proxy`` from the environment.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
#: How long the server may take to answer ``/versions`` after being spawned.
START_TIMEOUT_S = 30.0
#: How long a graceful shutdown (SIGTERM) may take before the process is killed.
STOP_TIMEOUT_S = 10.0


free_port = harness_free_port  # tests/harness.py: outside the ephemeral port range


def _child_env() -> dict[str, str]:
    """The environment for ``python -m homeserver``: ours, with the checkout first on
    ``PYTHONPATH``.

    The child runs in a temp dir (so nothing it writes lands in the repo), which
    means it would otherwise import Parley through the venv's editable install --
    and that install's package map is fixed at ``pip install`` time, so a top-level
    package added since (e.g. ``plugins``) would be missing. The server under test
    must be the same code as the test process sees.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    return env


class ServerStartError(RuntimeError):
    """The server did not come up; the message carries the tail of its log."""


class ServerProcess:
    """Spawns ``parley run`` on a fresh data dir and a free loopback port.

    Usage (trial)::

        server = ServerProcess()
        self.addCleanup(server.stop)
        server.start()
        ... talk to server.base_url ...

    ``start`` blocks (bounded by :data:`START_TIMEOUT_S`) until the client API
    answers; ``stop`` is idempotent and removes the temp dir and PG schema.
    """

    def __init__(self, server_name: str = "localhost", engine: str | None = None,
                 config_overrides: dict[str, Any] | None = None) -> None:
        self.server_name = server_name
        self.engine = engine or test_engine()
        self.config_overrides = config_overrides or {}
        self.port = 0
        self.tmp_dir: str | None = None
        self.config_path: str | None = None
        self.log_path: str | None = None
        self.pg_schema: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` -- what a client uses as its homeserver URL."""
        if not self.port:
            raise RuntimeError("server not started")
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Generate a dev config, spawn the server and wait until it serves."""
        if self.engine == "postgres":
            require_postgres()  # SkipTest with the reason if PG is not reachable
        self.tmp_dir = tempfile.mkdtemp(prefix="parley-e2e-")
        self.port = free_port()
        self.config_path = os.path.join(self.tmp_dir, "parley.yaml")
        self.log_path = os.path.join(self.tmp_dir, "server.log")
        self._generate_config()
        self._patch_config()

        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        # `python -m homeserver` is the `parley` console script without relying on
        # the venv's bin/ being on PATH.
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "homeserver", "run", "-c", self.config_path],
            stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
            cwd=self.tmp_dir, env=_child_env(),
        )
        self._wait_until_serving()

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL) and remove what it left behind."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.pg_schema is not None:
            schema, self.pg_schema = self.pg_schema, None
            drop_pg_schema(schema)
        if self.tmp_dir is not None:
            tmp, self.tmp_dir = self.tmp_dir, None
            shutil.rmtree(tmp, ignore_errors=True)

    def restart(self, kill: bool = False) -> None:
        """Stop the server (SIGKILL when ``kill``: a crash; else SIGTERM) and start it
        again on the same config, data, database and port."""
        proc, self._proc = self._proc, None
        assert proc is not None and self.config_path is not None and self.tmp_dir is not None
        if kill:
            proc.kill()
        else:
            proc.terminate()
        proc.wait(timeout=STOP_TIMEOUT_S)
        assert self._log_file is not None
        self._log_file.write(b"\n--- restarted ---\n")
        self._log_file.flush()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "homeserver", "run", "-c", self.config_path],
            stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
            cwd=self.tmp_dir, env=_child_env(),
        )
        self._wait_until_serving()

    def log_tail(self, max_bytes: int = 4000) -> str:
        """The end of the server's stdout/stderr, for failure messages."""
        if not self.log_path or not os.path.exists(self.log_path):
            return "(no server log)"
        with open(self.log_path, "rb") as f:
            data = f.read()
        return data[-max_bytes:].decode("utf-8", "replace")

    # -- internals ---------------------------------------------------------

    def _generate_config(self) -> None:
        assert self.tmp_dir is not None and self.config_path is not None
        cmd = [sys.executable, "-m", "homeserver", "generate-config", "--dev",
               "--server-name", self.server_name, "--port", str(self.port),
               "--data-dir", os.path.join(self.tmp_dir, "data"), "--output", self.config_path]
        done = subprocess.run(cmd, capture_output=True, timeout=60, cwd=self.tmp_dir,
                              env=_child_env())
        if done.returncode != 0:
            raise ServerStartError(
                f"generate-config failed ({done.returncode}): "
                f"{done.stderr.decode('utf-8', 'replace')}")

    def _patch_config(self) -> None:
        """Keep the generated config but make it cheap and engine-aware.

        The production Argon2 profile costs ~64 MiB and noticeable CPU per hash;
        tests only need the code path, not the cost.
        """
        assert self.config_path is not None
        with open(self.config_path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
        config["password_hashing"] = {"time_cost": 1, "memory_cost_kib": 8, "parallelism": 1}
        config.setdefault("logging", {})["format"] = "text"
        if self.engine == "postgres":
            self.pg_schema = "e2e_" + secrets.token_hex(8)
            config["database"] = {"engine": "postgres", **pg_settings(),
                                  "schema": self.pg_schema}
        for key, value in self.config_overrides.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        with open(self.config_path, "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f, sort_keys=False)

    def _wait_until_serving(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        url = self.base_url + "/_matrix/client/versions"
        last_error = "no attempt"
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                tail = self.log_tail()
                self.stop()
                raise ServerStartError(f"server exited with {code} before serving; log:\n{tail}")
            try:
                with _NO_PROXY.open(url, timeout=2) as resp:
                    body = json.loads(resp.read())
                if resp.status == 200 and isinstance(body.get("versions"), list):
                    return
                last_error = f"unexpected /versions answer {resp.status}: {body!r}"
            except (OSError, ValueError) as e:  # URLError is an OSError
                last_error = repr(e)
            time.sleep(0.1)
        tail = self.log_tail()
        self.stop()
        raise ServerStartError(
            f"server did not answer {url} within {START_TIMEOUT_S:.0f}s "
            f"(last: {last_error}); log:\n{tail}")

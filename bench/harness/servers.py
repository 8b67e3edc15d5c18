"""Managed server processes: start in their own process group, wait for readiness, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

VERSIONS_PATH = "/_matrix/client/versions"


def free_port() -> int:
    """A currently unused TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env() -> dict[str, str]:
    """The caller's environment minus anything that would leak the bench venv into a server."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.pop("PARLEY_BENCH_BOOTSTRAPPED", None)
    return env


class ManagedServer(ABC):
    """A homeserver under test. Subclasses write a config in ``prepare`` and say how to run it."""

    name: str = "server"

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.log_path = workdir / f"{self.name}.stdout.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's pid (also its process group id), while it runs."""
        return None if self._proc is None else self._proc.pid

    @abstractmethod
    def prepare(self) -> None:
        """Generate and patch the server's config inside ``workdir``."""

    @abstractmethod
    def command(self) -> list[str]:
        """argv that runs the server in the foreground."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Version, password-hashing cost and other facts for the report."""

    def cwd(self) -> Path:
        return self.workdir

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.command(), cwd=self.cwd(), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=clean_env(), start_new_session=True,
            )

    def wait_ready(self, timeout_s: float) -> None:
        """Poll GET /_matrix/client/versions until it answers 200 (bounded by *timeout_s*)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise RuntimeError(f"{self.name} exited early (code {code})\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base_url + VERSIONS_PATH, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise TimeoutError(f"{self.name} not ready after {timeout_s:.0f}s\n{self.log_tail()}")

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM the process group, SIGKILL it if the leader outlives *timeout_s*.

        The leader is only reaped after the final group-wide SIGKILL, so its pid (= the
        process group id) cannot have been reused by an unrelated process meanwhile.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.returncode is None:
            self._signal_group(proc, signal.SIGTERM)
            if not self._wait_exited(proc, timeout_s):
                self._signal_group(proc, signal.SIGKILL)
                self._wait_exited(proc, 5.0)
            self._signal_group(proc, signal.SIGKILL)  # helpers left in the group, if any
        return proc.wait(timeout=5)

    @staticmethod
    def _wait_exited(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
        """Wait until the leader has exited, without reaping it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if info is not None:
                return True
            time.sleep(0.05)
        return False

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

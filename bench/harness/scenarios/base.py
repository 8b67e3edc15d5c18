"""What a scenario is, and the context it runs in."""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlparse

import aiohttp

from harness.loadgen import LoadResult

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
BENCH_PASSWORD = "bench-Passw0rd-xyz!"


@dataclass(frozen=True)
class BenchUser:
    localpart: str
    password: str = BENCH_PASSWORD


@dataclass
class BenchContext:
    """Everything a scenario needs for one server. ``state`` is shared between the scenarios
    run against the same server, in order (e.g. ``register`` leaves ``state["users"]``)."""

    server: str
    base_url: str
    session: aiohttp.ClientSession
    args: argparse.Namespace
    run_id: str
    state: dict[str, Any] = field(default_factory=dict)
    server_pid: int | None = None  # leader (= process group id) of the server, for /proc stats

    def __post_init__(self) -> None:
        host = urlparse(self.base_url).hostname
        if host not in LOOPBACK_HOSTS:
            raise ValueError(f"refusing to target non-loopback host {host!r}")

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path

    @property
    def users(self) -> list[BenchUser]:
        return self.state.setdefault("users", [])


def int_range(lo: int, hi: int) -> Any:
    """argparse ``type=`` for an int in [lo, hi]."""
    def parse(text: str) -> int:
        value = int(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}")
        return value
    return parse


class Scenario(ABC):
    """One benchmark. Subclass, set ``name``/``description``, implement ``run`` and register
    the class in ``harness/scenarios/__init__.py``."""

    name: ClassVar[str]
    description: ClassVar[str]

    @classmethod  # noqa: B027 - optional hook, deliberately a no-op by default
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add scenario-specific CLI options (optional)."""

    @abstractmethod
    async def run(self, ctx: BenchContext) -> LoadResult:
        """Run the measured part and return its samples. Untimed set-up may happen first."""

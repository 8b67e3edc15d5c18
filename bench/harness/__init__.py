"""Parley benchmark harness: server management, load generation and scenarios."""

from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = BENCH_DIR.parent

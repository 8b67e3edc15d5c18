"""The ``parley`` command: generate-config, run, migrate, create-user."""

from __future__ import annotations

import argparse
import getpass
import os
import secrets
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import yaml

from homeserver.auth.access_tokens import generate_signing_key_pem
from homeserver.cli_audit import add_audit_parser
from homeserver.cli_keys import add_at_rest_section, add_keys_parser, write_encrypted_signing_key
from homeserver.cli_port_db import add_port_db_parser
from homeserver.cli_roles import add_roles_parser
from homeserver.config import ConfigError, load_config
from homeserver.config.model import Config


def generate_config_text(
    server_name: str, data_dir: str, port: int, dev: bool, bind: str = "127.0.0.1"
) -> str:
    """A complete config with a fresh signing key. ``dev`` opens registration."""
    config: dict[str, Any] = {
        "server_name": server_name,
        "public_baseurl": f"http://{bind}:{port}/" if dev else f"https://{server_name}/",
        "data_dir": data_dir,
        "listeners": [{"port": port, "bind_addresses": [bind],
                       "resources": ["client", "federation"]}],
        "database": {"engine": "sqlite", "path": os.path.join(data_dir, "parley.db")},
        "auth": {
            "access_token_lifetime": "15m",
            "refresh_token_lifetime": "30d",
            "clock_skew": "60s",
            "signing_keys": [{"kid": f"k{secrets.token_hex(4)}", "algorithm": "EdDSA",
                              "key": generate_signing_key_pem("EdDSA")}],
        },
        "password_hashing": {"time_cost": 1, "memory_cost_kib": 65536, "parallelism": 2},
        "password_policy": {"enabled": True, "min_length": 10 if not dev else 8},
        "registration": {"enabled": dev, "requires_token": False, "allow_guests": False},
        # Per client IP (uia_password: per user). Development gets bigger bursts, so a few
        # clients signing up and logging in at once from localhost are never refused.
        "rate_limits": {
            "login": {"per_second": 5, "burst": 30 if dev else 10},
            "registration": {"per_second": 5, "burst": 30 if dev else 10},
            "uia_password": {"per_second": 1, "burst": 10 if dev else 5},
        },
        "logging": {"level": "INFO", "format": "text" if dev else "json"},
        "federation": {"enabled": False},
        # SIGTERM: stop accepting, answer held long-polls, let requests finish this long.
        "shutdown": {"grace_period_s": 10},
    }
    header = (
        "# Parley configuration. Reference: README.md, section 'Configuration'.\n"
        "# Secrets may be written as {env: VAR} or {file: /path} instead of inline.\n"
    )
    if dev:
        header += "# DEVELOPMENT config: open registration, plain HTTP on loopback.\n"
    add_at_rest_section(config)  # secrets.at_rest_key when PARLEY_AT_REST_KEY is set
    return header + yaml.safe_dump(config, sort_keys=False)


def _run_async(fn: Callable[[], Coroutine[Any, Any, Any]]) -> int:
    """Run a coroutine on the reactor and stop; return an exit code."""
    from twisted.internet import defer, reactor, task

    result: dict[str, int] = {"code": 0}

    async def main(_reactor: Any) -> None:
        try:
            await fn()
        except (ConfigError, SystemExit) as e:
            print(f"error: {e}", file=sys.stderr)
            result["code"] = 1
        except Exception as e:  # noqa: BLE001 (report any failure as an exit code)
            print(f"error: {e}", file=sys.stderr)
            result["code"] = 1

    def runner(r: Any) -> Any:
        return defer.ensureDeferred(main(r))

    try:
        task.react(runner)
    except SystemExit:
        pass
    _ = reactor
    return result["code"]


def cmd_generate_config(args: argparse.Namespace) -> int:
    text = generate_config_text(args.server_name, args.data_dir, args.port, args.dev,
                                bind=args.bind_address)
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    out = Path(args.output)
    if out.exists() and not args.force:
        print(f"error: {out} exists (use --force to overwrite)", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    print(f"wrote {out}")
    if key_file := write_encrypted_signing_key(out):
        print(f"wrote {key_file} (encrypted with secrets.at_rest_key)")
    return 0


def _load(args: argparse.Namespace) -> Config:
    try:
        return load_config(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from e


def cmd_migrate(args: argparse.Namespace) -> int:
    config = _load(args)
    from homeserver.logging_setup import setup_logging

    # Each migration is logged with its position, duration and the time left.
    setup_logging(config.log_level, config.log_format)

    async def go() -> None:
        from twisted.internet import reactor

        from homeserver.app import open_database
        from homeserver.clock import Clock
        from storage.migrations import migrate

        db = open_database(config)
        try:
            applied = await migrate(db, Clock(reactor).time_msec())
            print(f"applied migrations: {applied}" if applied else "database is up to date")
        finally:
            db.close()

    return _run_async(go)


def cmd_create_user(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.password_file:
        password = Path(args.password_file).read_text().rstrip("\r\n")
    elif os.environ.get("PARLEY_NEW_USER_PASSWORD"):
        password = os.environ["PARLEY_NEW_USER_PASSWORD"]
    else:
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Confirm password: "):
            print("error: passwords do not match", file=sys.stderr)
            return 1

    async def go() -> None:
        from homeserver.app import build_homeserver

        hs = await build_homeserver(config)
        try:
            user_id = await hs.registration.create_account(args.username, password,
                                                           is_admin=args.admin)
            print(f"created {user_id}{' (admin)' if args.admin else ''}")
        finally:
            await hs.stop()

    return _run_async(go)


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.worker is not None:  # a worker's section (homeserver/config/workers.py)
        from homeserver.config.workers import select_worker

        try:
            config = select_worker(config, args.worker)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    from homeserver.logging_setup import setup_logging

    setup_logging(config.log_level, config.log_format)
    import gc

    gc.set_threshold(*config.gc_thresholds)
    from twisted.internet import defer, reactor

    from homeserver.app import build_homeserver, listen_early
    from homeserver.metrics.ready import StartupStatus

    state: dict[str, Any] = {"code": 0}

    async def start() -> None:
        # Listen first: while the database is migrated and the server built, /health is
        # 200 and /ready 503 "migrating" / "starting" (progress is also logged).
        status = StartupStatus()
        try:
            early = listen_early(config, reactor, status)
        except Exception as e:  # noqa: BLE001 (a port in use, a bad certificate...)
            print(f"error: {e}", file=sys.stderr)
            state["code"] = 1
            reactor.stop()
            return
        server: dict[str, Any] = {}

        async def stop() -> None:  # the server if built, else just the listeners
            await (server["hs"].stop() if "hs" in server else early.stop())

        # Graceful: Homeserver.stop drains for up to shutdown.grace_period_s.
        reactor.addSystemEventTrigger("before", "shutdown",
                                      lambda: defer.ensureDeferred(stop()))
        _handle_stop_signals(reactor, config.shutdown_grace_period_s)
        print(f"Parley starting {config.server_name} on "
              + ", ".join(f"{a}:{li.port}" for li in config.listeners
                          for a in li.bind_addresses), file=sys.stderr, flush=True)
        try:
            hs = await build_homeserver(config, startup=status)
            hs.serve_on(early)
            server["hs"] = hs
            print(f"Parley serving {config.server_name}", file=sys.stderr, flush=True)
        except Exception as e:  # noqa: BLE001 (fail start-up with a clear message)
            print(f"error: {e}", file=sys.stderr)
            state["code"] = 1
            reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(start()))
    reactor.run()
    return state["code"]


def _handle_stop_signals(reactor: Any, grace_s: float) -> None:
    """SIGTERM / SIGINT: the first starts the graceful shutdown (the reactor's
    "before shutdown" trigger), a second one exits at once."""
    import logging
    import signal

    logger = logging.getLogger("homeserver.cli")
    seen: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if seen:
            logger.warning("%s again: exiting without waiting", name)
            os._exit(1)
        seen.append(signum)
        logger.info("%s: shutting down gracefully (up to %gs)", name, grace_s)
        reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="parley", description="Parley Matrix homeserver")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate-config", help="write a new config file with fresh keys")
    g.add_argument("--server-name", default="localhost")
    g.add_argument("--output", "-o", default="parley.yaml")
    g.add_argument("--data-dir", default="data")
    g.add_argument("--port", type=int, default=8008)
    g.add_argument("--bind-address", default="127.0.0.1",
                   help="listener address (0.0.0.0 inside a container)")
    g.add_argument("--dev", action="store_true", help="open registration, text logs")
    g.add_argument("--force", action="store_true")
    g.set_defaults(func=cmd_generate_config)

    r = sub.add_parser("run", help="start the homeserver")
    r.add_argument("-c", "--config", required=True)
    r.add_argument("--worker", metavar="NAME", default=None,
                   help="run the worker NAME of the config's 'workers' section")
    r.set_defaults(func=cmd_run)

    m = sub.add_parser("migrate", help="apply database migrations")
    m.add_argument("-c", "--config", required=True)
    m.set_defaults(func=cmd_migrate)

    u = sub.add_parser("create-user", help="create a local account")
    u.add_argument("-c", "--config", required=True)
    u.add_argument("username", help="localpart of the new user")
    u.add_argument("--password-file", help="read the password from this file")
    u.add_argument("--admin", action="store_true", help="make the user a server admin")
    u.set_defaults(func=cmd_create_user)
    add_audit_parser(sub)
    add_roles_parser(sub)
    add_keys_parser(sub)
    add_port_db_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

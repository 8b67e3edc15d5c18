"""``parley set-role`` and ``parley create-user --role``: admin roles from the shell.

    parley set-role -c CONFIG USER ROLE|none
        Grants USER (a user id or a localpart) the role ROLE (admin, moderator, auditor,
        support or a role from ``admin_roles``), or with ``none`` revokes it. Recorded in
        the audit trail as ``admin_action``/``set_role`` with actor ``cli``.

    parley create-user -c CONFIG NAME [--role ROLE]
        As before, then grants ROLE the same way.

Registered in homeserver/cli.py by :func:`add_roles_parser` (it also adds ``--role`` to
the existing ``create-user`` parser); :func:`run_set_role` is the async entry tests call.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from homeserver.cli_support import react_exit_code
from homeserver.config import ConfigError, load_config


def _user_id(name: str, server_name: str) -> str:
    return name if name.startswith("@") else f"@{name.lower()}:{server_name}"


async def run_set_role(config_path: str, user: str, role: str, out: TextIO,
                       err: TextIO) -> int:
    """Set a role on the running reactor; returns the exit code."""
    from homeserver.app import open_database
    from homeserver.auth.roles import Roles
    from homeserver.clock import Clock
    from homeserver.handlers.security_events import SecurityEventRecorder
    from storage.stores.roles import RoleStore
    from storage.stores.security_events import SecurityEventStore

    try:
        config = load_config(config_path)
    except ConfigError as e:
        print(f"error: {e}", file=err)
        return 1
    new_role = None if role == "none" else role
    if new_role is not None and not Roles(config.admin_roles).exists(new_role):
        print(f"error: unknown role {role!r} (known: "
              f"{', '.join(Roles(config.admin_roles).names())}, none)", file=err)
        return 1
    user_id = _user_id(user, config.server_name)
    db = open_database(config)
    try:
        try:
            previous = await RoleStore(db).set_role(user_id, new_role)
        except KeyError:
            print(f"error: no such user {user_id}", file=err)
            return 1
        from twisted.internet import reactor

        events = SecurityEventRecorder(SecurityEventStore(db), Clock(reactor))
        await events.load_head()
        await events.record(
            "admin_action", "success", None, user_id=None, target=user_id,
            details={"action": "set_role", "user_id": user_id, "new_role": new_role,
                     "previous_role": previous, "via": "cli"},
        )
        print(f"{user_id}: role {previous or 'none'} -> {new_role or 'none'}", file=out)
        return 0
    finally:
        db.close()


def cmd_set_role(args: argparse.Namespace) -> int:
    return react_exit_code(lambda: run_set_role(args.config, args.user, args.role, sys.stdout,
                                       sys.stderr))


def _read_password(args: argparse.Namespace) -> str | None:
    """As ``create-user`` reads it: --password-file, PARLEY_NEW_USER_PASSWORD, or a prompt."""
    import getpass
    import os
    from pathlib import Path

    if args.password_file:
        return Path(args.password_file).read_text().rstrip("\r\n")
    if os.environ.get("PARLEY_NEW_USER_PASSWORD"):
        return os.environ["PARLEY_NEW_USER_PASSWORD"]
    password = getpass.getpass("Password: ")
    if password != getpass.getpass("Confirm password: "):
        print("error: passwords do not match", file=sys.stderr)
        return None
    return password


def _create_user_with_role(create: Any) -> Any:
    """Wrap ``create-user``: without ``--role`` exactly as before; with it, create the
    account and grant the role in one run (an unknown role creates nothing)."""

    def cmd(args: argparse.Namespace) -> int:
        if not args.role:
            return int(create(args) or 0)
        if args.admin and args.role != "admin":
            print("error: --admin contradicts --role", file=sys.stderr)
            return 1
        password = _read_password(args)
        if password is None:
            return 1

        async def go() -> int:
            from homeserver.app import build_homeserver
            from homeserver.auth.roles import Roles

            config = load_config(args.config)
            if args.role != "none" and not Roles(config.admin_roles).exists(args.role):
                print(f"error: unknown role {args.role!r}", file=sys.stderr)
                return 1
            hs = await build_homeserver(config)
            try:
                user_id = await hs.registration.create_account(args.username, password)
            finally:
                await hs.stop()
            print(f"created {user_id}")
            return await run_set_role(args.config, user_id, args.role, sys.stdout,
                                      sys.stderr)

        return react_exit_code(go)

    return cmd


def add_roles_parser(sub: Any) -> None:
    """Add ``set-role`` and ``create-user --role`` to the ``parley`` sub-parsers."""
    s = sub.add_parser("set-role", help="grant or revoke an admin role")
    s.add_argument("-c", "--config", required=True)
    s.add_argument("user", help="user id or localpart")
    s.add_argument("role", help="admin, moderator, auditor, support, a configured role, "
                                "or none")
    s.set_defaults(func=cmd_set_role)
    create = sub.choices.get("create-user")
    if create is not None:
        create.add_argument("--role", default=None,
                            help="grant this admin role to the new user")
        create.set_defaults(func=_create_user_with_role(create.get_default("func")))

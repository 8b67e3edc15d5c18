"""``parley keys``: key-encryption keys for secrets at rest, from the shell.

    parley keys generate
        Prints a new random KEK (32 bytes, Base64) for ``secrets.at_rest_key(s)``.

    parley keys rotate -c CONFIG [--batch N]
        Re-encrypts every server-held secret under the active KEK (``secrets.active``):
        the signing key file, the TOTP secrets, pushers' pushkeys, then, with
        ``secrets.encrypt_event_content`` / ``secrets.encrypt_profiles``, every event's
        JSON and profile value (with either
        option switched off, values sealed earlier are written back as plaintext).
        Plaintext values written before a key was configured are encrypted too.
        Resumable: each value is rewritten in its own small transaction (only if
        unchanged meanwhile) and the key file by an atomic rename, so a crash half-way
        leaves every value readable with the configured keys; run it again to finish.
        Prints progress; exits 1 if a value could not be opened (refused and audited).
        Remove an old key from the config only after a run that reports nothing uses it.

Registered in homeserver/cli.py by :func:`add_keys_parser`; :func:`run` is the async
entry (tests call it under trial).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from homeserver.cli_support import react_exit_code
from homeserver.config import ConfigError, load_config
from homeserver.crypto.at_rest import AtRestError, new_kek_text

# The newest table rotate rewrites: schema/0039_pusher_pushkey_hash.sql.
ROTATE_SCHEMA_VERSION = 39
AT_REST_ENV = "PARLEY_AT_REST_KEY"


@dataclass
class RotationReport:
    resealed: int = 0
    current: int = 0
    changed_meanwhile: int = 0
    refused: list[str] = field(default_factory=list)


def add_keys_parser(sub: Any) -> None:
    """Add ``keys generate`` / ``keys rotate`` to the ``parley`` sub-parsers."""
    k = sub.add_parser("keys", help="keys for secrets encrypted at rest")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    g = ksub.add_parser("generate", help="print a new key-encryption key (Base64)")
    g.set_defaults(func=cmd_keys)
    r = ksub.add_parser("rotate", help="re-encrypt every stored secret under the active key")
    r.add_argument("-c", "--config", required=True)
    r.add_argument("--batch", type=int, default=100, choices=range(1, 10001),
                   metavar="N", help="rows read per page (1-10000, default 100)")
    r.set_defaults(func=cmd_keys)


def add_at_rest_section(config: dict[str, Any]) -> None:
    """``parley generate-config``: with ``PARLEY_AT_REST_KEY`` in the environment, the
    new config reads its KEK from there (never written into the file)."""
    if os.environ.get(AT_REST_ENV):
        config["secrets"] = {"at_rest_key": {"env": AT_REST_ENV}}


def write_encrypted_signing_key(config_path: Any) -> str | None:
    """After ``generate-config`` wrote ``config_path``: if it configures a KEK, write the
    server's signing key file now, encrypted (else it is generated at first start).
    Returns the file written, None if nothing was done."""
    from homeserver.crypto.at_rest import vault_from_config
    from homeserver.crypto.signing_key_file import load_or_generate

    if not os.environ.get(AT_REST_ENV):
        return None
    config = load_config(config_path)
    if not config.at_rest.keys or os.path.exists(config.signing_key_path):
        return None
    load_or_generate(config.signing_key_path, vault_from_config(config))
    return config.signing_key_path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="parley")
    add_keys_parser(p.add_subparsers(dest="command", required=True))
    return p


async def run(argv: list[str], out: TextIO | None = None, err: TextIO | None = None,
              after_each: Callable[[], None] | None = None) -> int:
    """``parley keys ...`` on the running reactor; returns the exit code. ``after_each``
    runs after every value rewritten (tests use it to crash half-way)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = build_parser().parse_args(["keys", *argv] if argv[:1] != ["keys"] else argv)
    except SystemExit as e:
        return int(e.code or 0)
    return await run_args(args, out, err, after_each)


async def run_args(args: argparse.Namespace, out: TextIO, err: TextIO,
                   after_each: Callable[[], None] | None = None) -> int:
    if args.keys_command == "generate":
        print(new_kek_text(), file=out)
        return 0
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=err)
        return 1
    return await rotate(config, out, err, args.batch, after_each)


async def rotate(config: Any, out: TextIO, err: TextIO, batch: int = 100,
                 after_each: Callable[[], None] | None = None) -> int:
    from twisted.internet import reactor

    from homeserver.app import open_database
    from homeserver.clock import Clock
    from homeserver.crypto.at_rest import audit_refusals, vault_from_config
    from homeserver.crypto.signing_key_file import file_kek_id, reseal_file
    from homeserver.handlers.security_events import SecurityEventRecorder
    from storage.migrations import current_version
    from storage.stores.mfa import MfaStore
    from storage.stores.security_events import SecurityEventStore

    vault = vault_from_config(config)
    if vault.keyring is None:
        print("error: no key configured (secrets.at_rest_key or secrets.at_rest_keys)",
              file=err)
        return 1
    active = vault.keyring.active
    report = RotationReport()
    db = open_database(config)
    try:
        if await current_version(db) < ROTATE_SCHEMA_VERSION:
            print("error: the database schema is out of date: run 'parley migrate' first",
                  file=err)
            return 1
        recorder = SecurityEventRecorder(SecurityEventStore(db), Clock(reactor))
        vault.on_refused = audit_refusals(recorder)
        print(f"re-encrypting under key {active!r} (configured: "
              f"{', '.join(vault.keyring.ids)})", file=out, flush=True)

        # 1. The signing key file (atomic rename: old or new file, never half).
        path = config.signing_key_path
        try:
            was = (file_kek_id(path) or "plaintext") if os.path.exists(path) else None
            if reseal_file(path, vault):
                report.resealed += 1
                print(f"signing key file {path}: re-encrypted (was {was})", file=out,
                      flush=True)
                if after_each:
                    after_each()
            elif os.path.exists(path):
                report.current += 1
                print(f"signing key file {path}: already under {active!r}", file=out,
                      flush=True)
        except AtRestError as e:
            await vault.refused(e)
            report.refused.append(f"signing key file {path}")
            print(f"signing key file {path}: REFUSED ({e.problem})", file=err, flush=True)

        # 2. TOTP secrets, one row value per transaction.
        store = MfaStore(db)
        store.vault = vault
        after = ""
        seen = 0
        while True:
            page = await store.stored_secrets(after, batch)
            if not page:
                break
            for user_id, column, stored in page:
                seen += 1
                if not vault.needs_reseal(stored):
                    report.current += 1
                    continue
                try:
                    if await store.reseal_secret(user_id, column, stored):
                        report.resealed += 1
                        if after_each:
                            after_each()
                    else:
                        report.changed_meanwhile += 1  # rewritten by the server: current
                except AtRestError as e:
                    report.refused.append(f"mfa_totp.{column} of {user_id}")
                    print(f"mfa_totp.{column} of {user_id}: REFUSED ({e.problem})",
                          file=err, flush=True)
            after = page[-1][0]
            print(f"mfa_totp: {seen} values checked, {report.resealed} re-encrypted so far",
                  file=out, flush=True)

        # 3. Pushers' pushkeys (and their lookup hashes).
        await _reseal_pushkeys(db, vault, report, out, err, batch, after_each)

        # 4. Event JSON and profile values (optional content encryption).
        await _rewrite_content(db, config, vault, report, out, err, batch, after_each)

        await recorder.record(
            "at_rest_rotation", "failure" if report.refused else "success", None,
            reason=f"{len(report.refused)} refused" if report.refused else None,
            details={"active": active, "resealed": report.resealed,
                     "current": report.current, "refused": len(report.refused)})
    finally:
        db.close()

    print(f"done: {report.resealed} re-encrypted, {report.current} already current, "
          f"{report.changed_meanwhile} changed meanwhile", file=out)
    if report.refused:
        print(f"error: {len(report.refused)} values could not be opened (refused and "
              "audited); keep every old key configured and investigate", file=err)
        return 1
    unused = [k for k in vault.keyring.ids if k != active]
    if unused:
        print(f"every value is now under {active!r}: keys {', '.join(unused)} are no longer "
              "used and may be removed from secrets.at_rest_keys", file=out)
    return 0


async def _reseal_pushkeys(db: Any, vault: Any, report: RotationReport, out: TextIO,
                           err: TextIO, batch: int,
                           after_each: Callable[[], None] | None) -> None:
    """Step 3 of :func:`rotate`: every pusher's pushkey and hash under the active key."""
    from storage.stores.pushers import PusherStore

    store = PusherStore(db)
    store.vault = vault
    after, seen = ("", "", ""), 0
    while page := await store.stored_pushkeys(after, batch):
        for user_id, app_id, stored, lookup in page:
            seen += 1
            if not store.needs_reseal(stored, lookup):
                report.current += 1
                continue
            try:
                if await store.reseal_pushkey(user_id, app_id, stored):
                    report.resealed += 1
                    if after_each:
                        after_each()
                else:
                    report.changed_meanwhile += 1
            except AtRestError as e:
                report.refused.append(f"pushers.pushkey of {user_id} ({app_id})")
                print(f"pushers.pushkey of {user_id} ({app_id}): REFUSED ({e.problem})",
                      file=err, flush=True)
        after = page[-1][:3]
        print(f"pushers: {seen} values checked, {report.resealed} re-encrypted so far",
              file=out, flush=True)


async def _rewrite_content(db: Any, config: Any, vault: Any, report: RotationReport,
                           out: TextIO, err: TextIO, batch: int,
                           after_each: Callable[[], None] | None) -> None:
    """Step 4 of :func:`rotate`: each event's JSON and each profile value into its target
    form (homeserver/crypto/content.py), one value per transaction."""
    from homeserver.crypto.content import FieldCodec
    from storage.stores.events import EventStore
    from storage.stores.profiles import ProfileStore

    events = EventStore(db)
    events.codec = FieldCodec(vault, config.at_rest.encrypt_event_content)
    profiles = ProfileStore(db)
    profiles.codec = FieldCodec(vault, config.at_rest.encrypt_profiles)

    async def one(what: str, needs: bool, rewrite: Any, sealed: bool) -> None:
        if not needs:
            if sealed:  # plaintext with the option off is not a secret "already current"
                report.current += 1
            return
        try:
            if await rewrite():
                report.resealed += 1
                if after_each:
                    after_each()
            else:
                report.changed_meanwhile += 1
        except AtRestError as e:
            report.refused.append(what)
            print(f"{what}: REFUSED ({e.problem})", file=err, flush=True)

    after, seen = "", 0
    while page := await events.stored_json_page(after, batch, not events.codec.enabled):
        for event_id, stored in page:
            seen += 1
            await one(f"events.json of {event_id}", events.codec.needs_rewrite(stored),
                      lambda e=event_id, v=stored: events.rewrite_stored_json(e, v),
                      events.codec.enabled)
        after = page[-1][0]
        print(f"events: {seen} values checked, {report.resealed} rewritten so far",
              file=out, flush=True)

    key, seen = ("", ""), 0
    while ppage := await profiles.stored_values_page(key, batch):
        for user_id, name, stored in ppage:
            seen += 1
            await one(f"profile {name} of {user_id}", profiles.codec.needs_rewrite(stored),
                      lambda u=user_id, n=name, v=stored: profiles.rewrite_stored_value(u, n, v),
                      profiles.codec.enabled)
        key = (ppage[-1][0], ppage[-1][1])
        print(f"profiles: {seen} values checked, {report.resealed} rewritten so far",
              file=out, flush=True)


def cmd_keys(args: argparse.Namespace) -> int:
    """The synchronous entry for homeserver/cli.py (runs the reactor until done)."""
    return react_exit_code(lambda: run_args(args, sys.stdout, sys.stderr))


def main(argv: list[str] | None = None) -> int:
    argv = list(argv if argv is not None else sys.argv[1:])
    args = build_parser().parse_args(argv if argv[:1] == ["keys"] else ["keys", *argv])
    return cmd_keys(args)


if __name__ == "__main__":
    sys.exit(main())

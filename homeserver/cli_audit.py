"""``parley audit verify`` and ``parley audit export``: the audit trail from the shell.

    parley audit verify -c CONFIG [--anchor SEQ:HASH]
        Checks the whole retained chain. Prints "OK: ..." and exits 0, or names the
        first bad entry ("FAILED at seq=N ...": edited, deleted, reordered, inserted,
        a truncated tail, an altered retention checkpoint, an identifier that no longer
        matches its keyed hash) and exits 1. ``--anchor``
        is a head notarised earlier (the ``seq`` and hash the metric exported): a chain
        rewritten from scratch no longer contains it.

    parley audit export -c CONFIG [--since ISO-8601|ms] [--format jsonl]
        Writes every retained entry (oldest first, ts >= since) to stdout, one JSON
        object per line, for a SIEM.

Registered in homeserver/cli.py by :func:`add_audit_parser`; :func:`run` is the async
entry (tests call it under trial), :func:`main` the synchronous one.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from homeserver.audit.chain import Link
from homeserver.cli_support import react_exit_code
from homeserver.config import ConfigError, load_config

_HASH = re.compile(r"^[0-9a-f]{64}$")


def parse_since(text: str) -> int:
    """``--since``: milliseconds since the epoch, or an ISO-8601 date/time (UTC unless
    it says otherwise)."""
    text = text.strip()
    if re.fullmatch(r"[0-9]{1,16}", text):
        return int(text)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"--since: {text!r} is neither milliseconds nor an ISO-8601 time") from e
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def parse_anchor(text: str) -> Link:
    seq, _, digest = text.partition(":")
    if not seq.isdigit() or not _HASH.match(digest):
        raise argparse.ArgumentTypeError("--anchor must be SEQ:SHA256HEX")
    return Link(int(seq), digest)


def add_audit_parser(sub: Any) -> None:
    """Add ``audit verify`` / ``audit export`` to the ``parley`` sub-parsers."""
    a = sub.add_parser("audit", help="verify or export the audit trail")
    asub = a.add_subparsers(dest="audit_command", required=True)
    v = asub.add_parser("verify", help="check the audit hash chain; exit 1 if tampered")
    v.add_argument("-c", "--config", required=True)
    v.add_argument("--anchor", type=parse_anchor, default=None,
                   help="a notarised head SEQ:HASH the chain must still contain")
    v.set_defaults(func=cmd_audit)
    e = asub.add_parser("export", help="write audit entries as JSON lines to stdout")
    e.add_argument("-c", "--config", required=True)
    e.add_argument("--since", type=parse_since, default=None,
                   help="ISO-8601 time or milliseconds since the epoch")
    e.add_argument("--format", choices=["jsonl"], default="jsonl")
    e.set_defaults(func=cmd_audit)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="parley")
    add_audit_parser(p.add_subparsers(dest="command", required=True))
    return p


async def run(argv: list[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``parley audit ...`` on the running reactor; returns the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = build_parser().parse_args(["audit", *argv] if argv[:1] != ["audit"] else argv)
    except SystemExit as e:
        return int(e.code or 0)
    return await run_args(args, out, err)


async def run_args(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from homeserver.app import open_database
    from homeserver.audit.id_key import read_audit_key
    from homeserver.audit.service import export_entries, verify_chain
    from homeserver.handlers.security_events import seal_event
    from storage.migrations import current_version
    from storage.stores.security_events import SecurityEventStore

    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=err)
        return 1
    db = open_database(config)
    try:
        if await current_version(db) < 22:
            print("error: the database has no audit chain yet (schema < 22): run "
                  "'parley migrate' first", file=err)
            return 1
        store = SecurityEventStore(db)
        if args.audit_command == "verify":
            # Rows from before the chain existed are chained first (only while it is empty).
            await store.seal_legacy(seal_event)
            # The audit key (data_dir/audit_id.key) checks identifiers against their
            # MACs; without it only the hashes and links are checked.
            id_key = read_audit_key(config.data_dir)
            report = await verify_chain(store, anchor=args.anchor, id_key=id_key)
            print(report.describe(), file=out if report.ok else err)
            return 0 if report.ok else 1
        async for entry in export_entries(store, args.since):
            out.write(json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n")
        out.flush()
        return 0
    finally:
        db.close()


def cmd_audit(args: argparse.Namespace) -> int:
    """The synchronous entry for homeserver/cli.py (runs the reactor until done)."""
    return react_exit_code(lambda: run_args(args, sys.stdout, sys.stderr))


def main(argv: list[str] | None = None) -> int:
    argv = list(argv if argv is not None else sys.argv[1:])
    args = build_parser().parse_args(argv if argv[:1] == ["audit"] else ["audit", *argv])
    return cmd_audit(args)


if __name__ == "__main__":
    sys.exit(main())

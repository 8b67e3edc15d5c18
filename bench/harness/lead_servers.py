"""Servers for bench/lead.py: the bench's Synapse and Parley (cheap hashing, limits lifted)
plus shared-secret registration, a data dir that can be kept and restarted (``--reuse``),
and the on-disk size of each one's SQLite database.

Nothing of Parley's code is changed; the config differences from run.py's servers are:
``registration_shared_secret`` / ``registration.shared_secret`` (to register many users
fast, as an operator would), Parley's ``auth.access_token_lifetime`` raised to 24 h (the
populate phase of a full-size run outlives the 15 min default) and logging at WARNING on
both (hundreds of thousands of requests would otherwise write GBs of INFO lines).
"""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path
from typing import Any

import yaml

from harness import REPO_DIR
from harness.parley import ParleyServer, resolve_parley_cmd
from harness.servers import ManagedServer, free_port
from harness.synapse import SynapseServer, ensure_synapse_installed

SECRET_FILE = "bench_shared_secret"
# Tables counted as "state" on both servers: every table whose name contains "state",
# plus the membership tables (both servers keep memberships beside the room state).
STATE_EXTRA = ("room_memberships", "local_current_membership")


def _secret(workdir: Path) -> str:
    """The shared secret of this data dir (kept, so a reused dir keeps working)."""
    path = workdir / SECRET_FILE
    if path.exists():
        return path.read_text().strip()
    workdir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(16)
    path.write_text(value + "\n")
    return value


class LeadSynapse(SynapseServer):
    def __init__(self, workdir: Path) -> None:
        ensure_synapse_installed()
        super().__init__(workdir, free_port(), bcrypt_rounds=4)
        self.shared_secret = _secret(workdir)

    @property
    def db_path(self) -> Path:
        return self.workdir / "homeserver.db"

    def prepare(self) -> None:
        if not self.config_path.exists():
            super().prepare()
        config = yaml.safe_load(self.config_path.read_text())
        config.update(self.overrides())  # the fresh port, on a reused dir too
        config["registration_shared_secret"] = self.shared_secret
        self._quiet_logging()
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def _quiet_logging(self) -> None:
        for log_config in self.workdir.glob("*.log.config"):
            text = yaml.safe_load(log_config.read_text())
            text.setdefault("root", {})["level"] = "WARNING"
            for logger in (text.get("loggers") or {}).values():
                logger["level"] = "WARNING"
            log_config.write_text(yaml.safe_dump(text, sort_keys=False))


MEMPROBE = Path(__file__).resolve().parent / "memprobe"


class LeadParley(ParleyServer):
    memprobe_dir: Path | None = None  # set: run under tracemalloc, snapshots on SIGUSR2

    def command(self) -> list[str]:
        if self.memprobe_dir is None:
            return super().command()
        return ["env", f"PYTHONPATH={MEMPROBE}", "PYTHONTRACEMALLOC=12",
                f"BENCH_MEMPROBE_DIR={self.memprobe_dir}", *super().command()]

    def __init__(self, workdir: Path) -> None:
        from harness.runner import CHEAP_HASHING  # runner imports scenarios; import lazily

        super().__init__(workdir, free_port(), resolve_parley_cmd(REPO_DIR, None), REPO_DIR,
                         hashing=CHEAP_HASHING)
        self.shared_secret = _secret(workdir)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "parley.db"

    def prepare(self) -> None:
        if not self.config_path.exists():
            super().prepare()
            return
        config = yaml.safe_load(self.config_path.read_text())
        for listener in config.get("listeners", []):
            listener["port"] = self.port
        config["public_baseurl"] = f"http://127.0.0.1:{self.port}/"
        self.patch(config)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def patch(self, config: dict[str, Any]) -> None:
        super().patch(config)
        config.setdefault("registration", {})["shared_secret"] = self.shared_secret
        config.setdefault("auth", {})["access_token_lifetime"] = "24h"
        config.setdefault("logging", {})["level"] = "WARNING"


def make_lead_server(key: str, workdir: Path) -> ManagedServer:
    return LeadSynapse(workdir) if key == "synapse" else LeadParley(workdir)


def db_size(db_path: Path, scratch: Path) -> dict[str, Any]:
    """Size of a stopped server's SQLite database: the files as left (db + WAL), then after a
    checkpoint and ``VACUUM INTO`` a copy (the live file is never rewritten), with the bytes
    per table (indexes counted with their table, from ``dbstat``) and the state tables'
    share and rows."""
    def files() -> int:
        return sum(p.stat().st_size for p in db_path.parent.glob(db_path.name + "*")
                   if p.is_file())

    as_left = files()
    copy = scratch / f"vacuumed-{secrets.token_hex(4)}.db"
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    checkpointed = files()
    conn = sqlite3.connect(db_path)
    try:
        conn.execute("VACUUM INTO ?", (str(copy),))
    finally:
        conn.close()
    try:
        vacuumed = copy.stat().st_size
        with sqlite3.connect(copy) as c:
            owner = dict(c.execute("SELECT name, tbl_name FROM sqlite_master "
                                   "WHERE type IN ('table', 'index')"))
            per_table: dict[str, int] = {}
            for name, size in c.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
                table = owner.get(name, name)
                per_table[table] = per_table.get(table, 0) + int(size)
            state = {t: s for t, s in per_table.items() if is_state_table(t)}
            rows = {t: c.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0]
                    for t in state if t in owner and owner[t] == t}
    finally:
        copy.unlink(missing_ok=True)
    top = sorted(per_table.items(), key=lambda kv: -kv[1])
    return {
        "bytes_as_left": as_left, "bytes_checkpointed": checkpointed,
        "bytes_vacuumed": vacuumed, "state_bytes": sum(state.values()),
        "room_bytes": sum(s for t, s in per_table.items() if t in state or "event" in t),
        "state_tables": {t: {"bytes": s, "rows": rows.get(t)}
                         for t, s in sorted(state.items(), key=lambda kv: -kv[1])},
        "top_tables": dict(top[:12]),
    }


def is_state_table(name: str) -> bool:
    return ("state" in name and not name.startswith("sqlite_")) or name in STATE_EXTRA


def heap_diff(before: Path, after: Path, per: int, top: int = 15) -> dict[str, Any]:
    """Where the heap grew between two tracemalloc snapshots: by line, by file and the
    biggest allocation tracebacks; bytes also per ``per`` units (e.g. long-polls)."""
    import tracemalloc

    a = tracemalloc.Snapshot.load(str(before))
    b = tracemalloc.Snapshot.load(str(after))

    def rows(key: str, n: int) -> list[dict[str, Any]]:
        out = []
        for st in b.compare_to(a, key)[:n]:
            frames = [f"{_short(f.filename)}:{f.lineno}" for f in st.traceback]
            out.append({"where": frames if key == "traceback" else frames[0],
                        "kib": round(st.size_diff / 1024, 1),
                        "bytes_per_unit": round(st.size_diff / max(per, 1)),
                        "blocks": st.count_diff})
        return out

    total = sum(s.size_diff for s in b.compare_to(a, "filename"))
    return {"total_kib": round(total / 1024, 1), "bytes_per_unit": round(total / max(per, 1)),
            "by_file": rows("filename", top), "by_line": rows("lineno", top),
            "by_traceback": rows("traceback", 8)}


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path

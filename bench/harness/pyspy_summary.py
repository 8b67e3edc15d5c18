"""py-spy on one server process for the length of one measured operation, and a short
text summary of where its samples went (bench/large_room_join.py --profile-parley).

py-spy runs with ``--nonblocking`` (the target is never paused, so the timing it sees
is barely disturbed) and ``--format raw`` (collapsed stacks: ``frame;frame;... count``,
each frame ``function (path:line)``). The summary has two lists: inclusive share per
function of the checkout (where the join spends its time, callees included), and the
leaf functions anywhere (what actually burns the CPU: signature checks, JSON, SQLite).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>[^()]*?)(?::\d+)?\)$")
REPO_DIR = Path(__file__).resolve().parents[2]
# py-spy names a file relative to the sys.path entry it was imported from.
_OURS = tuple(f"{d}/" for d in ("federation", "homeserver", "storage", "plugins"))
_ENTRY = ("homeserver/__main__.py", "homeserver/cli.py")  # the whole process: noise


class PySpy:
    def __init__(self, binary: str, pid: int | None, out: Path, rate: int = 200) -> None:
        self.binary = binary
        self.pid = pid
        self.out = out
        self.rate = rate
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.pid is None:
            return
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [self.binary, "record", "--pid", str(self.pid), "--rate", str(self.rate),
             "--nonblocking", "--format", "raw", "--threads", "-o", str(self.out)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)  # attached before the operation starts

    def interrupt(self) -> None:
        """Ask py-spy to stop sampling and write its output (without waiting for it)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def summary(self, top: int = 25) -> str:
        if not self.out.exists():
            return f"(no py-spy output at {self.out})"
        return summarise(self.out.read_text(errors="replace"), top) + f"\n(raw: {self.out})"


def _short(path: str) -> str:
    if path.startswith(str(REPO_DIR) + "/"):
        return path[len(str(REPO_DIR)) + 1:]
    if path.startswith(_OURS):
        return path
    marker = "site-packages/"
    return path.split(marker, 1)[1] if marker in path else os.path.basename(path)


def summarise(raw: str, top: int = 25) -> str:
    """Inclusive share per checkout function and self share per leaf function."""
    inclusive: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f for f in stack.split(";") if f]
        seen: set[str] = set()
        for i, frame in enumerate(frames):
            m = _FRAME.match(frame)
            func, path = (m.group("func"), m.group("path")) if m else (frame, "")
            name = f"{func} ({_short(path)})"
            if i == len(frames) - 1:
                leaves[name] += count
            if path.startswith(_OURS + tuple(f"{REPO_DIR}/{d}" for d in _OURS)) \
                    and name not in seen and not path.endswith(_ENTRY):
                seen.add(name)
                inclusive[name] += count
    if not total:
        return "(no samples)"
    lines = [f"{total} samples; inclusive, Parley's own functions:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    lines.append("self (leaf) functions, anywhere:")
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in leaves.most_common(top)]
    return "\n".join(lines)

"""Structured logging: one JSON object per line (or plain text), Twisted's logs included.

Log records carry identifiers only; callers never pass passwords, tokens or content.

Records are formatted and written by a thread of their own (:class:`BackgroundWriter`):
a server logs a line per request, and writing it from the reactor thread cost a system
call each, after which the reactor waited for the GIL again (~8 % of its time under a
send load). The caller only freezes the message (its arguments may change later) and
queues it; the writer writes whatever has gathered in one call. Lines reach the stream
in order and are flushed at exit (``logging.shutdown``).
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import time
from typing import IO, Any

from twisted.logger import STDLibLogObserver, globalLogBeginner

_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str)


# Below WARNING, records are dropped (and counted) while this many wait to be written:
# a stream that stops reading must not grow the queue without bound.
MAX_BACKLOG = 100_000
_FLUSH_WAIT_S = 5.0


class BackgroundWriter(logging.Handler):
    """Formats and writes records on its own thread (see the module docstring)."""

    def __init__(self, stream: IO[str], formatter: logging.Formatter) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self._stream = stream
        self._queue: queue.SimpleQueue[logging.LogRecord | threading.Event | None] = (
            queue.SimpleQueue())
        self._dropped = 0
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        # No handler lock: the queue is thread-safe, and the writer thread is the only
        # one touching the stream.
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.levelno < logging.WARNING and self._queue.qsize() >= MAX_BACKLOG:
                self._dropped += 1
                return
            # Freeze what may change or die with the caller's frame: the arguments
            # (mutable objects) and the traceback.
            if record.exc_info and not record.exc_text:
                record.exc_text = (self.formatter or logging.Formatter()).formatException(
                    record.exc_info)
            record.msg = record.getMessage()
            record.args = None
            record.exc_info = None
            self._queue.put(record)
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        """Wait (a bounded while) until everything queued so far is written."""
        if not self._thread.is_alive() or threading.current_thread() is self._thread:
            return
        done = threading.Event()
        self._queue.put(done)
        done.wait(_FLUSH_WAIT_S)

    def close(self) -> None:
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._queue.put(None)
            self._thread.join(_FLUSH_WAIT_S)
        super().close()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            try:
                while len(batch) < 1000:
                    batch.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            lines: list[str] = []
            if self._dropped:
                dropped, self._dropped = self._dropped, 0
                lines.append(self._dropped_line(dropped))
            waiters: list[threading.Event] = []
            stop = False
            for item in batch:
                if item is None:
                    stop = True
                elif isinstance(item, threading.Event):
                    waiters.append(item)
                else:
                    try:
                        lines.append(self.format(item))
                    except Exception:
                        self.handleError(item)
            if lines:
                try:
                    self._stream.write("\n".join(lines) + "\n")
                    self._stream.flush()
                except Exception:  # a closed or broken stream: nothing to tell it
                    pass
            for waiter in waiters:
                waiter.set()
            if stop:
                return

    def _dropped_line(self, dropped: int) -> str:
        record = logging.LogRecord(__name__, logging.WARNING, __file__, 0,
                                   "%d log lines dropped: the log stream is not keeping up",
                                   (dropped,), None)
        return self.format(record)


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    formatter = (JsonFormatter() if fmt == "json"
                 else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in root.handlers:
        if isinstance(old, BackgroundWriter):
            old.close()  # set up twice (a command that runs the server): one writer
    handler = BackgroundWriter(sys.stderr, formatter)
    root.handlers[:] = [handler]
    root.setLevel(level)
    globalLogBeginner.beginLoggingTo([STDLibLogObserver()], redirectStandardIO=False)

"""The background log writer: lines in order, arguments frozen at the call, tracebacks
kept, everything written by flush/close, and a bounded backlog."""

from __future__ import annotations

import io
import json
import logging
import threading

from twisted.trial import unittest

from homeserver import logging_setup
from homeserver.logging_setup import BackgroundWriter, JsonFormatter


class BackgroundWriterTest(unittest.TestCase):
    def setUp(self) -> None:
        self.stream = io.StringIO()
        self.handler = BackgroundWriter(self.stream, JsonFormatter())
        self.addCleanup(self.handler.close)
        self.logger = logging.getLogger("test.background_writer")
        self.logger.propagate = False
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self.handler)
        self.addCleanup(self.logger.removeHandler, self.handler)

    def lines(self) -> list[dict[str, object]]:
        self.handler.flush()
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def test_order_fields_and_frozen_arguments(self) -> None:
        items = ["a"]
        self.logger.info("got %s", items, extra={"route": "/x", "status": 200})
        items.append("b")  # changed after the call: the line says what was true then
        for i in range(50):
            self.logger.info("n %d", i)
        out = self.lines()
        self.assertEqual(out[0]["msg"], "got ['a']")
        self.assertEqual((out[0]["route"], out[0]["status"], out[0]["level"]), ("/x", 200, "INFO"))
        self.assertEqual([o["msg"] for o in out[1:]], [f"n {i}" for i in range(50)])

    def test_traceback_kept(self) -> None:
        try:
            raise ValueError("boom")
        except ValueError:
            self.logger.exception("failed %s", "here")
        (line,) = self.lines()
        self.assertEqual(line["msg"], "failed here")
        self.assertIn("ValueError: boom", str(line["exc"]))

    def test_close_writes_everything_queued(self) -> None:
        for i in range(200):
            self.logger.info("x %d", i)
        self.handler.close()
        self.assertEqual(len(self.stream.getvalue().splitlines()), 200)

    def test_backlog_bounded_below_warning(self) -> None:
        self.patch(logging_setup, "MAX_BACKLOG", 3)
        blocked = threading.Event()
        release = threading.Event()
        real_write = self.stream.write

        def slow_write(text: str) -> int:
            blocked.set()
            release.wait(5)
            return real_write(text)

        self.stream.write = slow_write  # type: ignore[method-assign]
        self.logger.info("first")
        self.assertTrue(blocked.wait(5))  # the writer is stuck in the stream
        for i in range(10):
            self.logger.info("info %d", i)
        self.logger.warning("kept")
        release.set()
        msgs = [o["msg"] for o in self.lines()]
        self.assertIn("kept", msgs)
        self.assertIn("info 2", msgs)
        self.assertNotIn("info 9", msgs)
        self.assertTrue(any("log lines dropped" in str(m) for m in msgs), msgs)

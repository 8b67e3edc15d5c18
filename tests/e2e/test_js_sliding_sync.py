"""End to end: matrix-js-sdk's SlidingSync client (MSC4186) against ``parley run``.

The scenario is tests/e2e/js/sliding_sync.mjs (node): bob, on sliding sync with the
Rust crypto, lists two invites, joins, opens a room, receives a message live and reads
alice's encrypted message. Needs node and ``npm install`` in tests/e2e/js (done here
once if node_modules is missing); skipped with the reason if either is unavailable.
matrix-js-sdk is pinned to 37.5: later releases need Node 22 (``Promise.withResolvers``
in their sliding sync extensions) and this machine has Node 20.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from twisted.internet import threads
from twisted.trial import unittest

from tests.e2e.test_nio_rooms import RoomsServerProcess

JS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "js")
SCENARIO_TIMEOUT_S = 120
NPM_TIMEOUT_S = 300


def ensure_js_sdk() -> None:
    """node_modules in tests/e2e/js, installed now if missing; SkipTest if impossible."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise unittest.SkipTest("node/npm not installed: matrix-js-sdk e2e test skipped")
    if os.path.isdir(os.path.join(JS_DIR, "node_modules", "matrix-js-sdk")):
        return
    try:
        proc = subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=JS_DIR,
                              capture_output=True, timeout=NPM_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as e:
        raise unittest.SkipTest("npm install of matrix-js-sdk timed out") from e
    if proc.returncode != 0:
        raise unittest.SkipTest("npm install of matrix-js-sdk failed: "
                                + proc.stderr.decode(errors="replace")[-500:])


class JsSlidingSyncTest(unittest.TestCase):
    timeout = SCENARIO_TIMEOUT_S + NPM_TIMEOUT_S + 60

    async def test_js_sdk_sliding_sync_scenario(self) -> None:
        await threads.deferToThread(ensure_js_sdk)
        server = RoomsServerProcess()
        self.addCleanup(server.stop)
        await threads.deferToThread(server.start)
        proc = await threads.deferToThread(
            subprocess.run, ["node", "sliding_sync.mjs", server.base_url], cwd=JS_DIR,
            capture_output=True, timeout=SCENARIO_TIMEOUT_S, check=False)
        out = proc.stdout.decode(errors="replace")
        steps = {}
        for line in out.splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                steps[record["step"]] = record
        detail = f"{out[-3000:]}\n{proc.stderr.decode(errors='replace')[-2000:]}\n" \
                 f"server log:\n{server.log_tail()}"
        self.assertEqual(proc.returncode, 0, detail)
        self.assertEqual(steps["listed"]["count"], 2, detail)
        self.assertEqual(steps["listed"]["names"], ["Plain", "Secret"], detail)
        self.assertIn("hello bob", steps["live"]["bodies"], detail)
        self.assertEqual(steps["decrypted"]["body"], "top secret", detail)
        self.assertIn("done", steps, detail)

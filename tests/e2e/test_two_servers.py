"""Two ``parley run`` processes federating over TLS on loopback (issue 16, "Two Parley
servers in one test").

Each server has a plain-HTTP client listener and a TLS federation listener with a
certificate from a throwaway CA (tests/interop/certs.py); both trust only that CA for
outbound federation and are named ``127.0.0.1:<federation port>`` (IP literal with a
port: no DNS). What crosses between them is real: X-Matrix-signed requests, key
fetches with TLS verification, the outbound queue and its backoff.

The scenarios live in tests/interop/scenarios.py and run against Synapse too (``make
interop``). The room scenarios (join, messages both ways, invite, leave, catch-up of
a room, an encrypted conversation between nio clients) take about 90 s per engine:
`make interop` runs them (``PARLEY_TEST_FEDERATION_JOINS=1`` anywhere), and `make test`
skips them with that reason (joins between two servers in one process are in
tests/rest/test_federation_membership.py).
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from signedjson.key import generate_signing_key
from signedjson.sign import sign_json
from twisted.internet import threads
from twisted.trial import unittest
from unpaddedbase64 import encode_base64

from tests.interop import e2ee, scenarios
from tests.interop.certs import IssuedCert, TestCa
from tests.interop.rig import FederatedParley

#: Every scenario runs on a worker thread (the reactor stays free) with this deadline.
SCENARIO_TIMEOUT_S = 150.0
_ROOMS_SKIP = None if scenarios.joins_available() else scenarios.JOINS_MISSING


class _KeyServer:
    """A stand-in homeserver that serves only ``/_matrix/key/v2/server`` over TLS with
    a given certificate, on its own thread; counts the key requests it answered."""

    def __init__(self, cert: IssuedCert) -> None:
        self.signing_key = generate_signing_key("rogue")
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                if not self.path.startswith("/_matrix/key/v2/server"):
                    self.send_error(404)
                    return
                outer.requests += 1
                body = json.dumps(outer.key_response()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert.certificate_path, cert.private_key_path)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.httpd.handle_error = lambda *a: None  # type: ignore[method-assign]
        self.port = int(self.httpd.server_address[1])
        self.server_name = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def key_response(self) -> dict[str, Any]:
        return sign_json({
            "server_name": self.server_name,
            "valid_until_ts": int(time.time() * 1000) + 24 * 3600 * 1000,
            "old_verify_keys": {},
            "verify_keys": {"ed25519:rogue": {
                "key": encode_base64(self.signing_key.verify_key.encode())}},
        }, self.server_name, self.signing_key)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class TwoParleyServersTest(unittest.TestCase):
    timeout = 300

    def setUp(self) -> None:
        self.ca_dir = tempfile.mkdtemp(prefix="parley-test-ca-")
        self.ca = TestCa(self.ca_dir)
        self.servers: list[FederatedParley] = []

    def tearDown(self) -> None:
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.ca_dir, ignore_errors=True)

    def start_server(self, label: str) -> FederatedParley:
        server = FederatedParley(self.ca, label)
        self.servers.append(server)
        server.start()
        return server

    def pair(self) -> tuple[FederatedParley, FederatedParley]:
        return self.start_server("parley1"), self.start_server("parley2")

    async def run_scenario(self, scenario: Callable[..., None], *args: Any) -> None:
        """Run a blocking scenario on a thread; on failure attach both servers' logs."""
        d = threads.deferToThread(scenario, *args)
        from twisted.internet import reactor

        d.addTimeout(SCENARIO_TIMEOUT_S, reactor)
        try:
            await d
        except Exception as e:
            logs = "\n".join(f"--- {s.server_name} log (tail) ---\n{s.log_tail()}"
                             for s in self.servers)
            raise self.failureException(f"{type(e).__name__}: {e}\n{logs}") from e

    # -- tests ---------------------------------------------------------------------------

    async def test_keys_profiles_e2e_keys_and_to_device(self) -> None:
        """Key fetch (each server as notary for the other), profiles both ways, device
        keys queried and one-time keys claimed both ways, to-device both ways."""
        a, b = self.pair()
        ca = self.ca.ca_path
        await self.run_scenario(scenarios.key_fetch_through_notary, a, b, ca)
        await self.run_scenario(scenarios.key_fetch_through_notary, b, a, ca)
        await self.run_scenario(scenarios.profiles_across, a, b)
        await self.run_scenario(scenarios.e2e_keys_across, a, b)
        await self.run_scenario(scenarios.e2e_keys_across, b, a)
        await self.run_scenario(scenarios.to_device_across, a, b)

    async def test_tls_is_verified(self) -> None:
        """The notary fetches keys from a server whose certificate comes from the test
        CA and names 127.0.0.1, and from no other: not with a certificate from another
        CA, not with one of the test CA for another name."""
        a = self.start_server("parley1")
        ca = self.ca.ca_path
        rogue_ca = TestCa(os.path.join(self.ca_dir, "rogue"), "Some other CA")
        cases = {
            "trusted": (self.ca.issue("good"), True),
            "other CA": (rogue_ca.issue("rogue"), False),
            "wrong name": (self.ca.issue("wrongname", dns_names=("synapse.test",), ips=()),
                           False),
        }
        for label, (cert, accepted) in cases.items():
            server = _KeyServer(cert)
            self.addCleanup(server.stop)

            def check(server: _KeyServer = server, accepted: bool = accepted,
                      label: str = label) -> None:
                found = scenarios.notary_query(a, server.server_name, ca, ["ed25519:rogue"])
                if accepted:
                    assert found and found[0]["verify_keys"]["ed25519:rogue"]["key"] == \
                        encode_base64(server.signing_key.verify_key.encode()), (label, found)
                    assert server.requests >= 1, label
                else:
                    assert found == [], (label, found)
                    assert server.requests == 0, f"{label}: a request got through TLS"

            await self.run_scenario(check)

    async def test_server_down_and_back_catches_up(self) -> None:
        """A to-device message for a server that is down waits in the sender's queue
        and arrives once the server is back (and has sent the other one something)."""
        a, b = self.pair()
        await self.run_scenario(scenarios.to_device_catch_up, a, b)

    async def test_rooms_across_servers(self) -> None:
        """Join by room id with a server_name hint, messages both ways through /sync,
        an invite accepted, a leave; each server as the room's host in turn."""
        a, b = self.pair()
        await self.run_scenario(scenarios.room_across, a, b)
        await self.run_scenario(scenarios.room_across, b, a)

    async def test_room_catch_up_after_downtime(self) -> None:
        a, b = self.pair()
        await self.run_scenario(scenarios.room_catch_up, a, b)

    async def test_encrypted_conversation(self) -> None:
        """A nio client on each server, megolm keys shared over federated key queries,
        claims and to-device messages; each server as the room's host in turn."""
        a, b = self.pair()
        await self.run_scenario(e2ee.encrypted_conversation, a, b)
        await self.run_scenario(e2ee.encrypted_conversation, b, a)

    # Skipped before setUp starts any server (trial reads a method's ``skip``;
    # never set it to None: that would override the class's own skip).
    if _ROOMS_SKIP:
        test_rooms_across_servers.skip = _ROOMS_SKIP  # type: ignore[attr-defined]
        test_room_catch_up_after_downtime.skip = _ROOMS_SKIP  # type: ignore[attr-defined]
        test_encrypted_conversation.skip = _ROOMS_SKIP  # type: ignore[attr-defined]

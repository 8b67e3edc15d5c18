"""Event persisters federating, with real processes (issue 18): a Parley deployment
(main + two event persisters, PostgreSQL + Redis; federation over TLS on main) and a
second Parley in one process, on loopback, both named ``127.0.0.1:<federation port>``
and trusting only a throwaway CA (as tests/e2e/test_two_servers.py).

- Rooms of the deployment on both persisters: a user of the other server joins each
  (make_join/send_join reach main, which hands the join to the room's writer).
- Rooms of the other server whose ids hash to each persister: a user of the deployment
  joins each (the request is routed to the writer, which has main run the join).
- Messages both ways in all four rooms, sent concurrently; every message reaches the
  ``/sync`` chain of the user on the other side exactly once (none lost, none twice)
  and each room's ``/messages`` lists each message once on both servers.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import urllib.parse
from collections import Counter
from typing import Any

import yaml
from twisted.trial import unittest

from homeserver.replication.multi_writer import writer_for_room
from tests.e2e.server_process import free_port
from tests.e2e.test_workers_ops import (
    V3,
    WRITERS,
    Http,
    MainProcess,
    SyncChain,
    WorkerProcess,
    event_persister,
    ports,
    requires_deployment,
    run_scenario,
)
from tests.interop.certs import TestCa
from tests.interop.rig import FederatedParley

MESSAGES = 6  # per room and direction
DEADLINE_S = 60.0


class FederatedDeployment(MainProcess):
    """The deployment's main process: client API on plain HTTP, federation over TLS,
    the replication listener, named ``127.0.0.1:<federation_port>``."""

    def __init__(self, ca: TestCa, workers: dict[str, Any], main_rep_port: int) -> None:
        self.federation_port = free_port()
        super().__init__(workers, main_rep_port=main_rep_port,
                         extra={"stream_writers": {"events": WRITERS}})
        self.server_name = f"127.0.0.1:{self.federation_port}"
        self.ca = ca
        self.cert = ca.issue("deployment")

    def _patch_config(self) -> None:
        super()._patch_config()
        assert self.config_path is not None
        with open(self.config_path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
        config["listeners"] = [
            {"port": self.port, "bind_addresses": ["127.0.0.1"], "resources": ["client"]},
            {"port": self.federation_port, "bind_addresses": ["127.0.0.1"],
             "resources": ["federation"],
             "tls": {"certificate_path": self.cert.certificate_path,
                     "private_key_path": self.cert.private_key_path}},
            {"port": self.main_rep_port, "bind_addresses": ["127.0.0.1"],
             "resources": ["replication"]},
        ]
        config["federation"] = {"enabled": True, "tls_ca_file": self.ca.ca_path,
                                "ip_range_allowlist": ["127.0.0.0/8"],
                                "request_timeout": "10s"}
        with open(self.config_path, "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f, sort_keys=False)


def q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def deploy(test: unittest.TestCase, ca: TestCa
           ) -> tuple[FederatedDeployment, list[WorkerProcess], FederatedParley]:
    """Main + persisters p1 and p2, and the other server, all started (stopped at the
    test's cleanup); shared with tests/e2e/test_workers_federation_kill.py."""
    main_rep, p1_port, p1_rep, p2_port, p2_rep = ports(5)
    main = FederatedDeployment(ca, {"p1": event_persister(p1_port, p1_rep),
                                    "p2": event_persister(p2_port, p2_rep)}, main_rep)
    test.addCleanup(main.stop)
    main.start()
    workers = [WorkerProcess(main, "p1", p1_port), WorkerProcess(main, "p2", p2_port)]
    for w in workers:
        test.addCleanup(w.stop)
        w.start()
    other = FederatedParley(ca, "other")
    test.addCleanup(other.stop)
    other.start()
    return main, workers, other


class PersistersFederateTest(unittest.TestCase):
    timeout = 360

    def setUp(self) -> None:
        requires_deployment()
        self.ca_dir = tempfile.mkdtemp(prefix="parley-test-ca-")
        self.addCleanup(shutil.rmtree, self.ca_dir, True)
        self.ca = TestCa(self.ca_dir)

    def _deploy(self) -> tuple[FederatedDeployment, list[WorkerProcess], FederatedParley]:
        return deploy(self, self.ca)

    async def test_rooms_on_both_persisters_federate_both_ways(self) -> None:
        main, workers, other = self._deploy()
        procs: list[Any] = [main, *workers, other]
        here, there = main.base_url, other.base_url

        async def scenario(http: Http) -> None:
            alice = await http.register(here, "alice")
            bob = await http.register(there, "bob")
            a_tok, b_tok = alice["access_token"], bob["access_token"]

            async def ok(base: str, method: str, path: str, body: Any = None,
                         token: str | None = None) -> Any:
                status, answer = await http(base, method, path, body, token=token)
                self.assertEqual(status, 200, (method, path, answer))
                return answer

            async def room_per_writer(base: str, token: str) -> dict[str, str]:
                out: dict[str, str] = {}
                for _ in range(40):
                    room = await ok(base, "POST", f"{V3}/createRoom",
                                    {"preset": "public_chat"}, token)
                    out.setdefault(writer_for_room(room["room_id"], WRITERS), room["room_id"])
                    if len(out) == len(WRITERS):
                        return out
                self.fail("no room for each writer")

            async def until_member(base: str, token: str, room_id: str, user: str) -> None:
                deadline = time.monotonic() + DEADLINE_S
                while time.monotonic() < deadline:
                    status, got = await http(base, "GET", f"{V3}/rooms/{q(room_id)}/members",
                                             token=token)
                    if status == 200 and any(e["state_key"] == user and
                                             e["content"].get("membership") == "join"
                                             for e in got["chunk"]):
                        return
                    await asyncio.sleep(0.2)
                self.fail(f"{user} never joined {room_id} as seen from {base}")

            # Deployment's rooms (one per persister): bob joins through main.
            ours = await room_per_writer(here, a_tok)
            for room_id in ours.values():
                await ok(there, "POST", f"{V3}/join/{q(room_id)}?server_name="
                         f"{q(main.server_name)}", {}, b_tok)
                await until_member(here, a_tok, room_id, bob["user_id"])
            # The other server's rooms whose ids hash to each persister: alice joins.
            theirs = await room_per_writer(there, b_tok)
            for room_id in theirs.values():
                await ok(here, "POST", f"{V3}/join/{q(room_id)}?server_name="
                         f"{q(other.server_name)}", {}, a_tok)
                await until_member(there, b_tok, room_id, alice["user_id"])
            rooms = [*ours.values(), *theirs.values()]

            # /sync chains on both sides, from now on.
            chains = {}
            for who, base, token in (("alice", here, a_tok), ("bob", there, b_tok)):
                first = await ok(base, "GET", f"{V3}/sync?timeout=0", token=token)
                chain = SyncChain(http, base, token)
                chains[who] = (chain, asyncio.ensure_future(chain.run(first["next_batch"])))

            async def send(base: str, token: str, room_id: str, text: str) -> str:
                answer = await ok(base, "PUT", f"{V3}/rooms/{q(room_id)}/send/m.room.message/"
                                  f"{q(text)}", {"msgtype": "m.text", "body": text}, token)
                return str(answer["event_id"])

            sends = [send(here, a_tok, r, f"a{i}-{n}") for i, r in enumerate(rooms)
                     for n in range(MESSAGES)]
            sends += [send(there, b_tok, r, f"b{i}-{n}") for i, r in enumerate(rooms)
                      for n in range(MESSAGES)]
            ids = await asyncio.gather(*sends)
            from_alice = set(ids[:len(ids) // 2])
            from_bob = set(ids[len(ids) // 2:])
            self.assertEqual(len(from_alice) + len(from_bob), 4 * 2 * MESSAGES)

            # Each side's /sync chain delivers the other side's messages, each once.
            deadline = time.monotonic() + DEADLINE_S
            while time.monotonic() < deadline and not (
                    from_bob <= set(chains["alice"][0].delivered())
                    and from_alice <= set(chains["bob"][0].delivered())):
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # a late duplicate would arrive meanwhile
            for chain, task in chains.values():
                chain.stopping = True
                await task
            for who, expected in (("alice", from_bob), ("bob", from_alice)):
                delivered = chains[who][0].delivered()
                self.assertEqual(expected - set(delivered), set(), f"{who} missed events")
                self.assertEqual(max(delivered[e] for e in expected), 1,
                                 f"{who} got an event twice")

            # /messages on both servers: every message of each room, once.
            for base, token in ((here, a_tok), (there, b_tok)):
                seen: Counter[str] = Counter()
                for room_id in rooms:
                    page = await ok(base, "GET", f"{V3}/rooms/{q(room_id)}/messages?dir=b"
                                    "&limit=1000", token=token)
                    seen.update(e["event_id"] for e in page["chunk"]
                                if e["type"] == "m.room.message")
                self.assertEqual(set(seen), from_alice | from_bob, base)
                self.assertEqual(max(seen.values()), 1, base)

        await run_scenario(self, procs, scenario, 300)
        for p in procs:
            self.assertNotIn("Traceback", p.log_tail(1 << 20),
                             f"{getattr(p, 'name', 'main')}:\n{p.log_tail()}")

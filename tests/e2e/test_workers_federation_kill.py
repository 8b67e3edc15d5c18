"""kill -9 an event persister in the middle of federation traffic (issue 18), with real
processes: the deployment of tests/e2e/test_workers_federation.py (main + event
persisters p1 and p2 on PostgreSQL + Redis, federation over TLS on main) and a second,
single-process Parley.

A room written by p1 holds a user of each server. Both users send a burst into it at
once: the other server's user through their own server (main hands those PDUs to p1,
or, while it cannot, tries again for up to 10 s and then answers the transaction 503,
and the other server retries), the
deployment's user through main (p1 persists them and queues their PDUs in the durable
federation queue, which main sends). p1 is killed with SIGKILL mid-burst, where it
hurts most: the test holds a lock on the PDU queue table so that p1 has stored some of
the deployment's events without queueing them (only p1's replay from its checkpoint
can send those; meanwhile the events of another room of p1 go on, so p1's checkpoint
must not pass the ones it could not queue), and the second half of the other user's
burst is sent while p1 is down. p1 is restarted a moment later; the deployment's sends
cut off are retried with their transaction ids.

Then every message of both users is, on both servers, in ``/messages`` exactly once
and in a user's ``/sync`` chain exactly once; every PDU of the deployment's user
reached the other server in exactly one accepted ``/send`` transaction (the gap
filling by /get_missing_events would hide a PDU p1's queue lost from the first two
checks, not from this one); nothing is left queued for it; and p1's checkpoint moved
past the burst.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from twisted.trial import unittest

from federation.sender import CHECKPOINT_INTERVAL_S
from homeserver.replication.multi_writer import writer_for_room
from tests.e2e.test_workers_federation import deploy, q
from tests.e2e.test_workers_ops import (
    V3,
    WRITERS,
    Http,
    SyncChain,
    db_query,
    pg_connect,
    requires_deployment,
    run_scenario,
)
from tests.interop.certs import TestCa

N = 40  # messages per user
CONCURRENCY = 4  # sends in flight per user
KILL_AFTER = 12  # sends of each user answered 200 before p1 is killed
DOWN_S = 2.0  # how long p1 stays down
DEADLINE_S = 120.0  # generous: the other server backs off after a 503


class PersisterKilledDuringFederationTest(unittest.TestCase):
    timeout = 480

    def setUp(self) -> None:
        requires_deployment()
        self.ca_dir = tempfile.mkdtemp(prefix="parley-test-ca-")
        self.addCleanup(shutil.rmtree, self.ca_dir, True)
        self.ca = TestCa(self.ca_dir)

    async def test_kill_9_persister_mid_federation_burst(self) -> None:
        main, workers, other = deploy(self, self.ca)
        p1 = workers[0]
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

            async def until(what: str | Callable[[], str], done: Callable[[], Awaitable[bool]],
                            timeout: float = DEADLINE_S) -> None:
                deadline = time.monotonic() + timeout
                while not await done():
                    if time.monotonic() > deadline:
                        self.fail(f"{what if isinstance(what, str) else what()}"
                                  f" (after {timeout:.0f} s)")
                    await asyncio.sleep(0.25)

            # A room of the deployment written by p1; bob joins it through main.
            room_id = ""
            for _ in range(40):
                room_id = (await ok(here, "POST", f"{V3}/createRoom",
                                    {"preset": "public_chat"}, a_tok))["room_id"]
                if writer_for_room(room_id, WRITERS) == "p1":
                    break
            self.assertEqual(writer_for_room(room_id, WRITERS), "p1", "no room on p1")
            quiet = ""  # another room of p1, local users only: its events need no queue
            for _ in range(40):
                quiet = (await ok(here, "POST", f"{V3}/createRoom", {}, a_tok))["room_id"]
                if writer_for_room(quiet, WRITERS) == "p1":
                    break
            self.assertEqual(writer_for_room(quiet, WRITERS), "p1", "no second room on p1")
            await ok(there, "POST", f"{V3}/join/{q(room_id)}?server_name="
                     f"{q(main.server_name)}", {}, b_tok)

            async def bob_joined() -> bool:
                status, got = await http(here, "GET", f"{V3}/rooms/{q(room_id)}/members",
                                         token=a_tok)
                return status == 200 and any(
                    e["state_key"] == bob["user_id"]
                    and e["content"].get("membership") == "join" for e in got["chunk"])
            await until("bob's join never reached the deployment", bob_joined, 60)

            chains: dict[str, tuple[SyncChain, asyncio.Future[None]]] = {}
            for who, base, token in (("alice", here, a_tok), ("bob", there, b_tok)):
                first = await ok(base, "GET", f"{V3}/sync?timeout=0", token=token)
                chain = SyncChain(http, base, token)
                chains[who] = (chain, asyncio.ensure_future(chain.run(first["next_batch"])))

            # The burst, both ways at once; a send cut off by the crash is retried with
            # its transaction id until answered (one event per send, whatever was cut).
            ids: dict[str, dict[int, str]] = {"a": {}, "b": {}}
            failed_first: dict[str, set[int]] = {"a": set(), "b": set()}
            enough = asyncio.Event()
            killed = asyncio.Event()  # bob's second half is sent while p1 is down

            async def send(who: str, base: str, token: str, n: int) -> None:
                path = f"{V3}/rooms/{q(room_id)}/send/m.room.message/{who}{n}"
                deadline = time.monotonic() + DEADLINE_S
                while True:
                    try:
                        status, body = await http(base, "PUT", path, {
                            "msgtype": "m.text", "body": f"{who}{n}"}, token=token)
                    except (TimeoutError, aiohttp.ClientError) as e:
                        status, body = 0, repr(e)
                    if status == 200:
                        break
                    failed_first[who].add(n)
                    if time.monotonic() > deadline:
                        self.fail(f"send {who}{n} never succeeded: {status} {body}")
                    await asyncio.sleep(0.2)
                ids[who][n] = body["event_id"]
                if min(len(ids["a"]), len(ids["b"])) >= KILL_AFTER:
                    enough.set()

            async def burst(who: str, base: str, token: str) -> None:
                gate = asyncio.Semaphore(CONCURRENCY)

                async def one(n: int) -> None:
                    if who == "b" and n >= N // 2:
                        await killed.wait()
                    async with gate:
                        await send(who, base, token, n)
                await asyncio.gather(*(one(n) for n in range(N)))

            sending = asyncio.ensure_future(asyncio.gather(
                burst("a", here, a_tok), burst("b", there, b_tok)))
            await asyncio.wait([sending, asyncio.ensure_future(enough.wait())],
                               return_when=asyncio.FIRST_COMPLETED)
            self.assertTrue(enough.is_set(), "the burst ended before the kill")

            # The kill lands where only the replay can save alice's PDUs: with the PDU
            # queue locked, p1 stores her events but cannot queue them.
            def unqueued_sql() -> tuple[str, str, str, str, str]:
                return ("SELECT event_id FROM events WHERE room_id = %s AND sender = %s"
                        " AND type = 'm.room.message' AND stream_ordering > COALESCE(("
                        "SELECT stream_ordering FROM federation_destination_rooms WHERE"
                        " destination = %s AND room_id = %s), 0)", room_id,
                        alice["user_id"], other.server_name, room_id)
            unqueued: set[str] = set()

            async def stored_not_queued() -> bool:
                unqueued.clear()
                unqueued.update(r[0] for r in await asyncio.to_thread(
                    db_query, main, *unqueued_sql()))
                return len(unqueued) >= 2
            lock = await asyncio.to_thread(pg_connect, main)
            try:
                await asyncio.to_thread(
                    lock.cursor().execute, "LOCK TABLE federation_pdu_queue IN SHARE MODE")
                await until("p1 stored none of alice's events with the queue locked",
                            stored_not_queued, 30)
                # The stall outlasts two checkpoints while p1's other room goes on:
                # p1's checkpoint must not pass the events it could not queue.
                stall_until = time.monotonic() + 2 * CHECKPOINT_INTERVAL_S + 1
                n = 0
                while time.monotonic() < stall_until:
                    await ok(here, "PUT", f"{V3}/rooms/{q(quiet)}/send/m.room.message/q{n}",
                             {"msgtype": "m.text", "body": "meanwhile"}, a_tok)
                    n += 1
                    await asyncio.sleep(0.2)
                at_kill = {who: len(got) for who, got in ids.items()}
                await asyncio.to_thread(p1.kill)
                killed.set()
                await stored_not_queued()  # what the crash left unqueued
            finally:
                await asyncio.to_thread(lock.close)  # rolls back: the lock is released
            await asyncio.sleep(DOWN_S)
            await asyncio.to_thread(p1.start)
            await sending
            self.assertTrue(at_kill["a"] < N and at_kill["b"] < N,
                            f"the kill came after a whole burst: {at_kill}")
            self.assertTrue(failed_first["a"], "no send through main was cut by the kill")
            from_alice, from_bob = set(ids["a"].values()), set(ids["b"].values())
            self.assertEqual((len(from_alice), len(from_bob)), (N, N))
            everything = from_alice | from_bob

            # Each user's /sync chain: every message of both users, each once.
            async def synced() -> bool:
                return all(everything <= set(c.delivered()) for c, _ in chains.values())

            def missing() -> str:
                return "/sync chains miss messages: " + ", ".join(
                    f"{who} {len(everything - set(c.delivered()))} of {len(everything)}"
                    f" ({len(c.errors)} failed syncs)" for who, (c, _) in chains.items())
            try:
                await until(missing, synced)
            finally:
                await asyncio.sleep(1.0)  # a late duplicate would arrive meanwhile
                for chain, task in chains.values():
                    chain.stopping = True
                    await task
            for who, (chain, _) in chains.items():
                delivered = chain.delivered()
                self.assertEqual(everything - set(delivered), set(), f"{who} missed events")
                twice = {e: n for e, n in delivered.items() if e in everything and n > 1}
                self.assertEqual(twice, {}, f"{who}'s /sync chain repeated events")

            # /messages on both servers: every message once.
            async def messages(base: str, token: str) -> Counter[str]:
                body = await ok(base, "GET", f"{V3}/rooms/{q(room_id)}/messages?dir=b"
                                "&limit=1000", token=token)
                return Counter(e["event_id"] for e in body["chunk"]
                               if e["type"] == "m.room.message")
            for base, token in ((here, a_tok), (there, b_tok)):
                async def listed(base: str = base, token: str = token) -> bool:
                    return set(await messages(base, token)) == everything
                await until(f"/messages on {base} is not every message", listed)
                seen = await messages(base, token)
                self.assertEqual(max(seen.values()), 1, f"/messages on {base} repeats")

            # p1's outbound queue: each of alice's PDUs was accepted by the other server
            # in exactly one /send transaction from the deployment; nothing is left.
            async def drained() -> bool:
                rows = await asyncio.to_thread(
                    db_query, main, "SELECT (SELECT COUNT(*) FROM federation_pdu_queue"
                    " WHERE destination = %s) + (SELECT COUNT(*) FROM"
                    " federation_outbound_txns WHERE destination = %s)",
                    other.server_name, other.server_name)
                return int(rows[0][0]) == 0
            await until("PDUs left queued for the other server", drained, 60)
            rows = await asyncio.to_thread(
                db_query, other, "SELECT response FROM federation_inbound_txns"
                " WHERE origin = %s", main.server_name)
            sent: Counter[str] = Counter()
            for (response,) in rows:
                for event_id, result in json.loads(response)["pdus"].items():
                    if event_id in from_alice:
                        self.assertEqual(result, {}, event_id)
                        sent[event_id] += 1
            self.assertTrue(unqueued <= from_alice, "an unqueued event is no send's")
            self.assertEqual(from_alice - set(sent), set(),
                             f"alice's PDUs never sent in a transaction ({len(unqueued)}"
                             " stored but not queued when p1 was killed)")
            self.assertEqual({e: n for e, n in sent.items() if n > 1}, {},
                             "alice's PDUs sent in two transactions")

            # p1's checkpoint moved past the burst after the restart.
            last = max(int(r[0]) for r in await asyncio.to_thread(
                db_query, main, "SELECT stream_ordering FROM events WHERE event_id"
                " = ANY(%s)", list(from_alice)))

            async def checkpointed() -> bool:
                got = await asyncio.to_thread(
                    db_query, main, "SELECT stream_ordering FROM"
                    " federation_writer_positions WHERE instance = 'p1'")
                return bool(got) and int(got[0][0]) >= last
            await until("p1's federation checkpoint stayed behind", checkpointed, 30)
            # The other server's PDUs met the outage: main could not reach p1 and tried
            # again (and answered 503 if p1 took longer than the retry budget to return).
            self.assertIn("internal persist_remote to", main.log_tail(1 << 24),
                          "main never found p1 unreachable with the other server's PDUs")

        await run_scenario(self, procs, scenario, 420)
        for p in procs:  # p1's crash is no Traceback; nothing else failed on the way
            self.assertNotIn("Traceback", p.log_tail(1 << 20),
                             f"{getattr(p, 'name', 'main')}:\n{p.log_tail()}")

"""Parley and Synapse federating over TLS on loopback (issue 16, "Interop with
Synapse"); run by ``make interop`` (tests/interop/run.py), skipped elsewhere.

Synapse is the pinned PyPI release in bench/.venv-synapse on SQLite; Parley is this
checkout (``PARLEY_TEST_DB`` picks its engine). Both federation listeners use TLS
certificates of one throwaway CA, which is all either server trusts for outbound
federation (Parley ``federation.tls_ca_file``, Synapse ``federation_custom_ca_list``
with ``federation_verify_certificates``). The scenarios are the Parley↔Parley ones
(tests/interop/scenarios.py), each run in both directions.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.internet import threads
from twisted.trial import unittest

from tests.interop import e2ee, scenarios
from tests.interop.certs import TestCa
from tests.interop.rig import FederatedParley, SynapseProcess, synapse_python

#: Set by ``make interop``: these tests download nothing themselves, but they need the
#: Synapse virtualenv and take a while, so ``make test`` does not run them.
INTEROP_ENV = "PARLEY_INTEROP"
SCENARIO_TIMEOUT_S = 150.0


def _skip_reason() -> str | None:
    if os.environ.get(INTEROP_ENV) != "1":
        return f"Synapse interop runs with `make interop` ({INTEROP_ENV}=1)"
    if not os.path.exists(synapse_python()):
        return f"no Synapse at {synapse_python()} (bench/setup_synapse.sh installs it)"
    return None


_ROOMS_SKIP = None if scenarios.joins_available() else scenarios.JOINS_MISSING


class SynapseInteropTest(unittest.TestCase):
    timeout = 600
    skip = _skip_reason()

    def setUp(self) -> None:
        self.ca_dir = tempfile.mkdtemp(prefix="parley-interop-ca-")
        self.addCleanup(shutil.rmtree, self.ca_dir, True)
        self.ca = TestCa(self.ca_dir)
        self.synapse = SynapseProcess(self.ca)
        self.parley = FederatedParley(self.ca, "parley1")
        self.addCleanup(self.synapse.stop)
        self.addCleanup(self.parley.stop)
        self.synapse.start()
        self.parley.start()

    async def run_scenario(self, scenario: Callable[..., None], *args: Any) -> None:
        """Run a blocking scenario on a thread; on failure attach both servers' logs."""
        from twisted.internet import reactor

        d = threads.deferToThread(scenario, *args)
        d.addTimeout(SCENARIO_TIMEOUT_S, reactor)
        try:
            await d
        except Exception as e:
            raise self.failureException(
                f"{type(e).__name__}: {e}\n--- parley {self.parley.server_name} ---\n"
                f"{self.parley.log_tail()}\n--- synapse {self.synapse.server_name} ---\n"
                f"{self.synapse.log_tail()}") from e

    async def test_queries_both_ways(self) -> None:
        """Keys (each server as the other's notary), profiles, device keys and one-time
        key claims, and to-device messages, in both directions."""
        p, s, ca = self.parley, self.synapse, self.ca.ca_path
        await self.run_scenario(scenarios.key_fetch_through_notary, p, s, ca)
        await self.run_scenario(scenarios.key_fetch_through_notary, s, p, ca)
        await self.run_scenario(scenarios.profiles_across, p, s)
        await self.run_scenario(scenarios.profiles_across, s, p)
        await self.run_scenario(scenarios.e2e_keys_across, p, s)
        await self.run_scenario(scenarios.e2e_keys_across, s, p)
        await self.run_scenario(scenarios.to_device_across, p, s)

    async def test_synapse_catches_up_with_parley(self) -> None:
        """Parley is down while a Synapse user sends to a Parley user; once Parley is
        back and has sent Synapse a transaction, Synapse delivers what it queued."""
        await self.run_scenario(scenarios.to_device_catch_up, self.synapse, self.parley)

    async def test_rooms_both_ways(self) -> None:
        """A Synapse user joins a Parley room and a Parley user a Synapse room;
        messages both ways, an invite each way, a leave."""
        await self.run_scenario(scenarios.room_across, self.parley, self.synapse)
        await self.run_scenario(scenarios.room_across, self.synapse, self.parley)

    async def test_room_catch_up_after_parley_downtime(self) -> None:
        await self.run_scenario(scenarios.room_catch_up, self.synapse, self.parley)

    async def test_encrypted_conversation_both_ways(self) -> None:
        """A nio client on Parley and one on Synapse talk in an encrypted room, hosted
        by either server in turn."""
        await self.run_scenario(e2ee.encrypted_conversation, self.parley, self.synapse)
        await self.run_scenario(e2ee.encrypted_conversation, self.synapse, self.parley)

    # Skipped before setUp starts any server (trial reads a method's ``skip``;
    # never set it to None: that would override the class's own skip).
    if _ROOMS_SKIP:
        test_rooms_both_ways.skip = _ROOMS_SKIP  # type: ignore[attr-defined]
        test_room_catch_up_after_parley_downtime.skip = _ROOMS_SKIP  # type: ignore[attr-defined]
        test_encrypted_conversation_both_ways.skip = _ROOMS_SKIP  # type: ignore[attr-defined]

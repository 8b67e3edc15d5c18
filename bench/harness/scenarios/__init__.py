"""Scenario registry. Order matters: scenarios run in this order and share state."""

from __future__ import annotations

from harness.scenarios.base import BenchContext, Scenario
from harness.scenarios.fanout import FanoutScenario
from harness.scenarios.idle_sync import IdleSyncScenario
from harness.scenarios.login import LoginScenario
from harness.scenarios.register import RegisterScenario
from harness.scenarios.send import SendScenario

SCENARIOS: dict[str, type[Scenario]] = {
    cls.name: cls
    for cls in (
        RegisterScenario,
        LoginScenario,
        SendScenario,
        FanoutScenario,
        IdleSyncScenario,
    )
}

__all__ = ["SCENARIOS", "BenchContext", "Scenario"]

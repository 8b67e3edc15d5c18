"""Policy rejections into the audit trail: when a policy validator of the event path
refuses a local event (the plugin host's ``check_event_for_spam`` gate, which also runs
the built-in e2ee_only policy, or any refusal marked ``org.parley.policy``), the refusal
is recorded as a ``policy_rejection`` security event (sender, room, event type, policy;
never content), which the repeated-rejections detector counts.

The server's own notices are exempt from such policies: the server cannot encrypt a
notice, and it is not user content.

Validators are wrapped as they are installed: :func:`watch_policy_rejections` swaps the
handler's ``event_validators`` list for one that wraps every entry appended later too
(the plugin host is wired after this module).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, SupportsIndex

from homeserver.events.model import Event
from homeserver.handlers.event_creation import EventCreationHandler, RoomSnapshot
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.http.errors import MatrixError

POLICY_KEY = "org.parley.policy"
# Validators that are policies as a whole (their every refusal is one).
POLICY_VALIDATORS = {"PluginHost.check_event": "check_event_for_spam"}
Validator = Callable[[Event, RoomSnapshot], Awaitable[None]]


def _policy_of(check: Validator) -> str | None:
    return POLICY_VALIDATORS.get(getattr(check, "__qualname__", ""))


def _recording(check: Validator, recorder: SecurityEventRecorder,
               exempt_sender: str | None) -> Validator:
    whole_policy = _policy_of(check)

    async def validate(event: Event, snap: RoomSnapshot) -> None:
        if whole_policy is not None and exempt_sender is not None \
                and event.sender == exempt_sender:
            return
        try:
            await check(event, snap)
        except MatrixError as e:
            marked = e.extra.get(POLICY_KEY)
            policy = marked if isinstance(marked, str) else whole_policy
            if policy is None:
                raise
            if exempt_sender is not None and event.sender == exempt_sender:
                return
            await recorder.record(
                "policy_rejection", "failure", None, user_id=event.sender, reason=policy,
                target=event.room_id,
                details={"policy": policy, "room_id": event.room_id,
                         "event_type": event.type, "errcode": e.errcode})
            raise

    validate._records_policy = True  # type: ignore[attr-defined]
    return validate


class _RecordingValidators(list):  # type: ignore[type-arg]
    """A validator list wrapping each entry it is given."""

    def __init__(self, items: Iterable[Validator], wrap: Callable[[Validator], Validator]):
        self._wrap = wrap
        super().__init__(self._w(v) for v in items)

    def _w(self, v: Validator) -> Validator:
        return v if getattr(v, "_records_policy", False) else self._wrap(v)

    def append(self, v: Validator) -> None:
        super().append(self._w(v))

    def insert(self, i: SupportsIndex, v: Validator) -> None:
        super().insert(i, self._w(v))

    def extend(self, vs: Iterable[Any]) -> None:
        super().extend(self._w(v) for v in vs)


def watch_policy_rejections(creation: EventCreationHandler, recorder: SecurityEventRecorder,
                            exempt_sender: str | None = None) -> None:
    """Record policy refusals of every event validator, present and future."""
    creation.event_validators = _RecordingValidators(
        creation.event_validators, lambda v: _recording(v, recorder, exempt_sender))

"""``stream_writers``: which processes write the events stream (issue 18, event persisters).

```yaml
stream_writers:
  events: [p1, p2]          # event_persister workers (and/or the main process's name)
workers:
  main: {role: main, replication: {host: 127.0.0.1, port: 9093, secret: {env: S}}}
  p1: {role: event_persister, replication: {host: 127.0.0.1, port: 9101}}
  p2: {role: event_persister, replication: {host: 127.0.0.1, port: 9102}}
```

Without the key, the event_persister workers (sorted by name) are the writers; without
either, the main process is the one writer, as in a single process. Rooms are split
between the writers by a stable hash of the room id (homeserver/replication/
multi_writer.py ``writer_for_room``), so the list's order matters: changing it moves rooms
to other writers (stop every process first).

Refused: an unknown name or one whose role writes no events; a writer other than main
without a ``replication`` endpoint (requests for its rooms are forwarded there), or a
deployment without the shared secret; an event_persister worker left out of the list.

Federation works with event persisters as in Synapse: the main process runs the
federation endpoints and checks what other servers send (signatures, hashes), and hands
each room's events to the room's writer, which runs the auth and state checks and
persists them; each writer queues its own local events for the federation sender
(main or a federation_sender worker). A local user's join of another server's room
goes through main, which hands the room's state and the join to the room's writer
(homeserver/replication/remote_persist.py). Partial-state ("faster") joins work there
too: the room's writer keeps the mark and runs the resync, with the state fetched
through main (homeserver/replication/remote_partial_state.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from homeserver.config.workers import NAME_PATTERN, WorkersConfig

EVENT_WRITER_ROLES = ("main", "event_persister")
MAX_WRITERS = 64

STREAM_WRITERS_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "events": {"type": "array", "minItems": 1, "maxItems": MAX_WRITERS,
                   "uniqueItems": True,
                   "items": {"type": "string", "pattern": NAME_PATTERN}},
    },
}


def parse_stream_writers(wc: WorkersConfig, raw: dict[str, Any] | None,
                         federation_enabled: bool) -> WorkersConfig:
    """``wc`` with its events writers (unchanged when the main process is the one)."""
    from homeserver.config.loader import ConfigError

    persisters = wc.instances_of("event_persister")
    given = (raw or {}).get("events")
    if given is None:
        writers = persisters
    else:
        if not wc.enabled:
            raise ConfigError("stream_writers: needs a 'workers' section")
        writers = tuple(given)
        for name in writers:
            worker = wc.workers.get(name)
            if worker is None and not (name == "main" and wc.main_name == "main"):
                raise ConfigError(f"stream_writers.events: no worker named {name!r}")
            if worker is not None and worker.role not in EVENT_WRITER_ROLES:
                raise ConfigError(f"stream_writers.events: {name!r} has role "
                                  f"{worker.role!r}; events writers are main or "
                                  "event_persister workers")
        left_out = sorted(set(persisters) - set(writers))
        if left_out:
            raise ConfigError(f"stream_writers.events: event_persister worker(s) "
                              f"{', '.join(left_out)} are not listed")
    if not writers or writers == (wc.main_name,):
        return wc  # the main process writes every stream: nothing changes
    for name in writers:
        if name != wc.main_name and wc.endpoint(name) is None:
            raise ConfigError(f"workers.{name}.replication: an events writer needs its "
                              "replication endpoint (requests for its rooms go there)")
    if wc.replication_secret is None:
        raise ConfigError(f"stream_writers.events: needs workers.{wc.main_name}.replication "
                          "with the deployment's secret (writes are forwarded by room)")
    del federation_enabled  # federating with event persisters: remote_persist.py
    return dataclasses.replace(wc, event_writers=writers)

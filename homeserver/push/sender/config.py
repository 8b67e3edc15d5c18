"""The ``push`` config section (kept here; model/loader/schema only reference it).

```yaml
push:
  gateway_allowlist: [sygnal.internal]   # hosts exempt from the SSRF IP blocklist
  timeout: 15s                 # one request to a gateway, connect to last byte
  max_response_size: 65536     # bytes of a gateway's answer read at most
  include_content: true        # send event content (full format pushers)
  group_unread_count_by_room: true   # badge = rooms with unread notifications
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DURATION = {"anyOf": [{"type": "integer", "minimum": 1},
                      {"type": "string", "pattern": r"^\d+(ms|s|m|h)?\Z"}]}

# JSON schema of the section (homeserver/config/schema.py: "push": PUSH_SCHEMA).
PUSH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "gateway_allowlist": {"type": "array", "items": {"type": "string", "minLength": 1,
                                                         "maxLength": 255}},
        "timeout": DURATION,
        "max_response_size": {"type": "integer", "minimum": 256, "maximum": 16 * 1024 * 1024},
        "include_content": {"type": "boolean"},
        "group_unread_count_by_room": {"type": "boolean"},
    },
}


@dataclass(frozen=True)
class PushConfig:
    # Hosts (names or IP literals, compared case-insensitively with the URL's host)
    # whose gateways may sit on private addresses: tests, operators' own Sygnal.
    gateway_allowlist: list[str] = field(default_factory=list)
    timeout: float = 15.0
    max_response_size: int = 64 * 1024
    include_content: bool = True
    group_unread_count_by_room: bool = True


def parse_push(raw: dict[str, Any] | None) -> PushConfig:
    """``push`` from the (schema-validated) config mapping."""
    from homeserver.config.loader import parse_duration

    raw = raw or {}
    return PushConfig(
        gateway_allowlist=[h.lower().strip("[]") for h in raw.get("gateway_allowlist", [])],
        timeout=parse_duration(raw.get("timeout", "15s")),
        max_response_size=int(raw.get("max_response_size", 64 * 1024)),
        include_content=bool(raw.get("include_content", True)),
        group_unread_count_by_room=bool(raw.get("group_unread_count_by_room", True)),
    )

"""The ``audit`` config section (kept here; model/loader/schema only reference it).

```yaml
audit:
  retention_days: 90     # entries older than this are purged daily (checkpointed)
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_RETENTION_DAYS = 90

# JSON schema of the section (homeserver/config/schema.py: "audit": AUDIT_SCHEMA).
AUDIT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "retention_days": {"type": "integer", "minimum": 1, "maximum": 36500},
    },
}


@dataclass(frozen=True)
class AuditConfig:
    retention_days: int = DEFAULT_RETENTION_DAYS


def parse_audit(raw: dict[str, Any] | None) -> AuditConfig:
    """``audit`` from the (schema-validated) config mapping."""
    raw = raw or {}
    return AuditConfig(retention_days=int(raw.get("retention_days", DEFAULT_RETENTION_DAYS)))


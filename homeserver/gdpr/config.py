"""The ``gdpr`` config section (kept here; model/loader/schema only reference it).

```yaml
gdpr:
  export_link_lifetime: 24h   # how long a finished export (archive and link) lives
  erasure_grace_period: 30d   # after an erasure, when the purge job deletes the rest (0: at once)
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_EXPORT_LINK_LIFETIME_S = 24 * 3600.0
DEFAULT_ERASURE_GRACE_S = 30 * 24 * 3600.0

_DURATION: dict[str, Any] = {"anyOf": [{"type": "integer", "minimum": 1},
                                       {"type": "string", "pattern": r"^\d+(ms|s|m|h|d|w|y)?$"}]}

# JSON schema of the section (homeserver/config/schema.py: "gdpr": GDPR_SCHEMA).
GDPR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "export_link_lifetime": _DURATION,
        "erasure_grace_period": {"anyOf": [
            {"type": "integer", "minimum": 0, "maximum": 10 * 365 * 86400},
            {"type": "string", "pattern": r"^\d{1,12}(ms|s|m|h|d|w|y)?$"}]},
    },
}


@dataclass(frozen=True)
class GdprConfig:
    # A finished export's archive and download link expire this long after it finished.
    export_link_lifetime_s: float = DEFAULT_EXPORT_LINK_LIFETIME_S
    # After an erasure, the purge job deletes the remaining personal data this much later.
    erasure_grace_period_s: float = DEFAULT_ERASURE_GRACE_S


def parse_gdpr(raw: dict[str, Any] | None) -> GdprConfig:
    """``gdpr`` from the (schema-validated) config mapping."""
    from homeserver.config.loader import ConfigError, parse_duration

    raw = raw or {}
    lifetime = parse_duration(raw.get("export_link_lifetime", "24h"))
    if lifetime < 1:
        raise ConfigError("gdpr.export_link_lifetime: must be at least 1s")
    grace = parse_duration(raw.get("erasure_grace_period", "30d"))
    if grace > 10 * 365 * 86400:
        raise ConfigError("gdpr.erasure_grace_period: at most 10 years")
    return GdprConfig(export_link_lifetime_s=lifetime, erasure_grace_period_s=grace)

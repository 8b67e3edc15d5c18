"""The ``retention`` config section (Synapse's message retention policies); kept here,
model/loader/schema only reference it. Off unless ``enabled``.

```yaml
retention:
  enabled: true
  default_policy:          # rooms without m.room.retention state
    min_lifetime: 1d
    max_lifetime: 1y
  allowed_lifetime_min: 1d # a room's lifetimes are clamped into this range
  allowed_lifetime_max: 1y
  purge_jobs:              # each job handles rooms whose max_lifetime is in its range
    - longest_max_lifetime: 3d
      interval: 12h
    - shortest_max_lifetime: 3d
      interval: 1d
```

Durations are Parley durations (``30``, ``"12h"``, ``"3d"``): a bare integer is seconds,
where Synapse reads milliseconds. Without ``purge_jobs`` one job runs daily over all rooms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_DURATION: dict[str, Any] = {"anyOf": [{"type": "integer", "minimum": 1},
                                       {"type": "string", "pattern": r"^\d+(ms|s|m|h|d|w|y)?$"}]}
DEFAULT_INTERVAL_S = 86400.0
MIN_INTERVAL_S = 60.0

RETENTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "enabled": {"type": "boolean"},
        "default_policy": {"type": "object", "additionalProperties": False, "properties": {
            "min_lifetime": _DURATION, "max_lifetime": _DURATION}},
        "allowed_lifetime_min": _DURATION,
        "allowed_lifetime_max": _DURATION,
        "purge_jobs": {"type": "array", "maxItems": 16, "items": {
            "type": "object", "additionalProperties": False, "properties": {
                "shortest_max_lifetime": _DURATION,
                "longest_max_lifetime": _DURATION,
                "interval": _DURATION}}},
    },
}


@dataclass(frozen=True)
class PurgeJobConfig:
    """Rooms whose max lifetime is in (shortest, longest] (ms; None: unbounded), every
    ``interval_s`` seconds."""

    shortest_max_lifetime_ms: int | None = None
    longest_max_lifetime_ms: int | None = None
    interval_s: float = DEFAULT_INTERVAL_S


@dataclass(frozen=True)
class RetentionConfig:
    enabled: bool = False
    default_min_lifetime_ms: int | None = None
    default_max_lifetime_ms: int | None = None
    allowed_lifetime_min_ms: int | None = None
    allowed_lifetime_max_ms: int | None = None
    purge_jobs: tuple[PurgeJobConfig, ...] = field(default_factory=tuple)


def _ms(raw: dict[str, Any], key: str) -> int | None:
    from homeserver.config.loader import parse_duration

    value = raw.get(key)
    return None if value is None else int(parse_duration(value) * 1000)


def parse_retention(raw: dict[str, Any] | None) -> RetentionConfig:
    """``retention`` from the (schema-validated) config mapping."""
    from homeserver.config.loader import ConfigError, parse_duration

    raw = raw or {}
    if not raw.get("enabled", False):
        return RetentionConfig()
    policy = raw.get("default_policy") or {}
    low, high = _ms(raw, "allowed_lifetime_min"), _ms(raw, "allowed_lifetime_max")
    if low is not None and high is not None and low > high:
        raise ConfigError("retention: allowed_lifetime_min is above allowed_lifetime_max")
    dmin, dmax = _ms(policy, "min_lifetime"), _ms(policy, "max_lifetime")
    if dmin is not None and dmax is not None and dmin > dmax:
        raise ConfigError("retention.default_policy: min_lifetime is above max_lifetime")
    jobs = []
    for i, job in enumerate(raw.get("purge_jobs") or [{}]):
        shortest, longest = _ms(job, "shortest_max_lifetime"), _ms(job, "longest_max_lifetime")
        if shortest is not None and longest is not None and shortest > longest:
            raise ConfigError(f"retention.purge_jobs[{i}]: shortest_max_lifetime is above"
                              " longest_max_lifetime")
        interval = parse_duration(job.get("interval", "1d"))
        if interval < MIN_INTERVAL_S:
            raise ConfigError(f"retention.purge_jobs[{i}].interval: must be at least 1m")
        jobs.append(PurgeJobConfig(shortest, longest, interval))
    return RetentionConfig(enabled=True, default_min_lifetime_ms=dmin,
                           default_max_lifetime_ms=dmax, allowed_lifetime_min_ms=low,
                           allowed_lifetime_max_ms=high, purge_jobs=tuple(jobs))

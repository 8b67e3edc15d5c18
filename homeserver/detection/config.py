"""The ``detection`` and ``server_notices`` config sections (kept here; model, loader
and schema only reference them).

```yaml
server_notices:
  enabled: true
  system_mxid_localpart: server      # @server:<server_name>, reserved at start-up
  system_mxid_display_name: Server Notices
  room_name: Server Notices
  auto_join: true                    # join the user to the room (Synapse: invite only)
detection:
  enabled: true
  login_failures:                    # per account and per IP -> temporary lockout
    per_account: {max_failures: 5, window: 15m}
    per_ip: {max_failures: 20, window: 15m}
    lockout: 1m                      # first lockout; doubles (multiplier) each time
    multiplier: 2
    max_lockout: 1h
    backoff_reset: 1d                # a quiet day forgets the escalation
  password_spraying: {enabled: true, distinct_accounts: 10, window: 10m}
  refresh_token_reuse: {enabled: true}
  new_login: {enabled: true, notify: true}
  message_flood: {enabled: true, max_events: 300, window: 1m}
  invite_flood: {enabled: true, max_events: 30, window: 10m}
  policy_rejections: {enabled: true, max_events: 10, window: 10m}
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_DURATION = {"anyOf": [{"type": "integer", "minimum": 0},
                       {"type": "string", "pattern": r"^\d+(ms|s|m|h|d|w|y)?\Z"}]}


def _obj(props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": props}


_COUNT = {"type": "integer", "minimum": 1, "maximum": 1_000_000}
_WINDOWED = _obj({"enabled": {"type": "boolean"}, "max_events": _COUNT, "window": _DURATION})

SERVER_NOTICES_SCHEMA: dict[str, Any] = _obj({
    "enabled": {"type": "boolean"},
    "system_mxid_localpart": {"type": "string", "pattern": r"^[a-z0-9._=/+-]{1,64}\Z"},
    "system_mxid_display_name": {"type": "string", "minLength": 1, "maxLength": 255},
    "system_mxid_avatar_url": {"type": "string", "pattern": r"^mxc://", "maxLength": 512},
    "room_name": {"type": "string", "minLength": 1, "maxLength": 255},
    "auto_join": {"type": "boolean"},
})

DETECTION_SCHEMA: dict[str, Any] = _obj({
    "enabled": {"type": "boolean"},
    "login_failures": _obj({
        "enabled": {"type": "boolean"},
        "per_account": _obj({"max_failures": _COUNT, "window": _DURATION}),
        "per_ip": _obj({"max_failures": _COUNT, "window": _DURATION}),
        "lockout": _DURATION,
        "multiplier": {"type": "number", "minimum": 1, "maximum": 100},
        "max_lockout": _DURATION,
        "backoff_reset": _DURATION,
    }),
    "password_spraying": _obj({"enabled": {"type": "boolean"}, "distinct_accounts": _COUNT,
                               "window": _DURATION}),
    "refresh_token_reuse": _obj({"enabled": {"type": "boolean"}}),
    "new_login": _obj({"enabled": {"type": "boolean"}, "notify": {"type": "boolean"}}),
    "message_flood": _WINDOWED,
    "invite_flood": _WINDOWED,
    "policy_rejections": _WINDOWED,
})


@dataclass(frozen=True)
class ServerNoticesConfig:
    enabled: bool = True
    system_mxid_localpart: str = "server"
    system_mxid_display_name: str = "Server Notices"
    system_mxid_avatar_url: str | None = None
    room_name: str = "Server Notices"
    auto_join: bool = True


@dataclass(frozen=True)
class Windowed:
    """At least ``max_events`` within ``window_s`` seconds raises the alert."""

    enabled: bool = True
    max_events: int = 10
    window_s: float = 600.0


@dataclass(frozen=True)
class LoginFailuresConfig:
    enabled: bool = True
    account_max_failures: int = 5
    account_window_s: float = 900.0
    ip_max_failures: int = 20
    ip_window_s: float = 900.0
    lockout_s: float = 60.0
    multiplier: float = 2.0
    max_lockout_s: float = 3600.0
    backoff_reset_s: float = 86400.0


@dataclass(frozen=True)
class SprayingConfig:
    enabled: bool = True
    distinct_accounts: int = 10
    window_s: float = 600.0


@dataclass(frozen=True)
class DetectionConfig:
    enabled: bool = True
    login_failures: LoginFailuresConfig = field(default_factory=LoginFailuresConfig)
    password_spraying: SprayingConfig = field(default_factory=SprayingConfig)
    refresh_token_reuse: bool = True
    new_login: bool = True
    new_login_notify: bool = True
    message_flood: Windowed = field(default_factory=lambda: Windowed(True, 300, 60.0))
    invite_flood: Windowed = field(default_factory=lambda: Windowed(True, 30, 600.0))
    policy_rejections: Windowed = field(default_factory=lambda: Windowed(True, 10, 600.0))


def parse_server_notices(raw: dict[str, Any] | None) -> ServerNoticesConfig:
    raw = raw or {}
    d = ServerNoticesConfig()
    return ServerNoticesConfig(
        enabled=bool(raw.get("enabled", d.enabled)),
        system_mxid_localpart=raw.get("system_mxid_localpart", d.system_mxid_localpart),
        system_mxid_display_name=raw.get("system_mxid_display_name",
                                         d.system_mxid_display_name),
        system_mxid_avatar_url=raw.get("system_mxid_avatar_url"),
        room_name=raw.get("room_name", d.room_name),
        auto_join=bool(raw.get("auto_join", d.auto_join)),
    )


def _windowed(raw: dict[str, Any] | None, default: Windowed) -> Windowed:
    from homeserver.config.loader import parse_duration

    raw = raw or {}
    return Windowed(
        enabled=bool(raw.get("enabled", default.enabled)),
        max_events=int(raw.get("max_events", default.max_events)),
        window_s=parse_duration(raw["window"]) if "window" in raw else default.window_s,
    )


def parse_detection(raw: dict[str, Any] | None) -> DetectionConfig:
    """``detection`` from the (schema-validated) config mapping."""
    from homeserver.config.loader import parse_duration

    raw = raw or {}
    d = DetectionConfig()
    lf_raw = raw.get("login_failures") or {}
    lf = LoginFailuresConfig()
    acc = lf_raw.get("per_account") or {}
    ip = lf_raw.get("per_ip") or {}

    def dur(src: dict[str, Any], key: str, default: float) -> float:
        return parse_duration(src[key]) if key in src else default

    login_failures = LoginFailuresConfig(
        enabled=bool(lf_raw.get("enabled", lf.enabled)),
        account_max_failures=int(acc.get("max_failures", lf.account_max_failures)),
        account_window_s=dur(acc, "window", lf.account_window_s),
        ip_max_failures=int(ip.get("max_failures", lf.ip_max_failures)),
        ip_window_s=dur(ip, "window", lf.ip_window_s),
        lockout_s=dur(lf_raw, "lockout", lf.lockout_s),
        multiplier=float(lf_raw.get("multiplier", lf.multiplier)),
        max_lockout_s=dur(lf_raw, "max_lockout", lf.max_lockout_s),
        backoff_reset_s=dur(lf_raw, "backoff_reset", lf.backoff_reset_s),
    )
    sp_raw = raw.get("password_spraying") or {}
    sp = SprayingConfig()
    return DetectionConfig(
        enabled=bool(raw.get("enabled", d.enabled)),
        login_failures=login_failures,
        password_spraying=SprayingConfig(
            enabled=bool(sp_raw.get("enabled", sp.enabled)),
            distinct_accounts=int(sp_raw.get("distinct_accounts", sp.distinct_accounts)),
            window_s=dur(sp_raw, "window", sp.window_s),
        ),
        refresh_token_reuse=bool((raw.get("refresh_token_reuse") or {}).get("enabled", True)),
        new_login=bool((raw.get("new_login") or {}).get("enabled", True)),
        new_login_notify=bool((raw.get("new_login") or {}).get("notify", True)),
        message_flood=_windowed(raw.get("message_flood"), d.message_flood),
        invite_flood=_windowed(raw.get("invite_flood"), d.invite_flood),
        policy_rejections=_windowed(raw.get("policy_rejections"), d.policy_rejections),
    )

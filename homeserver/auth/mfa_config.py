"""The ``mfa`` config section (kept here; model/loader/schema only reference it).

```yaml
mfa:
  required: none         # none | admins | everyone: who must have TOTP enrolled
  issuer: Parley         # the otpauth:// issuer shown in authenticator apps (default: server_name)
  max_failures: 5        # wrong codes in a row before a user is locked out
  lockout_s: 30          # the first lockout; it doubles with each further lockout
  max_lockout_s: 3600    # the longest lockout
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REQUIRED_LEVELS = ("none", "admins", "everyone")

# JSON schema of the section (homeserver/config/schema.py: "mfa": MFA_SCHEMA).
MFA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "required": {"enum": list(REQUIRED_LEVELS)},
        "issuer": {"type": "string", "minLength": 1, "maxLength": 100},
        "max_failures": {"type": "integer", "minimum": 1, "maximum": 100},
        "lockout_s": {"type": "number", "minimum": 1, "maximum": 86400},
        "max_lockout_s": {"type": "number", "minimum": 1, "maximum": 7 * 86400},
    },
}


@dataclass(frozen=True)
class MfaConfig:
    required: str = "none"
    issuer: str | None = None  # None: the server name
    max_failures: int = 5
    lockout_s: float = 30.0
    max_lockout_s: float = 3600.0


def parse_mfa(raw: dict[str, Any] | None) -> MfaConfig:
    """``mfa`` from the (schema-validated) config mapping."""
    raw = raw or {}
    return MfaConfig(
        required=str(raw.get("required", "none")),
        issuer=raw.get("issuer"),
        max_failures=int(raw.get("max_failures", 5)),
        lockout_s=float(raw.get("lockout_s", 30)),
        max_lockout_s=float(raw.get("max_lockout_s", 3600)),
    )

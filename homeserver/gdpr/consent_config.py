"""The ``user_consent`` config section (Synapse's key names) and ``form_secret``; kept
here, model/loader/schema only reference it. Off unless the section is present.

```yaml
form_secret: {env: PARLEY_FORM_SECRET}   # keys the consent links' HMAC (required)
user_consent:
  version: "1.0"                # the current policy version
  policies:                     # the policy text per version (plain text, shown escaped)
    "1.0": "We keep your messages for ..."
  template_dir: policies/       # or <template_dir>/<version>.txt files
  policy_name: Privacy Policy
  block_events_error: >-
    To continue using this homeserver you must review and agree to the
    terms and conditions at %(consent_uri)s
  server_notice_content:        # optional: sent once per version to users who have not
    msgtype: m.text             #   agreed (needs server_notices enabled)
    body: Please review and agree to the policy at %(consent_uri)s
  block_actions: [send, state, join, invite, create_room]
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# What a user who has not consented may be refused (leaving a room never is).
BLOCK_ACTIONS = ("send", "state", "join", "invite", "create_room")
DEFAULT_BLOCK_ERROR = ("To continue using this homeserver you must review and agree to the"
                       " terms and conditions at %(consent_uri)s")
MAX_POLICY_CHARS = 256 * 1024
_VERSION_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"

# JSON schema of the section (homeserver/config/schema.py: "user_consent").
CONSENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["version"],
    "properties": {
        "version": {"type": "string", "pattern": _VERSION_PATTERN},
        "policies": {"type": "object", "additionalProperties": {
            "type": "string", "maxLength": MAX_POLICY_CHARS}},
        "template_dir": {"type": "string"},
        "policy_name": {"type": "string", "minLength": 1, "maxLength": 200},
        "block_events_error": {"type": "string", "minLength": 1, "maxLength": 2000},
        "server_notice_content": {
            "type": "object", "required": ["body"],
            "properties": {"msgtype": {"type": "string"},
                           "body": {"type": "string", "minLength": 1, "maxLength": 4000}}},
        "block_actions": {"type": "array", "uniqueItems": True,
                          "items": {"enum": list(BLOCK_ACTIONS)}},
    },
}


@dataclass(frozen=True)
class ConsentConfig:
    version: str
    policies: dict[str, str]  # version -> policy text (at least the current version)
    form_secret: str = field(repr=False)
    policy_name: str = "Privacy Policy"
    block_events_error: str = DEFAULT_BLOCK_ERROR
    server_notice_body: str | None = None
    block_actions: frozenset[str] = frozenset(BLOCK_ACTIONS)


def parse_consent(raw: dict[str, Any] | None, form_secret: str | None,
                  rel: Any = None) -> ConsentConfig | None:
    """``user_consent`` from the (schema-validated) config mapping; None when absent."""
    from homeserver.config.loader import ConfigError

    if not raw:
        return None
    if not form_secret:
        raise ConfigError("user_consent: form_secret must be set (it keys the consent links)")
    policies = dict(raw.get("policies") or {})
    template_dir = raw.get("template_dir")
    if template_dir:
        directory = Path(rel(template_dir) if rel is not None else template_dir)
        if not directory.is_dir():
            raise ConfigError(f"user_consent.template_dir: {directory} is not a directory")
        for path in sorted(directory.glob("*.txt")):
            text = path.read_text(encoding="utf-8")
            if len(text) > MAX_POLICY_CHARS:
                raise ConfigError(f"user_consent.template_dir: {path.name} is too long")
            policies.setdefault(path.stem, text)
    version = raw["version"]
    if version not in policies:
        raise ConfigError(f"user_consent: no policy text for version {version!r} (set"
                          " policies or a <version>.txt in template_dir)")
    notice = raw.get("server_notice_content")
    return ConsentConfig(
        version=version, policies=policies, form_secret=form_secret,
        policy_name=raw.get("policy_name", "Privacy Policy"),
        block_events_error=raw.get("block_events_error", DEFAULT_BLOCK_ERROR),
        server_notice_body=notice["body"] if notice else None,
        block_actions=frozenset(raw.get("block_actions", BLOCK_ACTIONS)),
    )

"""The ``secrets`` config section: key-encryption keys for secrets at rest.

```yaml
secrets:
  # One key (its id is "default"): 32 random bytes as Base64 or 64 hex digits
  # (`parley keys generate` or `openssl rand -hex 32`).
  at_rest_key: {env: PARLEY_AT_REST_KEY}
  # Or several, for rotation: new values are sealed under `active` (default: the first);
  # the others only open values sealed earlier. Remove an old key after
  # `parley keys rotate` reports that nothing uses it any more.
  at_rest_keys:
    - {id: k2, key: {env: PARLEY_AT_REST_KEY_2}}
    - {id: default, key: {env: PARLEY_AT_REST_KEY}}
  active: k2
  # false once every value is encrypted: a plaintext value is then refused (and
  # audited) instead of read, so a value replaced in the database cannot be slipped in.
  accept_plaintext: true
  # Optional, off by default (homeserver/crypto/content.py; needs a key): store event
  # JSON (message bodies, every event's content) and profile fields (display name,
  # avatar URL, custom fields) as envelopes bound to their row. Costs two AES-GCM
  # operations per value read or written (server CPU: send +5%, a 100-event page +36%;
  # bench/at_rest_cost.py); cannot be combined with search.enabled; the user directory
  # then matches users by id only.
  encrypt_event_content: false
  encrypt_profiles: false
```
"""

from __future__ import annotations

from typing import Any

from homeserver.crypto.at_rest import DEFAULT_KEK_ID, decode_kek

_SECRET = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "object", "additionalProperties": False, "required": ["env"],
         "properties": {"env": {"type": "string", "minLength": 1}}},
        {"type": "object", "additionalProperties": False, "required": ["file"],
         "properties": {"file": {"type": "string", "minLength": 1}}},
    ]
}
_KEK_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,32}\\Z"}

# JSON schema of the section (homeserver/config/schema.py: "secrets": SECRETS_SCHEMA).
SECRETS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "at_rest_key": _SECRET,
        "at_rest_keys": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False, "required": ["id", "key"],
            "properties": {"id": _KEK_ID, "key": _SECRET}}},
        "active": _KEK_ID,
        "accept_plaintext": {"type": "boolean"},
        "encrypt_event_content": {"type": "boolean"},
        "encrypt_profiles": {"type": "boolean"},
    },
}


def parse_at_rest(raw: dict[str, Any], search_enabled: bool = False) -> Any:
    """The section as an AtRestConfig, keys resolved and decoded (a bad key is a
    ConfigError naming it, never showing it). ``search_enabled`` (``search.enabled``)
    cannot be combined with ``encrypt_event_content``: its index holds bodies in
    plaintext."""
    from homeserver.config.loader import ConfigError, resolve_secret
    from homeserver.config.model import AtRestConfig

    entries: list[tuple[str, Any, str]] = []
    if raw.get("at_rest_key") is not None and raw.get("at_rest_keys"):
        raise ConfigError("secrets: give either at_rest_key or at_rest_keys, not both "
                          "(list the old key as {id: default, key: ...})")
    if raw.get("at_rest_key") is not None:
        entries.append((DEFAULT_KEK_ID, raw["at_rest_key"], "secrets.at_rest_key"))
    for i, item in enumerate(raw.get("at_rest_keys") or []):
        entries.append((item["id"], item["key"], f"secrets.at_rest_keys[{i}].key"))
    keys: list[tuple[str, bytes]] = []
    for kid, value, name in entries:
        if any(k == kid for k, _ in keys):
            raise ConfigError(f"secrets.at_rest_keys: duplicate id {kid!r}")
        text = resolve_secret(value, name)
        assert text is not None
        try:
            keys.append((kid, decode_kek(text, name)))
        except ValueError as e:
            raise ConfigError(str(e)) from None
    active = raw.get("active")
    if active is not None and all(k != active for k, _ in keys):
        raise ConfigError(f"secrets.active: no key with id {active!r}")
    if keys and active is None:
        active = keys[0][0]
    content = bool(raw.get("encrypt_event_content", False))
    profiles = bool(raw.get("encrypt_profiles", False))
    for name, on in (("encrypt_event_content", content), ("encrypt_profiles", profiles)):
        if on and not keys:
            raise ConfigError(f"secrets.{name} needs a key (secrets.at_rest_key or "
                              "secrets.at_rest_keys)")
    if content and search_enabled:
        raise ConfigError("secrets.encrypt_event_content cannot be combined with "
                          "search.enabled: the search index would hold every message body "
                          "in plaintext; switch search off (its index is then deleted)")
    return AtRestConfig(keys=tuple(keys), active=active,
                        accept_plaintext=raw.get("accept_plaintext", True),
                        encrypt_event_content=content, encrypt_profiles=profiles)

"""The JSON schema of the YAML config file. Unknown keys are errors everywhere.

A *secret* may be given inline, or as ``{env: NAME}`` / ``{file: PATH}`` so it
never has to be written into the file. A *duration* is seconds, or a string such
as ``"15m"``, ``"30d"``, ``"500ms"``.
"""

from __future__ import annotations

from typing import Any

from homeserver.audit.config import AUDIT_SCHEMA
from homeserver.auth.mfa_config import MFA_SCHEMA
from homeserver.auth.roles import ADMIN_ROLES_SCHEMA
from homeserver.config.model import DEFAULT_RATE_LIMITS
from homeserver.config.stream_writers import STREAM_WRITERS_SCHEMA
from homeserver.config.workers import workers_schema
from homeserver.crypto.config import SECRETS_SCHEMA
from homeserver.detection.config import DETECTION_SCHEMA, SERVER_NOTICES_SCHEMA
from homeserver.gdpr.config import GDPR_SCHEMA
from homeserver.gdpr.consent_config import CONSENT_SCHEMA
from homeserver.gdpr.retention_config import RETENTION_SCHEMA
from homeserver.push.sender.config import PUSH_SCHEMA

DURATION = {"anyOf": [{"type": "integer", "minimum": 0},
                      {"type": "string", "pattern": r"^\d+(ms|s|m|h|d|w|y)?\Z"}]}
SECRET = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "object", "additionalProperties": False, "required": ["env"],
         "properties": {"env": {"type": "string", "minLength": 1}}},
        {"type": "object", "additionalProperties": False, "required": ["file"],
         "properties": {"file": {"type": "string", "minLength": 1}}},
    ]
}


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": props,
            "required": required or []}


LISTENER = _obj(
    {
        "port": {"type": "integer", "minimum": 0, "maximum": 65535},
        "bind_addresses": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "resources": {"type": "array", "items": {
            "enum": ["client", "federation", "metrics", "replication"]}},
        "x_forwarded": {"type": "boolean"},
        "tls": _obj(
            {
                "certificate_path": {"type": "string"},
                "private_key_path": {"type": "string"},
                "min_version": {"enum": ["1.2", "1.3"]},
            },
            ["certificate_path", "private_key_path"],
        ),
    },
    ["port"],
)

# One entry of /.well-known/matrix/support "contacts". The role grammar and "matrix_id
# or email_address" are checked by the loader, which can say what is wrong in words.
SUPPORT_CONTACT = _obj(
    {
        "role": {"type": "string", "minLength": 1, "maxLength": 255},
        "matrix_id": {"type": "string", "minLength": 1, "maxLength": 255},
        "email_address": {"type": "string", "minLength": 1, "maxLength": 320},
    },
    ["role"],
)

SIGNING_KEY = _obj(
    {
        "kid": {"type": "string", "pattern": r"^[A-Za-z0-9._-]{1,64}\Z"},
        "algorithm": {"enum": ["EdDSA", "ES256", "HS256"]},
        "key": SECRET,
        "verify_only": {"type": "boolean"},
    },
    ["kid", "algorithm", "key"],
)

MEDIA = _obj(
    {
        "store": {"enum": ["local", "s3"]},
        "media_dir": {"type": "string", "minLength": 1},
        "max_upload_size": {"type": "integer", "minimum": 1},
        "allowed_content_types": {"type": "array", "items": {
            "type": "string", "pattern": r"^([a-z0-9!#$&^_.+-]+/([a-z0-9!#$&^_.+-]+|\*)|\*/\*)\Z"}},
        "user_quota": {"type": "integer", "minimum": 0},
        "legacy_unauthenticated_download": {"type": "boolean"},
        "unused_expiration": DURATION,
        "max_pending_uploads": {"type": "integer", "minimum": 1},
        "builtin_scanner": {"type": "boolean"},
        "sha256_deny_list_file": {"type": "string"},
        "max_image_pixels": {"type": "integer", "minimum": 1},
        # Bytes of other servers' media kept (homeserver/media/remote.py; federation).
        "remote_cache_max_bytes": {"type": "integer", "minimum": 0,
                                   "maximum": 2**53 - 1},
        "thumbnail_sizes": {"type": "array", "minItems": 1, "maxItems": 20, "items": _obj(
            {
                "width": {"type": "integer", "minimum": 1, "maximum": 4096},
                "height": {"type": "integer", "minimum": 1, "maximum": 4096},
                "method": {"enum": ["scale", "crop"]},
            },
            ["width", "height"],
        )},
        "s3": _obj(
            {
                "bucket": {"type": "string", "minLength": 1},
                "endpoint_url": {"type": "string", "pattern": "^https?://"},
                "region": {"type": "string"},
                "access_key_id": SECRET,
                "secret_access_key": SECRET,
                "prefix": {"type": "string"},
                "presigned_redirect": {"type": "boolean"},
                "presigned_url_lifetime": DURATION,
            },
            ["bucket"],
        ),
        "url_preview": _obj(
            {
                "enabled": {"type": "boolean"},
                "ip_range_allowlist": {"type": "array", "items": {"type": "string"}},
                "max_size": {"type": "integer", "minimum": 1},
                "timeout": DURATION,
            }
        ),
    }
)

# A token bucket: ``burst`` requests at once, refilled at ``per_second``.
RATE_LIMIT = _obj(
    {
        "per_second": {"type": "number", "exclusiveMinimum": 0},
        "burst": {"type": "integer", "minimum": 1},
    },
    ["per_second", "burst"],
)

CONFIG_SCHEMA: dict[str, Any] = _obj(
    {
        "server_name": {"type": "string", "minLength": 1, "pattern": r"^[A-Za-z0-9.\-\[\]:]+\Z"},
        "public_baseurl": {"type": "string", "pattern": "^https?://"},
        "listeners": {"type": "array", "items": LISTENER, "minItems": 1},
        "data_dir": {"type": "string"},
        "database": _obj(
            {
                "engine": {"enum": ["sqlite", "postgres"]},
                "path": {"type": "string"},
                "host": {"type": "string"},
                "port": {"type": "integer"},
                "user": {"type": "string"},
                "password": SECRET,
                "database": {"type": "string"},
                "schema": {"type": "string", "pattern": r"^[a-z_][a-z0-9_]{0,62}\Z"},
                "pool_min": {"type": "integer", "minimum": 1},
                "pool_max": {"type": "integer", "minimum": 1},
            },
            ["engine"],
        ),
        "auth": _obj(
            {
                "issuer": {"type": "string", "minLength": 1},
                "audience": {"type": "string", "minLength": 1},
                "access_token_lifetime": DURATION,
                "access_token_lifetime_without_refresh": DURATION,
                "refresh_token_lifetime": DURATION,
                "clock_skew": DURATION,
                "session_cache_ttl": DURATION,
                "signing_keys": {"type": "array", "items": SIGNING_KEY, "minItems": 1},
                "active_kid": {"type": "string"},
            }
        ),
        "password_hashing": _obj(
            {
                "time_cost": {"type": "integer", "minimum": 1},
                "memory_cost_kib": {"type": "integer", "minimum": 8},
                "parallelism": {"type": "integer", "minimum": 1},
                "max_pending": {"type": "integer", "minimum": 1},
            }
        ),
        "rate_limits": _obj({
            **{name: RATE_LIMIT for name in DEFAULT_RATE_LIMITS},
            "backend": {"enum": ["memory", "redis"]},
            "exempt_admins": {"type": "boolean"},
            "invite_penalty": _obj({
                "factor": {"type": "number", "minimum": 1, "maximum": 100},
                "max_multiplier": {"type": "number", "minimum": 1, "maximum": 1_000_000},
                "half_life": DURATION,
            }),
        }),
        "redis": _obj({
            "host": {"type": "string", "minLength": 1},
            "port": {"type": "integer", "minimum": 1, "maximum": 65535},
            "db": {"type": "integer", "minimum": 0, "maximum": 1024},
            "password": SECRET,
            "timeout": DURATION,
            "key_prefix": {"type": "string", "maxLength": 64, "pattern": "^[A-Za-z0-9:._-]*\\Z"},
        }),
        "password_policy": _obj(
            {
                "enabled": {"type": "boolean"},
                "min_length": {"type": "integer", "minimum": 0},
                "require_digit": {"type": "boolean"},
                "require_symbol": {"type": "boolean"},
                "require_lowercase": {"type": "boolean"},
                "require_uppercase": {"type": "boolean"},
                "breached_list_file": {"type": "string"},
            }
        ),
        "registration": _obj(
            {
                "enabled": {"type": "boolean"},
                "requires_token": {"type": "boolean"},
                "allow_guests": {"type": "boolean"},
                "shared_secret": SECRET,
                "reserved_usernames": {"type": "array", "items": {"type": "string"}},
                "logout_devices_on_password_change": {"type": "boolean"},
            }
        ),
        "http": _obj(
            {
                "max_request_body_size": {"type": "integer", "minimum": 1024},
            }
        ),
        "well_known": _obj(
            {
                "client_base_url": {"type": "string"},
                "server": {"type": "string"},
                "serve_client": {"type": "boolean"},
                "serve_server": {"type": "boolean"},
                "support_contacts": {"type": "array", "items": SUPPORT_CONTACT},
                "support_page": {"type": "string", "pattern": "^https?://[^\\s]+\\Z"},
            }
        ),
        "secrets": SECRETS_SCHEMA,
        "logging": _obj(
            {
                "level": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR"]},
                "format": {"enum": ["json", "text"]},
            }
        ),
        # homeserver/config/federation.py
        "federation": _obj({
            "enabled": {"type": "boolean"},
            "key_validity_period": DURATION,
            "trusted_key_servers": {"type": "array", "maxItems": 16, "items": _obj({
                "server_name": {"type": "string", "minLength": 1, "maxLength": 255},
                "verify_keys": {"type": "object", "minProperties": 1,
                                "additionalProperties": {"type": "string"}},
            }, ["server_name", "verify_keys"])},
            "allowed_servers": {"type": "array", "items": {"type": "string", "minLength": 1,
                                                           "maxLength": 255}},
            "tls_ca_file": {"type": "string", "minLength": 1},
            "ip_range_allowlist": {"type": "array", "items": {"type": "string"}},
            "request_timeout": DURATION,
            "max_response_size": {"type": "integer", "minimum": 65536,
                                  "maximum": 1024 * 1024 * 1024},
            # Ask resident servers to leave members out of send_join (spec v1.6
            # omit_members) and resync them in the background (faster joins).
            "partial_state_joins": {"type": "boolean"},
            # Blocked remote servers, merged with those blocked through the admin API
            # (homeserver/handlers/server_blocks.py).
            "blocked_servers": {"type": "array", "maxItems": 10000, "items": {
                "type": "string", "minLength": 1, "maxLength": 255}},
        }),
        # Admin API options (issue 15): event-report details show the reported event's
        # content only with this on, and only for unencrypted rooms.
        "admin": _obj({"reports_show_content": {"type": "boolean"}}),
        # A plugin is its name, or {name, config} with its own config (checked by the
        # plugin's CONFIG_SCHEMA at start-up).
        "plugins": {"type": "array", "items": {"anyOf": [
            {"type": "string", "minLength": 1},
            _obj({"name": {"type": "string", "minLength": 1}, "config": {"type": "object"}},
                 ["name"])]}},
        # Per-hook timeouts (hook names are checked at start-up by the plugin host).
        "plugins_config": _obj({"timeouts": {"type": "object",
                                             "additionalProperties": DURATION}}),
        "rooms": _obj({"default_version": {"enum": ["10", "11", "12"]}}),
        "signing_key_path": {"type": "string"},
        "presence": _obj({"enabled": {"type": "boolean"}}),
        "voip": _obj({
            "turn_uris": {"type": "array", "items": {"type": "string", "pattern": "^turns?:"}},
            "turn_shared_secret": SECRET,
            "turn_user_lifetime": DURATION,
        }),
        "search": _obj({"enabled": {"type": "boolean"}}),
        # YAML reads a bare `off` as false: both mean off.
        "e2ee": _obj({"policy": {"enum": ["off", "encrypted_rooms", "everywhere", False]}}),
        "media": MEDIA,
        "audit": AUDIT_SCHEMA,
        "gdpr": GDPR_SCHEMA,
        # Consent tracking and message retention (homeserver/gdpr/*_config.py).
        "user_consent": CONSENT_SCHEMA,
        "form_secret": SECRET,
        "retention": RETENTION_SCHEMA,
        "admin_roles": ADMIN_ROLES_SCHEMA,
        "mfa": MFA_SCHEMA,
        "push": PUSH_SCHEMA,
        "server_notices": SERVER_NOTICES_SCHEMA,
        "detection": DETECTION_SCHEMA,
        "shutdown": _obj({"grace_period_s": {"type": "number", "minimum": 0, "maximum": 3600}}),
        "login_tokens": _obj({"enabled": {"type": "boolean"}, "lifetime": DURATION}),
        "caches": _obj({
            "event_cache_size": {"type": "integer", "minimum": 0, "maximum": 10_000_000},
            "state_cache_entries": {"type": "integer", "minimum": 0,
                                    "maximum": 100_000_000}}),
        "gc_thresholds": {"type": "array", "minItems": 3, "maxItems": 3,
                          "items": {"type": "integer", "minimum": 1, "maximum": 10_000_000}},
        # Application service registration files (homeserver/appservice/config.py).
        "app_service_config_files": {"type": "array", "items": {"type": "string", "minLength": 1}},
        # Worker processes (homeserver/config/workers.py).
        "workers": workers_schema(LISTENER),
        "stream_writers": STREAM_WRITERS_SCHEMA,  # homeserver/config/stream_writers.py
        "identity_servers": _obj({
            # host[:port]: a DNS name, an IPv4 address or a bracketed IPv6 address.
            "trusted": {"type": "array", "items": {"type": "string", "pattern": (
                r"^([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?\Z")}},
            "ip_range_allowlist": {"type": "array", "items": {"type": "string"}},
            "timeout": DURATION,
            "max_response_size": {"type": "integer", "minimum": 1024, "maximum": 16777216},
            "plain_http": {"type": "boolean"},
            "tls_verify": {"type": "boolean"},
        }),
    },
    ["server_name"],
)

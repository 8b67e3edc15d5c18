"""Reads the YAML file, validates it, resolves secrets, applies defaults and returns
a typed :class:`~homeserver.config.model.Config`."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from homeserver.audit.config import parse_audit
from homeserver.auth.mfa_config import parse_mfa
from homeserver.config.federation import parse_federation
from homeserver.config.model import (
    DEFAULT_RATE_LIMITS,
    DEFAULT_THUMBNAIL_SIZES,
    AuthConfig,
    Config,
    DatabaseConfig,
    IdentityServersConfig,
    InvitePenaltyConfig,
    ListenerConfig,
    LoginTokensConfig,
    MediaConfig,
    MediaS3Config,
    PasswordHashingConfig,
    PasswordPolicyConfig,
    RateLimitConfig,
    RateLimitsConfig,
    RedisConfig,
    RegistrationConfig,
    SigningKeyConfig,
    SupportContact,
    ThumbnailSize,
    UrlPreviewConfig,
    VoipConfig,
    WellKnownConfig,
)
from homeserver.config.schema import CONFIG_SCHEMA
from homeserver.config.stream_writers import parse_stream_writers
from homeserver.config.workers import REVOCATION_BOUND_DEFAULT, parse_workers
from homeserver.crypto.config import parse_at_rest
from homeserver.detection.config import parse_detection, parse_server_notices
from homeserver.gdpr.config import parse_gdpr
from homeserver.gdpr.consent_config import parse_consent
from homeserver.gdpr.retention_config import parse_retention
from homeserver.push.sender.config import parse_push

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


class ConfigError(Exception):
    """The config is wrong; the message names the key. The server must not start."""


def parse_duration(value: int | str) -> float:
    """Seconds from ``30``, ``"30s"``, ``"15m"``, ``"500ms"``."""
    if isinstance(value, int):
        return float(value)
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d|w|y)?", value)
    if not m:
        raise ConfigError(f"invalid duration {value!r}")
    return int(m.group(1)) * _UNITS[m.group(2) or "s"]


def resolve_secret(value: Any, key: str) -> str | None:
    """An inline string, ``{env: NAME}`` or ``{file: PATH}``; the value is never logged."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if "env" in value:
        found = os.environ.get(value["env"])
        if found is None:
            raise ConfigError(f"{key}: environment variable {value['env']} is not set")
        return found
    path = Path(value["file"])
    try:
        return path.read_text().strip()
    except OSError as e:
        raise ConfigError(f"{key}: cannot read secret file {path}: {e.strerror}") from e


def _error_key(err: Any) -> str:
    path = ".".join(str(p) for p in err.absolute_path)
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        name = ".".join(filter(None, [path, extra[0] if extra else ""]))
        return f"unknown key '{name}'"
    if err.validator == "required":
        missing = [k for k in err.validator_value if k not in err.instance]
        name = ".".join(filter(None, [path, missing[0] if missing else ""]))
        return f"missing required key '{name}'"
    if err.validator == "type":
        return f"'{path}': expected {err.validator_value}"
    if err.validator == "anyOf":
        return f"'{path}': invalid value (wrong type or format)"
    if err.validator == "enum":
        return f"'{path}': must be one of {err.validator_value}"
    return f"'{path}': {err.message}"


SPEC_SUPPORT_ROLES = ("m.role.admin", "m.role.security")
# Common Namespaced Identifier Grammar (Java-package style); "m." is the spec's.
_NAMESPACED_ID = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)+$")
_MATRIX_USER_ID = re.compile(r"^@[^:\s]+:[^\s]+$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


def parse_support_contacts(raw: list[dict[str, Any]]) -> list[SupportContact]:
    """``well_known.support_contacts`` with the rules a JSON schema cannot word well:
    the role grammar, and at least one of ``matrix_id`` / ``email_address``."""
    contacts = []
    for i, c in enumerate(raw):
        key = f"well_known.support_contacts[{i}]"
        role = c["role"]
        if role.startswith("m.") and role not in SPEC_SUPPORT_ROLES:
            raise ConfigError(f"{key}.role: the m. namespace only has {', '.join(SPEC_SUPPORT_ROLES)}")
        if not _NAMESPACED_ID.match(role):
            raise ConfigError(f"{key}.role: must be {' or '.join(SPEC_SUPPORT_ROLES)}, or a namespaced"
                              f" identifier such as org.example.role")
        if "matrix_id" not in c and "email_address" not in c:
            raise ConfigError(f"{key}: needs matrix_id or email_address (or both)")
        if "matrix_id" in c and not _MATRIX_USER_ID.match(c["matrix_id"]):
            raise ConfigError(f"{key}.matrix_id: must be a user ID like @admin:example.org")
        if "email_address" in c and not _EMAIL.match(c["email_address"]):
            raise ConfigError(f"{key}.email_address: must be an email address")
        contacts.append(SupportContact(role=role, matrix_id=c.get("matrix_id"),
                                       email_address=c.get("email_address")))
    return contacts


def parse_media(raw: dict[str, Any], data_dir: str, rel: Any) -> MediaConfig:
    """The ``media`` section; an ``s3`` store needs an ``s3`` block, and allow-list
    entries for URL previews must be valid CIDRs."""
    import ipaddress

    s3_raw = raw.get("s3")
    store = raw.get("store", "local")
    if store == "s3" and s3_raw is None:
        raise ConfigError("media.s3: required when media.store is 's3'")
    s3 = None
    if s3_raw is not None:
        s3 = MediaS3Config(
            bucket=s3_raw["bucket"],
            endpoint_url=s3_raw.get("endpoint_url"),
            region=s3_raw.get("region"),
            access_key_id=resolve_secret(s3_raw.get("access_key_id"), "media.s3.access_key_id"),
            secret_access_key=resolve_secret(s3_raw.get("secret_access_key"),
                                             "media.s3.secret_access_key"),
            prefix=s3_raw.get("prefix", ""),
            presigned_redirect=s3_raw.get("presigned_redirect", False),
            presigned_url_lifetime=parse_duration(s3_raw.get("presigned_url_lifetime", "5m")),
        )
    up = raw.get("url_preview", {})
    for i, cidr in enumerate(up.get("ip_range_allowlist", [])):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as e:
            raise ConfigError(f"media.url_preview.ip_range_allowlist[{i}]: not an IP range") from e
    deny = raw.get("sha256_deny_list_file")
    return MediaConfig(
        store=store,
        media_dir=rel(raw.get("media_dir", os.path.join(data_dir, "media"))),
        max_upload_size=raw.get("max_upload_size", 50 * 1024 * 1024),
        allowed_content_types=list(raw.get("allowed_content_types", ["*/*"])),
        user_quota=raw.get("user_quota", 1024 * 1024 * 1024),
        legacy_unauthenticated_download=raw.get("legacy_unauthenticated_download", True),
        unused_expiration=parse_duration(raw.get("unused_expiration", "24h")),
        max_pending_uploads=raw.get("max_pending_uploads", 5),
        builtin_scanner=raw.get("builtin_scanner", True),
        sha256_deny_list_file=rel(deny) if deny else None,
        max_image_pixels=raw.get("max_image_pixels", 32 * 1024 * 1024),
        remote_cache_max_bytes=raw.get("remote_cache_max_bytes", 1024 * 1024 * 1024),
        thumbnail_sizes=tuple(
            ThumbnailSize(t["width"], t["height"], t.get("method", "scale"))
            for t in raw["thumbnail_sizes"]) if "thumbnail_sizes" in raw else DEFAULT_THUMBNAIL_SIZES,
        s3=s3,
        url_preview=UrlPreviewConfig(
            enabled=up.get("enabled", False),
            ip_range_allowlist=list(up.get("ip_range_allowlist", [])),
            max_size=up.get("max_size", 1024 * 1024),
            timeout=parse_duration(up.get("timeout", "10s")),
        ),
    )


def parse_rate_limits(raw: dict[str, Any]) -> RateLimitsConfig:
    """``rate_limits``: each class given replaces its default (both keys are required)."""
    pen = raw.get("invite_penalty", {})
    return RateLimitsConfig(
        **{name: RateLimitConfig(**{**default, **raw.get(name, {})})
           for name, default in DEFAULT_RATE_LIMITS.items()},
        backend=raw.get("backend", "memory"),
        exempt_admins=raw.get("exempt_admins", True),
        invite_penalty=InvitePenaltyConfig(
            factor=float(pen.get("factor", 2.0)),
            max_multiplier=float(pen.get("max_multiplier", 64.0)),
            half_life=parse_duration(pen.get("half_life", "1h")),
        ),
    )


def parse_redis(raw: dict[str, Any] | None) -> RedisConfig | None:
    """``redis``: where the shared rate-limit budgets live (None: no Redis)."""
    if raw is None:
        return None
    return RedisConfig(
        host=raw.get("host", "127.0.0.1"),
        port=raw.get("port", 6379),
        db=raw.get("db", 0),
        password=resolve_secret(raw.get("password"), "redis.password"),
        timeout=parse_duration(raw.get("timeout", "500ms")),
        key_prefix=raw.get("key_prefix", "parley:"),
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping. PyYAML keeps the last
    one silently: a second ``rate_limits:`` appended to a generated config would drop
    the first one's settings without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the schema refuses it anyway
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep)


def load_config(path: str | os.PathLike[str]) -> Config:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    return parse_config(raw or {}, base_dir=Path(path).resolve().parent)


def parse_config(raw: Any, base_dir: Path | None = None) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError("config must be a mapping")
    validator = Draft202012Validator(CONFIG_SCHEMA)
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("invalid config: " + "; ".join(_error_key(e) for e in errors))
    base = base_dir or Path.cwd()

    def rel(p: str) -> str:
        return str(p if os.path.isabs(p) else base / p)

    server_name = raw["server_name"]
    if raw.get("rate_limits", {}).get("backend") == "redis" and "redis" not in raw:
        raise ConfigError("rate_limits.backend: 'redis' needs a 'redis' section")
    data_dir = rel(raw.get("data_dir", "data"))

    listeners = [
        ListenerConfig(
            port=li["port"],
            bind_addresses=li.get("bind_addresses", ["127.0.0.1"]),
            resources=li.get("resources", ["client", "federation"]),
            x_forwarded=li.get("x_forwarded", False),
            tls_certificate_path=rel(li["tls"]["certificate_path"]) if "tls" in li else None,
            tls_private_key_path=rel(li["tls"]["private_key_path"]) if "tls" in li else None,
            tls_min_version=li.get("tls", {}).get("min_version", "1.2"),
        )
        for li in raw.get("listeners", [{"port": 8008}])
    ]

    db = raw.get("database", {"engine": "sqlite"})
    database = DatabaseConfig(
        engine=db["engine"],
        path=rel(db.get("path", os.path.join(data_dir, "parley.db"))),
        host=db.get("host", "127.0.0.1"),
        port=db.get("port", 5432),
        user=db.get("user", "parley"),
        password=resolve_secret(db.get("password"), "database.password"),
        database=db.get("database", "parley"),
        schema=db.get("schema"),
        pool_min=db.get("pool_min", 1),
        pool_max=db.get("pool_max", 1 if db["engine"] == "sqlite" else 10),
    )

    au = raw.get("auth", {})
    keys = [
        SigningKeyConfig(
            kid=k["kid"],
            algorithm=k["algorithm"],
            key=resolve_secret(k["key"], f"auth.signing_keys[{i}].key") or "",
            verify_only=k.get("verify_only", False),
        )
        for i, k in enumerate(au.get("signing_keys", []))
    ]
    if not keys:
        raise ConfigError("auth.signing_keys: at least one signing key is required "
                          "(run 'parley generate-config' to create one)")
    active = au.get("active_kid", next((k.kid for k in keys if not k.verify_only), None))
    if active is None or active not in {k.kid for k in keys if not k.verify_only}:
        raise ConfigError("auth.active_kid: must name a signing key that is not verify_only")
    auth = AuthConfig(
        issuer=au.get("issuer", f"https://{server_name}"),
        audience=au.get("audience", server_name),
        access_token_lifetime=parse_duration(au.get("access_token_lifetime", "15m")),
        access_token_lifetime_without_refresh=parse_duration(
            au.get("access_token_lifetime_without_refresh", "365d")),
        refresh_token_lifetime=parse_duration(au.get("refresh_token_lifetime", "30d")),
        clock_skew=parse_duration(au.get("clock_skew", "60s")),
        # With workers it bounds how late a revocation whose Redis message was lost
        # reaches another process (homeserver/replication/__init__.py): 1 s by default.
        session_cache_ttl=parse_duration(au.get(
            "session_cache_ttl", REVOCATION_BOUND_DEFAULT if raw.get("workers") else "30s")),
        signing_keys=keys,
        active_kid=active,
    )

    ph = raw.get("password_hashing", {})
    hashing = PasswordHashingConfig(
        time_cost=ph.get("time_cost", 1),
        memory_cost_kib=ph.get("memory_cost_kib", 64 * 1024),
        parallelism=ph.get("parallelism", 2),
        max_pending=ph.get("max_pending"),
    )
    pp = raw.get("password_policy", {})
    policy = PasswordPolicyConfig(
        enabled=pp.get("enabled", True),
        min_length=pp.get("min_length", 10),
        require_digit=pp.get("require_digit", False),
        require_symbol=pp.get("require_symbol", False),
        require_lowercase=pp.get("require_lowercase", False),
        require_uppercase=pp.get("require_uppercase", False),
        breached_list_file=rel(pp["breached_list_file"]) if "breached_list_file" in pp else None,
    )
    rg = raw.get("registration", {})
    registration = RegistrationConfig(
        enabled=rg.get("enabled", False),
        requires_token=rg.get("requires_token", False),
        allow_guests=rg.get("allow_guests", False),
        shared_secret=resolve_secret(rg.get("shared_secret"), "registration.shared_secret"),
        reserved_usernames=rg.get("reserved_usernames", []),
        logout_devices_on_password_change=rg.get("logout_devices_on_password_change", True),
    )
    for pattern in registration.reserved_usernames:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"registration.reserved_usernames: bad regex {pattern!r}: {e}") from e

    wk = raw.get("well_known", {})
    public_baseurl = raw.get("public_baseurl", f"https://{server_name}/")
    if not public_baseurl.endswith("/"):
        public_baseurl += "/"
    well_known = WellKnownConfig(
        client_base_url=wk.get("client_base_url", public_baseurl),
        server=wk.get("server"),
        serve_client=wk.get("serve_client", True),
        serve_server=wk.get("serve_server", True),
        support_contacts=parse_support_contacts(wk.get("support_contacts", [])),
        support_page=wk.get("support_page"),
    )
    return Config(
        server_name=server_name,
        public_baseurl=public_baseurl,
        data_dir=data_dir,
        listeners=listeners,
        database=database,
        auth=auth,
        password_hashing=hashing,
        password_policy=policy,
        registration=registration,
        max_request_body_size=raw.get("http", {}).get("max_request_body_size", 10 * 1024 * 1024),
        well_known=well_known,
        at_rest_key=resolve_secret(raw.get("secrets", {}).get("at_rest_key"), "secrets.at_rest_key"),
        log_level=raw.get("logging", {}).get("level", "INFO"),
        log_format=raw.get("logging", {}).get("format", "json"),
        federation_enabled=raw.get("federation", {}).get("enabled", False),
        plugins=[p if isinstance(p, str) else p["name"] for p in raw.get("plugins", [])],
        plugin_configs={p["name"]: dict(p.get("config") or {}) for p in raw.get("plugins", [])
                        if not isinstance(p, str)},
        plugin_timeouts={k: parse_duration(v) for k, v in
                         raw.get("plugins_config", {}).get("timeouts", {}).items()},
        default_room_version=raw.get("rooms", {}).get("default_version", "10"),
        signing_key_path=rel(raw.get("signing_key_path", os.path.join(data_dir, "signing.key"))),
        presence_enabled=raw.get("presence", {}).get("enabled", True),
        voip=VoipConfig(
            turn_uris=list(raw.get("voip", {}).get("turn_uris", [])),
            turn_shared_secret=resolve_secret(raw.get("voip", {}).get("turn_shared_secret"),
                                              "voip.turn_shared_secret"),
            turn_user_lifetime=parse_duration(raw.get("voip", {}).get("turn_user_lifetime", "1h")),
        ),
        search_enabled=raw.get("search", {}).get("enabled", False),
        e2ee_policy=raw.get("e2ee", {}).get("policy", "off") or "off",
        media=parse_media(raw.get("media", {}), data_dir, rel),
        rate_limits=parse_rate_limits(raw.get("rate_limits", {})),
        redis=parse_redis(raw.get("redis")),
        shutdown_grace_period_s=float(raw.get("shutdown", {}).get("grace_period_s", 10)),
        audit=parse_audit(raw.get("audit", {})),
        gdpr=parse_gdpr(raw.get("gdpr", {})),
        user_consent=parse_consent(raw.get("user_consent"), resolve_secret(
            raw.get("form_secret"), "form_secret"), rel),
        retention=parse_retention(raw.get("retention")),
        mfa=parse_mfa(raw.get("mfa", {})),
        push=parse_push(raw.get("push", {})),
        server_notices=parse_server_notices(raw.get("server_notices", {})),
        detection=parse_detection(raw.get("detection", {})),
        identity_servers=parse_identity_servers(raw.get("identity_servers", {})),
        app_service_config_files=[rel(p) for p in raw.get("app_service_config_files", [])],
        admin_roles=_parse_admin_roles(raw.get("admin_roles")),
        at_rest=parse_at_rest(raw.get("secrets", {}),
                              search_enabled=raw.get("search", {}).get("enabled", False)),
        login_tokens=parse_login_tokens(raw.get("login_tokens", {})),
        event_cache_size=int(raw.get("caches", {}).get("event_cache_size", 100_000)),
        state_cache_entries=int(raw.get("caches", {}).get("state_cache_entries", 250_000)),
        gc_thresholds=_gc_thresholds(raw.get("gc_thresholds", (50_000, 20, 10))),
        federation=parse_federation(raw.get("federation", {}), rel),
        federation_blocked_servers=tuple(
            n.lower() for n in raw.get("federation", {}).get("blocked_servers", [])),
        admin_reports_show_content=raw.get("admin", {}).get("reports_show_content", False),
        workers=parse_stream_writers(
            parse_workers(raw.get("workers"), rel, database.engine, "redis" in raw),
            raw.get("stream_writers"), bool(raw.get("federation", {}).get("enabled", False))),
    )


def _gc_thresholds(raw: list[int] | tuple[int, ...]) -> tuple[int, int, int]:
    """``gc_thresholds``: three integers (the schema checks their count and range)."""
    young, middle, old = (int(x) for x in raw)
    return young, middle, old


# Bounds of login_tokens.lifetime: a token long enough to type or scan, short enough
# that a leaked one is soon useless.
LOGIN_TOKEN_LIFETIME_BOUNDS = (5.0, 900.0)


def parse_login_tokens(raw: dict[str, Any]) -> LoginTokensConfig:
    """``login_tokens``: ``enabled`` (default false), ``lifetime`` (default 2m, 5s-15m)."""
    lifetime = parse_duration(raw.get("lifetime", "2m"))
    low, high = LOGIN_TOKEN_LIFETIME_BOUNDS
    if not low <= lifetime <= high:
        raise ConfigError(f"login_tokens.lifetime: must be between {low:g}s and {high:g}s")
    return LoginTokensConfig(enabled=raw.get("enabled", False), lifetime=lifetime)


def _parse_admin_roles(raw: dict[str, Any] | None) -> dict[str, frozenset[str]]:
    from homeserver.auth.roles import parse_admin_roles

    try:
        return parse_admin_roles(raw)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def parse_identity_servers(raw: dict[str, Any]) -> IdentityServersConfig:
    """``identity_servers``: entries are lower-cased; allow-list entries must be CIDRs."""
    import ipaddress

    for i, cidr in enumerate(raw.get("ip_range_allowlist", [])):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as e:
            raise ConfigError(f"identity_servers.ip_range_allowlist[{i}]: not an IP range") from e
    return IdentityServersConfig(
        trusted=[t.lower() for t in raw.get("trusted", [])],
        ip_range_allowlist=list(raw.get("ip_range_allowlist", [])),
        timeout=parse_duration(raw.get("timeout", "10s")),
        max_response_size=raw.get("max_response_size", 64 * 1024),
        plain_http=raw.get("plain_http", False),
        tls_verify=raw.get("tls_verify", True),
    )

"""Typed, defaulted configuration objects; built only by the loader."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from homeserver.audit.config import AuditConfig


@dataclass(frozen=True)
class ListenerConfig:
    port: int
    bind_addresses: list[str]
    resources: list[str]
    x_forwarded: bool = False
    tls_certificate_path: str | None = None
    tls_private_key_path: str | None = None
    tls_min_version: str = "1.2"


@dataclass(frozen=True)
class DatabaseConfig:
    engine: str
    path: str = "parley.db"
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "parley"
    password: str | None = field(default=None, repr=False)
    database: str = "parley"
    schema: str | None = None
    pool_min: int = 1
    pool_max: int = 1


@dataclass(frozen=True)
class SigningKeyConfig:
    kid: str
    algorithm: str
    key: str = field(repr=False)
    verify_only: bool = False


@dataclass(frozen=True)
class AuthConfig:
    issuer: str
    audience: str
    access_token_lifetime: float
    access_token_lifetime_without_refresh: float
    refresh_token_lifetime: float
    clock_skew: float
    session_cache_ttl: float
    signing_keys: list[SigningKeyConfig]
    active_kid: str


@dataclass(frozen=True)
class PasswordHashingConfig:
    time_cost: int = 1
    memory_cost_kib: int = 64 * 1024
    parallelism: int = 2
    # Hashes queued or running at once; past it requests get 429. None: 4 x CPU cores.
    max_pending: int | None = None


@dataclass(frozen=True)
class PasswordPolicyConfig:
    enabled: bool = True
    min_length: int = 10
    require_digit: bool = False
    require_symbol: bool = False
    require_lowercase: bool = False
    require_uppercase: bool = False
    breached_list_file: str | None = None


@dataclass(frozen=True)
class RateLimitConfig:
    """A token bucket: ``burst`` requests at once, refilled at ``per_second``."""

    per_second: float
    burst: int


# Defaults per PRODUCT.md (auth <= 5 req/s per IP); the bursts fit a client's sign-up.
DEFAULT_RATE_LIMITS: dict[str, dict[str, Any]] = {
    "login": {"per_second": 5, "burst": 10},
    "registration": {"per_second": 5, "burst": 10},
    "uia_password": {"per_second": 1, "burst": 5},
}


@dataclass(frozen=True)
class RateLimitsConfig:
    """Per-IP limits on /login and /register, per-user on UIA password checks."""

    login: RateLimitConfig = field(
        default_factory=lambda: RateLimitConfig(**DEFAULT_RATE_LIMITS["login"]))
    registration: RateLimitConfig = field(
        default_factory=lambda: RateLimitConfig(**DEFAULT_RATE_LIMITS["registration"]))
    uia_password: RateLimitConfig = field(
        default_factory=lambda: RateLimitConfig(**DEFAULT_RATE_LIMITS["uia_password"]))


@dataclass(frozen=True)
class RegistrationConfig:
    enabled: bool = False
    requires_token: bool = False
    allow_guests: bool = False
    shared_secret: str | None = field(default=None, repr=False)
    reserved_usernames: list[str] = field(default_factory=list)
    logout_devices_on_password_change: bool = True


@dataclass(frozen=True)
class SupportContact:
    """One admin contact for ``/.well-known/matrix/support``."""

    role: str
    matrix_id: str | None = None
    email_address: str | None = None


@dataclass(frozen=True)
class WellKnownConfig:
    client_base_url: str
    server: str | None = None
    serve_client: bool = True
    serve_server: bool = True
    support_contacts: list[SupportContact] = field(default_factory=list)
    support_page: str | None = None


@dataclass(frozen=True)
class VoipConfig:
    """TURN for /voip/turnServer: time-limited credentials from a shared secret."""

    turn_uris: list[str] = field(default_factory=list)
    turn_shared_secret: str | None = field(default=None, repr=False)
    turn_user_lifetime: float = 3600.0


@dataclass(frozen=True)
class MediaS3Config:
    """An S3-compatible bucket; credentials usually come from ``{env: ...}`` secrets."""

    bucket: str
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    prefix: str = ""
    presigned_redirect: bool = False
    presigned_url_lifetime: float = 300.0


@dataclass(frozen=True)
class UrlPreviewConfig:
    """Off by default: fetching arbitrary URLs for clients is an SSRF risk."""

    enabled: bool = False
    ip_range_allowlist: list[str] = field(default_factory=list)
    max_size: int = 1024 * 1024
    timeout: float = 10.0


@dataclass(frozen=True)
class ThumbnailSize:
    """One entry of ``media.thumbnail_sizes``: thumbnails are only ever made at these."""

    width: int
    height: int
    method: str  # scale | crop


# Synapse's default thumbnail_sizes.
DEFAULT_THUMBNAIL_SIZES = (
    ThumbnailSize(32, 32, "crop"), ThumbnailSize(96, 96, "crop"),
    ThumbnailSize(320, 240, "scale"), ThumbnailSize(640, 480, "scale"),
    ThumbnailSize(800, 600, "scale"),
)


@dataclass(frozen=True)
class MediaConfig:
    store: str = "local"
    media_dir: str = "media"
    max_upload_size: int = 50 * 1024 * 1024
    allowed_content_types: list[str] = field(default_factory=lambda: ["*/*"])
    user_quota: int = 1024 * 1024 * 1024
    legacy_unauthenticated_download: bool = True
    unused_expiration: float = 86400.0
    max_pending_uploads: int = 5
    builtin_scanner: bool = True
    sha256_deny_list_file: str | None = None
    max_image_pixels: int = 32 * 1024 * 1024
    thumbnail_sizes: tuple[ThumbnailSize, ...] = DEFAULT_THUMBNAIL_SIZES
    s3: MediaS3Config | None = None
    url_preview: UrlPreviewConfig = field(default_factory=UrlPreviewConfig)


@dataclass(frozen=True)
class Config:
    server_name: str
    public_baseurl: str
    data_dir: str
    listeners: list[ListenerConfig]
    database: DatabaseConfig
    auth: AuthConfig
    password_hashing: PasswordHashingConfig
    password_policy: PasswordPolicyConfig
    registration: RegistrationConfig
    max_request_body_size: int
    well_known: WellKnownConfig
    at_rest_key: str | None = field(default=None, repr=False)
    log_level: str = "INFO"
    log_format: str = "json"
    federation_enabled: bool = False
    plugins: list[str] = field(default_factory=list)
    default_room_version: str = "10"
    signing_key_path: str = "signing.key"
    presence_enabled: bool = True
    voip: VoipConfig = field(default_factory=VoipConfig)
    search_enabled: bool = False
    e2ee_policy: str = "off"  # off | encrypted_rooms | everywhere (plugins/e2ee_only.py)
    media: MediaConfig = field(default_factory=MediaConfig)
    rate_limits: RateLimitsConfig = field(default_factory=RateLimitsConfig)
    # SIGTERM: how long in-flight requests may take to finish before the process exits.
    shutdown_grace_period_s: float = 10.0
    audit: AuditConfig = field(default_factory=AuditConfig)

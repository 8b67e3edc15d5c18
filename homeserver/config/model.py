"""Typed, defaulted configuration objects; built only by the loader."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from homeserver.audit.config import AuditConfig
from homeserver.auth.mfa_config import MfaConfig
from homeserver.config.federation import FederationConfig
from homeserver.config.workers import WorkersConfig
from homeserver.detection.config import DetectionConfig, ServerNoticesConfig
from homeserver.gdpr.config import GdprConfig
from homeserver.gdpr.consent_config import ConsentConfig
from homeserver.gdpr.retention_config import RetentionConfig
from homeserver.push.sender.config import PushConfig


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


# Defaults per PRODUCT.md (auth <= 5 req/s per IP, messaging 60/min per user); the
# bursts fit an honest client (a sign-up, a client start-up, pasting a paragraph as
# several messages). Every class is a token bucket; how each is keyed is declared per
# route in homeserver/http/rate_classes.py. media_upload counts BYTES, not requests.
DEFAULT_RATE_LIMITS: dict[str, dict[str, Any]] = {
    "login": {"per_second": 5, "burst": 10},  # per client IP
    "login_account": {"per_second": 0.2, "burst": 20},  # per account named in the body
    "registration": {"per_second": 5, "burst": 10},  # per IP (also /register/available)
    "uia_password": {"per_second": 1, "burst": 5},  # per user being authenticated
    "message": {"per_second": 1, "burst": 30},  # per user: 60/min
    "state": {"per_second": 1, "burst": 30},  # per user
    "invite": {"per_second": 0.2, "burst": 20},  # per sender (times the penalty)
    "invite_target": {"per_second": 0.1, "burst": 5},  # per invitee
    "join": {"per_second": 0.5, "burst": 20},  # per user (join, knock, createRoom)
    "media_upload": {"per_second": 4 * 1024 * 1024, "burst": 256 * 1024 * 1024},  # bytes/user
    "key_claim": {"per_second": 5, "burst": 50},  # per user
    "to_device": {"per_second": 10, "burst": 100},  # per user
    # POST /login/get_token, per user: every UIA round trip counts (2 requests a token,
    # 3 with MFA), so a few tokens at once, then one a minute (the spec suggests 1/min).
    "login_token": {"per_second": 1 / 30, "burst": 6},
    "api": {"per_second": 50, "burst": 300},  # every request, per client IP
    # Every X-Matrix-authenticated federation request, per origin server (not IP): above
    # what an honest server sends (Synapse's rc_federation starts delaying past 10/s).
    "federation_origin": {"per_second": 50, "burst": 500},
}


@dataclass(frozen=True)
class InvitePenaltyConfig:
    """Escalating delays for a sender whose invites keep being refused or rejected:
    each strike multiplies the cost of that sender's invites by ``factor`` (up to
    ``max_multiplier``); strikes halve every ``half_life`` seconds."""

    factor: float = 2.0
    max_multiplier: float = 64.0
    half_life: float = 3600.0


@dataclass(frozen=True)
class RateLimitsConfig:
    """The per-action limits, the backend that counts them and who is exempt."""

    login: RateLimitConfig = field(
        default_factory=lambda: RateLimitConfig(**DEFAULT_RATE_LIMITS["login"]))
    login_account: RateLimitConfig = field(
        default_factory=lambda: RateLimitConfig(**DEFAULT_RATE_LIMITS["login_account"]))
    registration: RateLimitConfig = field(
        default_factory=lambda: RateLimitConfig(**DEFAULT_RATE_LIMITS["registration"]))
    uia_password: RateLimitConfig = field(
        default_factory=lambda: RateLimitConfig(**DEFAULT_RATE_LIMITS["uia_password"]))
    message: RateLimitConfig = field(
        default_factory=lambda: RateLimitConfig(**DEFAULT_RATE_LIMITS["message"]))
    state: RateLimitConfig = field(
        default_factory=lambda: RateLimitConfig(**DEFAULT_RATE_LIMITS["state"]))
    invite: RateLimitConfig = field(
        default_factory=lambda: RateLimitConfig(**DEFAULT_RATE_LIMITS["invite"]))
    invite_target: RateLimitConfig = field(
        default_factory=lambda: RateLimitConfig(**DEFAULT_RATE_LIMITS["invite_target"]))
    join: RateLimitConfig = field(
        default_factory=lambda: RateLimitConfig(**DEFAULT_RATE_LIMITS["join"]))
    media_upload: RateLimitConfig = field(
        default_factory=lambda: RateLimitConfig(**DEFAULT_RATE_LIMITS["media_upload"]))
    key_claim: RateLimitConfig = field(
        default_factory=lambda: RateLimitConfig(**DEFAULT_RATE_LIMITS["key_claim"]))
    to_device: RateLimitConfig = field(
        default_factory=lambda: RateLimitConfig(**DEFAULT_RATE_LIMITS["to_device"]))
    login_token: RateLimitConfig = field(
        default_factory=lambda: RateLimitConfig(**DEFAULT_RATE_LIMITS["login_token"]))
    api: RateLimitConfig = field(
        default_factory=lambda: RateLimitConfig(**DEFAULT_RATE_LIMITS["api"]))
    federation_origin: RateLimitConfig = field(
        default_factory=lambda: RateLimitConfig(**DEFAULT_RATE_LIMITS["federation_origin"]))
    backend: str = "memory"  # memory | redis (needs the ``redis`` section)
    exempt_admins: bool = True
    invite_penalty: InvitePenaltyConfig = field(default_factory=InvitePenaltyConfig)

    def limit(self, name: str) -> RateLimitConfig:
        """The configured limit of class ``name`` (KeyError for an unknown class)."""
        if name not in DEFAULT_RATE_LIMITS:
            raise KeyError(name)
        value: RateLimitConfig = getattr(self, name)
        return value


@dataclass(frozen=True)
class LoginTokensConfig:
    """``login_tokens``: m.login.token login with POST /login/get_token (off by default,
    as Synapse's ``login_via_existing_session``); ``lifetime`` in seconds."""

    enabled: bool = False
    lifetime: float = 120.0


@dataclass(frozen=True)
class RedisConfig:
    """The Redis that several Parley processes share (rate-limit budgets)."""

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    password: str | None = field(default=None, repr=False)
    timeout: float = 0.5  # per command; past it the caller falls back
    key_prefix: str = "parley:"  # several deployments may share one Redis


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
class IdentityServersConfig:
    """Identity servers Parley may talk to (3PID invites, bind/unbind). Empty by default:
    ``id_server`` comes from clients, so only listed ``host[:port]`` entries are ever
    contacted (a bare host allows any port)."""

    trusted: list[str] = field(default_factory=list)
    ip_range_allowlist: list[str] = field(default_factory=list)
    timeout: float = 10.0
    max_response_size: int = 64 * 1024
    plain_http: bool = False  # tests and local development only
    tls_verify: bool = True


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
    # Other servers' media cached for local clients (federation), least recently used
    # evicted past this many bytes.
    remote_cache_max_bytes: int = 1024 * 1024 * 1024
    thumbnail_sizes: tuple[ThumbnailSize, ...] = DEFAULT_THUMBNAIL_SIZES
    s3: MediaS3Config | None = None
    url_preview: UrlPreviewConfig = field(default_factory=UrlPreviewConfig)


@dataclass(frozen=True)
class AtRestConfig:
    """``secrets``: key-encryption keys for secrets at rest (homeserver/crypto/at_rest.py).
    ``keys`` are (id, 32 raw bytes); ``active`` seals new values; the others only open
    values sealed before a rotation. Empty: secrets are stored unencrypted."""

    keys: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)
    active: str | None = None
    accept_plaintext: bool = True
    # Optional sealing of stored event JSON / profile fields (homeserver/crypto/content.py).
    encrypt_event_content: bool = False
    encrypt_profiles: bool = False


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
    plugins: list[str] = field(default_factory=list)  # names, in load order
    # Each plugin's own config (``plugins: [{name, config}]``), checked by the plugin's
    # CONFIG_SCHEMA at start-up; and per-hook timeouts (``plugins_config.timeouts``).
    plugin_configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    plugin_timeouts: dict[str, float] = field(default_factory=dict)
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
    gdpr: GdprConfig = field(default_factory=GdprConfig)  # homeserver/gdpr/config.py
    # Consent tracking (None: off) and message retention (homeserver/gdpr/*_config.py).
    user_consent: ConsentConfig | None = None
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    mfa: MfaConfig = field(default_factory=MfaConfig)
    push: PushConfig = field(default_factory=PushConfig)
    server_notices: ServerNoticesConfig = field(default_factory=ServerNoticesConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    redis: RedisConfig | None = None  # the ``redis`` section; None when absent
    identity_servers: IdentityServersConfig = field(default_factory=IdentityServersConfig)
    # Paths of application service registration files (homeserver/appservice/config.py).
    app_service_config_files: list[str] = field(default_factory=list)
    # Custom admin roles (homeserver/auth/roles.py): name -> permissions.
    admin_roles: dict[str, frozenset[str]] = field(default_factory=dict)
    login_tokens: LoginTokensConfig = field(default_factory=LoginTokensConfig)
    # ``caches``: decoded events and state groups kept in memory (storage/stores/
    # event_cache.py, state_reads.py StateGroupCache); 0 turns either off.
    event_cache_size: int = 100_000
    state_cache_entries: int = 250_000
    # ``gc_thresholds``: the cyclic garbage collector's (gc.set_threshold), as Synapse's
    # option of that name. CPython's 700 allocations per young collection make a large
    # heap (the caches) be walked over and over: an initial /sync of 20,000 state events
    # spent a quarter of its time in the collector.
    gc_thresholds: tuple[int, int, int] = (50_000, 20, 10)
    at_rest: AtRestConfig = field(default_factory=AtRestConfig)
    # The ``federation`` section (homeserver/config/federation.py); ``enabled`` is also
    # ``federation_enabled`` above.
    federation: FederationConfig = field(default_factory=FederationConfig)
    # federation.blocked_servers (lower-cased); admin.reports_show_content (issue 15).
    federation_blocked_servers: tuple[str, ...] = ()
    admin_reports_show_content: bool = False
    # Worker processes and this process's role (homeserver/config/workers.py).
    workers: WorkersConfig = field(default_factory=WorkersConfig)

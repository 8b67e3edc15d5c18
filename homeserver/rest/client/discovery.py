"""Discovery: /versions, /.well-known/matrix/{client,server,support}, /capabilities, /health."""

from __future__ import annotations

from typing import Any

from homeserver.config.model import Config
from homeserver.events.room_versions import ALL_ROOM_VERSIONS
from homeserver.http.errors import not_found
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest

# Spec versions whose required client-server endpoints are all routed. Clients pick
# features by version (v1.7 async upload, v1.11 authenticated media, ...), so a
# version left out costs users features; one listed wrongly breaks them.
# SPEC_VERSION_ENDPOINTS names, per version, the endpoints that version added (from the
# spec's x-addedInMatrixVersion); tests/rest/test_versions.py checks every one is routed.
# Optional endpoints are left out: POST /_matrix/client/v1/login/get_token (v1.7, only
# with the m.get_login_token capability: routed only with login_tokens.enabled, as
# Synapse does not route it by default either) and GET /_matrix/client/v1/auth_metadata (v1.15, 404
# M_UNRECOGNIZED is the spec's answer of a server without OAuth 2.0).
# Not advertised: v1.16 (/sync ``use_state_after``/``state_after`` is not implemented)
# and later (v1.18 adds the /_matrix/client/v1/admin/{lock,suspend} endpoints).
SPEC_VERSION_ENDPOINTS: dict[str, list[tuple[str, str]]] = {
    "r0.6.1": [("GET", "/_matrix/client/r0/sync"), ("POST", "/_matrix/client/r0/login")],
    "v1.1": [("POST", "/_matrix/client/v3/keys/device_signing/upload"),
             ("POST", "/_matrix/client/v3/keys/signatures/upload"),
             ("GET", "/_matrix/client/v3/room_keys/version"),
             ("PUT", "/_matrix/client/v3/room_keys/keys"),
             ("POST", "/_matrix/client/v3/knock/{roomIdOrAlias}")],
    "v1.2": [("GET", "/_matrix/client/v1/register/m.login.registration_token/validity"),
             ("GET", "/_matrix/client/v1/rooms/{roomId}/hierarchy")],
    "v1.3": [("POST", "/_matrix/client/v3/refresh")],
    "v1.4": [("GET", "/_matrix/client/v1/rooms/{roomId}/threads")],
    "v1.5": [],
    "v1.6": [("GET", "/_matrix/client/v1/rooms/{roomId}/timestamp_to_event")],
    "v1.7": [("POST", "/_matrix/media/v1/create"),
             ("PUT", "/_matrix/media/v3/upload/{serverName}/{mediaId}"),
             ("POST", "/_matrix/client/v1/appservice/{appserviceId}/ping")],
    "v1.8": [],  # room version 11
    "v1.9": [],
    "v1.10": [("GET", "/.well-known/matrix/support")],
    "v1.11": [("GET", "/_matrix/client/v1/media/config"),
              ("GET", "/_matrix/client/v1/media/download/{serverName}/{mediaId}"),
              ("GET", "/_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}"),
              ("GET", "/_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}"),
              ("GET", "/_matrix/client/v1/media/preview_url")],
    "v1.12": [],
    "v1.13": [("POST", "/_matrix/client/v3/rooms/{roomId}/report")],
    "v1.14": [("POST", "/_matrix/client/v3/users/{userId}/report")],
    "v1.15": [("GET", "/_matrix/client/v1/room_summary/{roomIdOrAlias}")],
}
SUPPORTED_VERSIONS = list(SPEC_VERSION_ENDPOINTS)
# Only flags for behaviour we have. Both are stable in the spec; the flags help clients
# that look for them instead of the version (Element did for authenticated media), and
# extended profiles (v1.16) are served although v1.16 as a whole is not advertised.
UNSTABLE_FEATURES: dict[str, bool] = {
    "org.matrix.msc3916.stable": True,  # authenticated media
    "uk.tcpip.msc4133.stable": True,  # extended profile fields (m.tz, custom keys, DELETE)
    "org.matrix.simplified_msc3575": True,  # simplified sliding sync (MSC4186)
}
# Element hides its encryption toggle when these say new rooms are always encrypted.
_E2EE_FORCED = ("io.element.e2ee_forced.public", "io.element.e2ee_forced.private",
                "io.element.e2ee_forced.trusted_private")


def unstable_features(config: Config) -> dict[str, bool]:
    """The flags of :data:`UNSTABLE_FEATURES`, plus the forced-encryption ones when the
    e2ee policy encrypts every new room (plugins/e2ee_only.py, ``everywhere``)."""
    flags = dict(UNSTABLE_FEATURES)
    if config.e2ee_policy == "everywhere":
        flags.update(dict.fromkeys(_E2EE_FORCED, True))
    return flags


class DiscoveryServlets:
    def __init__(self, config: Config) -> None:
        self._config = config
        self._versions = {"versions": SUPPORTED_VERSIONS,
                          "unstable_features": unstable_features(config)}

    def register(self, router: Router) -> None:
        router.add("GET", "/_matrix/client/versions", self.versions, auth="none")
        router.add("GET", "/.well-known/matrix/client", self.well_known_client, auth="none")
        router.add("GET", "/.well-known/matrix/server", self.well_known_server, auth="none")
        router.add("GET", "/.well-known/matrix/support", self.well_known_support, auth="none")
        router.add("GET", client_paths("/capabilities"), self.capabilities)
        router.add("GET", "/health", self.health, auth="none")

    async def versions(self, req: ApiRequest) -> tuple[int, Any]:
        return 200, self._versions

    async def well_known_client(self, req: ApiRequest) -> tuple[int, Any]:
        wk = self._config.well_known
        if not wk.serve_client:
            raise not_found("No .well-known client configuration")
        return 200, {"m.homeserver": {"base_url": wk.client_base_url}}

    async def well_known_server(self, req: ApiRequest) -> tuple[int, Any]:
        wk = self._config.well_known
        if not wk.serve_server or not wk.server:
            raise not_found("No .well-known server configuration")
        return 200, {"m.server": wk.server}

    async def well_known_support(self, req: ApiRequest) -> tuple[int, Any]:
        """Admin contacts and support page (spec: at least one of them, else 404)."""
        wk = self._config.well_known
        if not wk.support_contacts and not wk.support_page:
            raise not_found("No support information configured")
        body: dict[str, Any] = {}
        if wk.support_contacts:
            body["contacts"] = [
                {k: v for k, v in (("matrix_id", c.matrix_id), ("email_address", c.email_address),
                                   ("role", c.role)) if v is not None}
                for c in wk.support_contacts
            ]
        if wk.support_page:
            body["support_page"] = wk.support_page
        return 200, body

    async def capabilities(self, req: ApiRequest) -> tuple[int, Any]:
        return 200, {
            "capabilities": {
                "m.change_password": {"enabled": True},
                "m.set_displayname": {"enabled": True},
                "m.set_avatar_url": {"enabled": True},
                "m.3pid_changes": {"enabled": False},
                # Only when the endpoint is routed (login_tokens.enabled), as the spec asks.
                "m.get_login_token": {"enabled": self._config.login_tokens.enabled},
                "m.profile_fields": {"enabled": True},
                "m.room_versions": {
                    "default": self._config.default_room_version,
                    "available": {v.identifier: v.stability for v in ALL_ROOM_VERSIONS},
                },
            }
        }

    async def health(self, req: ApiRequest) -> tuple[int, Any]:
        req.raw.setHeader("Content-Type", "text/plain; charset=utf-8")
        return 200, b"OK"

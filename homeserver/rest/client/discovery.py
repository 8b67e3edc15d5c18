"""Discovery: /versions, /.well-known/matrix/{client,server,support}, /capabilities, /health."""

from __future__ import annotations

from typing import Any

from homeserver.config.model import Config
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.http.errors import not_found
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest

# Spec versions whose client-server surface we serve (accounts, sessions, devices,
# profile, account data, filters, refresh tokens, registration tokens).
SUPPORTED_VERSIONS = ["r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6"]
UNSTABLE_FEATURES: dict[str, bool] = {}


class DiscoveryServlets:
    def __init__(self, config: Config) -> None:
        self._config = config

    def register(self, router: Router) -> None:
        router.add("GET", "/_matrix/client/versions", self.versions, auth="none")
        router.add("GET", "/.well-known/matrix/client", self.well_known_client, auth="none")
        router.add("GET", "/.well-known/matrix/server", self.well_known_server, auth="none")
        router.add("GET", "/.well-known/matrix/support", self.well_known_support, auth="none")
        router.add("GET", client_paths("/capabilities"), self.capabilities)
        router.add("GET", "/health", self.health, auth="none")

    async def versions(self, req: ApiRequest) -> tuple[int, Any]:
        return 200, {"versions": SUPPORTED_VERSIONS, "unstable_features": UNSTABLE_FEATURES}

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
                "m.get_login_token": {"enabled": False},
                "m.profile_fields": {"enabled": True},
                "m.room_versions": {
                    "default": self._config.default_room_version,
                    "available": {v: "stable" for v in KNOWN_ROOM_VERSIONS},
                },
            }
        }

    async def health(self, req: ApiRequest) -> tuple[int, Any]:
        req.raw.setHeader("Content-Type", "text/plain; charset=utf-8")
        return 200, b"OK"

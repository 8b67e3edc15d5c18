"""The ``federation`` config section (schema in homeserver/config/schema.py).

```yaml
federation:
  enabled: false               # no federation routes, no outbound federation requests
  key_validity_period: 1d      # valid_until_ts of our /_matrix/key/v2/server answer
  trusted_key_servers:         # notaries asked when a server cannot be reached (none by default)
    - server_name: matrix.org
      verify_keys: {"ed25519:auto": "Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw"}
  allowed_servers: [a.example, b.example]   # unset: any server (Synapse's federation_domain_whitelist)
  tls_ca_file: /etc/parley/federation-ca.pem  # extra CA for outbound TLS (system CAs otherwise)
  ip_range_allowlist: [10.1.0.0/16]  # private ranges federation may reach (none by default)
  request_timeout: 60s         # one outbound request, connect to last byte
  max_response_size: 104857600 # bytes of an answer read at most
  partial_state_joins: true    # send_join with omit_members, members resynced in the background
```
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from homeserver.events.hashing import decode_base64


@dataclass(frozen=True)
class TrustedKeyServer:
    server_name: str
    verify_keys: dict[str, str]  # key id -> unpadded Base64 Ed25519 public key


@dataclass(frozen=True)
class FederationConfig:
    enabled: bool = False
    key_validity_period: float = 86400.0  # as Synapse's default
    trusted_key_servers: tuple[TrustedKeyServer, ...] = ()
    # None: every server may federate; otherwise only these (both directions).
    allowed_servers: frozenset[str] | None = None
    tls_ca_file: str | None = None
    ip_range_allowlist: tuple[str, ...] = ()
    request_timeout: float = 60.0
    max_response_size: int = 100 * 1024 * 1024
    partial_state_joins: bool = True
    # Not in the schema: tests talking to in-process servers over plain HTTP.
    plain_http_for_tests: bool = False

    def server_allowed(self, server_name: str) -> bool:
        """Whether federation with ``server_name`` is allowed by ``allowed_servers``."""
        return self.allowed_servers is None or server_name.lower() in self.allowed_servers


def parse_federation(raw: dict[str, Any] | None, rel: Any = None) -> FederationConfig:
    """``federation`` from the (schema-validated) config mapping; ``rel`` resolves paths."""
    from homeserver.config.loader import ConfigError, parse_duration

    raw = raw or {}
    for i, cidr in enumerate(raw.get("ip_range_allowlist", [])):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as e:
            raise ConfigError(f"federation.ip_range_allowlist[{i}]: not an IP range") from e
    notaries = []
    for i, entry in enumerate(raw.get("trusted_key_servers", [])):
        keys = dict(entry.get("verify_keys", {}))
        for kid, b64 in keys.items():
            try:
                ok = kid.startswith("ed25519:") and len(decode_base64(b64)) == 32
            except ValueError:
                ok = False
            if not ok:
                raise ConfigError(f"federation.trusted_key_servers[{i}].verify_keys: "
                                  "expected ed25519 key ids and 32-byte Base64 keys")
        notaries.append(TrustedKeyServer(entry["server_name"].lower(), keys))
    allowed = raw.get("allowed_servers")
    ca = raw.get("tls_ca_file")
    return FederationConfig(
        enabled=bool(raw.get("enabled", False)),
        key_validity_period=parse_duration(raw.get("key_validity_period", "1d")),
        trusted_key_servers=tuple(notaries),
        allowed_servers=None if allowed is None else frozenset(s.lower() for s in allowed),
        tls_ca_file=(rel(ca) if rel is not None else ca) if ca else None,
        ip_range_allowlist=tuple(raw.get("ip_range_allowlist", [])),
        request_timeout=parse_duration(raw.get("request_timeout", "60s")),
        max_response_size=int(raw.get("max_response_size", 100 * 1024 * 1024)),
        partial_state_joins=bool(raw.get("partial_state_joins", True)),
    )

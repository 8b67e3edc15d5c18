"""Which rate-limit classes apply to which route: the one table, enforced at the one
dispatch point (:class:`homeserver.http.server.MatrixResource`), never in servlets.

Each line is ``METHOD path rules``. ``path`` is the route template with the API prefix
normalised (``/_matrix/client/{r0,v3,v1,unstable}/`` → ``client/``,
``/_matrix/media/{r0,v1,v3}/`` → ``media/``), so one line covers every version; a path
ending in ``*`` covers a family of routes (all of them the same kind), ``*`` as METHOD
any method. ``rules`` is

- ``-``: no class of its own (only the general per-IP ``api`` limit);
- ``exempt``: no limit at all (health probes);
- one or more ``class:key[:bytes]``: ``class`` names a ``rate_limits`` entry, ``key`` is
  ``ip`` (client IP), ``user`` (the authenticated user; the IP without a token),
  ``account`` (the user named in a login body), ``origin`` (the X-Matrix-verified
  origin server of a federation request; nothing on routes without one) or
  ``body.<field>`` (a string field of the JSON body, e.g. the invitee); ``:bytes``
  makes the cost the body size in bytes (else one per request).

Every route except ``exempt`` ones also counts against ``api:ip``. A route missing from
the table gets only that (and ``tests/unit/test_ratelimit.py`` fails, so declare it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

TABLE = """
# -- authentication and registration (per IP, and per account for login) --
POST   client/login                                        login:ip login_account:account
GET    client/login                                        -
POST   client/login/get_token                              login_token:user
POST   client/refresh                                      -
POST   client/logout                                       -
POST   client/logout/all                                   -
POST   client/register                                     registration:ip
GET    client/register/available                           registration:ip
GET    client/register/m.login.registration_token/validity registration:ip
POST   client/register/email/requestToken                  registration:ip
POST   client/register/msisdn/requestToken                 registration:ip
POST   client/account/password/email/requestToken          registration:ip
POST   client/account/password/msisdn/requestToken         registration:ip
POST   client/account/3pid/email/requestToken              registration:ip
POST   client/account/3pid/msisdn/requestToken             registration:ip
*      /_synapse/admin/v1/register                         registration:ip
# -- messaging --
PUT    client/rooms/{roomId}/send/{eventType}/{txnId}      message:user
POST   client/rooms/{roomId}/send/{eventType}              message:user
PUT    client/rooms/{roomId}/redact/{eventId}/{txnId}      message:user
PUT    client/rooms/{roomId}/state/{eventType}             state:user
PUT    client/rooms/{roomId}/state/{eventType}/            state:user
PUT    client/rooms/{roomId}/state/{eventType}/{stateKey}  state:user
POST   client/rooms/{roomId}/upgrade                       state:user
POST   client/rooms/{roomId}/kick                          state:user
POST   client/rooms/{roomId}/ban                           state:user
POST   client/rooms/{roomId}/unban                         state:user
# -- membership --
POST   client/rooms/{roomId}/invite                        invite:user invite_target:body.user_id
POST   client/rooms/{roomId}/join                          join:user
POST   client/join/{roomIdOrAlias}                         join:user
POST   client/knock/{roomIdOrAlias}                        join:user
POST   client/createRoom                                   join:user
POST   client/rooms/{roomId}/leave                         -
POST   client/rooms/{roomId}/forget                        -
# -- media --
POST   media/upload                                        media_upload:user:bytes
PUT    media/upload/{serverName}/{mediaId}                 media_upload:user:bytes
POST   media/create                                        -
GET    media/*                                             -
GET    client/media/*                                      -
# -- end-to-end encryption --
POST   client/keys/claim                                   key_claim:user
PUT    client/sendToDevice/{eventType}/{txnId}             to_device:user
POST   client/keys/upload                                  -
POST   client/keys/query                                   -
GET    client/keys/changes                                 -
POST   client/keys/device_signing/upload                   -
POST   client/keys/signatures/upload                       -
POST   client/device_signing/upload                        -
POST   client/signatures/upload                            -
*      client/room_keys/*                                  -
# -- probes (load balancers poll them on every listener) --
GET    /health                                             exempt
GET    /ready                                              exempt
# -- everything else: the general per-IP limit only --
GET    /.well-known/matrix/*                               -
GET    /_matrix/client/versions                            -
GET    /_matrix/federation/v1/openid/userinfo              -
*      /_synapse/admin/*                                   -
*      /_parley/client/*                                   -
*      /_parley/plugins/*                                  -
*      /_matrix/federation/*                               federation_origin:origin
*      /_parley/admin/*                                    -
*      client/account/3pid*                                -
POST   client/account/deactivate                           -
POST   client/account/password                             -
GET    client/account/whoami                               -
GET    client/admin/whois/{userId}                         -
*      client/admin/lock/{userId}                          -
*      client/admin/suspend/{userId}                       -
POST   client/appservice/{appserviceId}/ping               -
GET    client/capabilities                                 -
*      client/devices*                                     -
POST   client/delete_devices                               -
*      client/directory/*                                  -
GET    client/events                                       -
GET    client/events/{eventId}                             -
GET    client/initialSync                                  -
GET    client/joined_rooms                                 -
GET    client/mutual_rooms                                 -
GET    client/notifications                                -
*      client/presence/{userId}/status                     -
*      client/profile/*                                    -
*      client/publicRooms                                  -
GET    client/pushers                                      -
POST   client/pushers/set                                  -
*      client/pushrules*                                   -
GET    client/room_summary/{roomIdOrAlias}                 -
GET    client/rooms/{roomId}/*                             -
POST   client/rooms/{roomId}/read_markers                  -
POST   client/rooms/{roomId}/receipt/{receiptType}/{eventId} -
POST   client/rooms/{roomId}/report                        -
POST   client/rooms/{roomId}/report/{eventId}              -
PUT    client/rooms/{roomId}/typing/{userId}               -
POST   client/search                                       -
GET    client/sync                                         -
POST   client/sync                                         -
GET    client/thirdparty/*                                 -
*      client/user/{userId}/*                              -
POST   client/user_directory/search                        -
POST   client/users/{userId}/report                        -
GET    client/voip/turnServer                              -
"""

_CLIENT = re.compile(r"^/_matrix/client/(?:r0|v1|v3|unstable(?:/[a-z][a-z0-9._-]*\.[a-z0-9._]+)?)/")
_MEDIA = re.compile(r"^/_matrix/media/(?:r0|v1|v3)/")
_KEY = re.compile(r"^(ip|user|account|origin|body\.[A-Za-z_][A-Za-z0-9_]*)$")


@dataclass(frozen=True)
class Rule:
    """One class applied to a route: which limit, keyed by what, costing what."""

    limit: str
    key: str  # "ip" | "user" | "account" | "origin" | "body.<field>"
    cost: str = "one"  # "one" | "bytes"


@dataclass(frozen=True)
class RouteRules:
    """What one route is limited by (``exempt``: nothing, not even the api limit)."""

    rules: tuple[Rule, ...]
    exempt: bool = False
    declared: bool = True  # False: the route is missing from the table


API_RULE = Rule("api", "ip")
UNDECLARED = RouteRules((API_RULE,), declared=False)


def normalise(template: str) -> str:
    """``/_matrix/client/v3/login`` → ``client/login``; other prefixes are kept."""
    m = _CLIENT.match(template)
    if m:
        return "client/" + template[m.end():]
    m = _MEDIA.match(template)
    if m:
        return "media/" + template[m.end():]
    return template


def _parse_rules(text: str, limits: frozenset[str] | None) -> RouteRules:
    if text == "exempt":
        return RouteRules((), exempt=True)
    if text == "-":
        return RouteRules((API_RULE,))
    rules = []
    for token in text.split():
        parts = token.split(":")
        if len(parts) not in (2, 3) or not _KEY.match(parts[1]) or (
                len(parts) == 3 and parts[2] != "bytes"):
            raise ValueError(f"bad rate rule {token!r}")
        if limits is not None and parts[0] not in limits:
            raise ValueError(f"unknown rate-limit class {parts[0]!r}")
        rules.append(Rule(parts[0], parts[1], "bytes" if len(parts) == 3 else "one"))
    return RouteRules((API_RULE, *rules))


def _parse_table(text: str) -> list[tuple[str, str, RouteRules]]:
    from homeserver.config.model import DEFAULT_RATE_LIMITS

    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        method, path, rules = line.split(None, 2)
        out.append((method, path, _parse_rules(rules.strip(), frozenset(DEFAULT_RATE_LIMITS))))
    return out


ENTRIES = _parse_table(TABLE)


@lru_cache(maxsize=4096)
def rules_for(method: str, template: str) -> RouteRules:
    """The rules of one route (the first matching line); ``UNDECLARED`` if none."""
    if method == "HEAD":
        method = "GET"
    path = normalise(template)
    for m, p, rules in ENTRIES:
        if m not in ("*", method):
            continue
        if p == path or (p.endswith("*") and path.startswith(p[:-1])):
            return rules
    return UNDECLARED

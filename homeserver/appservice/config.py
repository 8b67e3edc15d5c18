"""Application service registration files (``app_service_config_files``), in
Synapse's YAML format, read and validated once at start-up.

```yaml
id: irc-bridge                 # unique among the registrations
url: http://127.0.0.1:9999     # where transactions go (null: no transactions)
as_token: <secret>             # the AS presents this to us
hs_token: <secret>             # we present this to the AS
sender_localpart: ircbot
namespaces:
  users:   [{exclusive: true, regex: '@irc_.*:example.org'}]
  aliases: [{exclusive: false, regex: '#irc_.*:example.org'}]
  rooms:   []
rate_limited: false            # default true
receive_ephemeral: true        # (or de.sorunome.msc2409.push_ephemeral / push_ephemeral):
                               # typing, receipts, presence and to-device messages
org.matrix.msc3202: true       # device list changes and one-time key counts (encryption)
protocols: [irc]
```

Any problem (a missing or mistyped key, a bad regex, a duplicate id or token, an
exclusive namespace two services both claim, or a service's sender inside another's
exclusive namespace) is a :class:`ConfigError` naming the file: the server does not
start. Regexes match from the start of the string, as Synapse's ``re.match``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from homeserver.config.loader import ConfigError
from homeserver.identifiers import user_id as make_user_id

MAX_TOKEN_LEN = 1024
MAX_REGEX_LEN = 1024
_ID_RE = re.compile(r"^[A-Za-z0-9._~\-]{1,255}\Z")


@dataclass(frozen=True)
class Namespace:
    regex: re.Pattern[str]
    exclusive: bool


@dataclass(frozen=True)
class ApplicationService:
    """One registration: who the service is and what it owns."""

    id: str
    url: str | None
    as_token: str = field(repr=False)
    hs_token: str = field(repr=False)
    sender: str
    users: tuple[Namespace, ...] = ()
    aliases: tuple[Namespace, ...] = ()
    rooms: tuple[Namespace, ...] = ()
    rate_limited: bool = True
    receive_ephemeral: bool = False
    # MSC3202 (``org.matrix.msc3202: true``): device list changes and one-time key
    # counts of its users ride in its transactions, for bridges that do encryption.
    msc3202: bool = False
    protocols: tuple[str, ...] = ()
    source: str = ""

    @staticmethod
    def _matches(spaces: tuple[Namespace, ...], value: str, exclusive_only: bool) -> bool:
        return any(ns.regex.match(value) for ns in spaces
                   if ns.exclusive or not exclusive_only)

    def is_interested_in_user(self, user_id: str) -> bool:
        """The sender and every user its namespaces name (masquerading, registration)."""
        return user_id == self.sender or self._matches(self.users, user_id, False)

    def is_exclusive_user(self, user_id: str) -> bool:
        return user_id == self.sender or self._matches(self.users, user_id, True)

    def is_interested_in_alias(self, alias: str) -> bool:
        return self._matches(self.aliases, alias, False)

    def is_exclusive_alias(self, alias: str) -> bool:
        return self._matches(self.aliases, alias, True)

    def is_interested_in_room(self, room_id: str) -> bool:
        return self._matches(self.rooms, room_id, False)


def _fail(path: str, msg: str) -> ConfigError:
    return ConfigError(f"app service registration {path}: {msg}")


def _string(raw: dict[str, Any], key: str, path: str, *, required: bool = True,
            max_len: int = MAX_TOKEN_LEN) -> str | None:
    value = raw.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise _fail(path, f"'{key}' must be a non-empty string of at most {max_len} characters")
    return value


def _namespaces(raw: Any, kind: str, path: str) -> tuple[Namespace, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _fail(path, f"'namespaces.{kind}' must be a list")
    out = []
    for i, entry in enumerate(raw):
        where = f"namespaces.{kind}[{i}]"
        if not isinstance(entry, dict):
            raise _fail(path, f"'{where}' must be a mapping with 'regex' and 'exclusive'")
        regex, exclusive = entry.get("regex"), entry.get("exclusive")
        if not isinstance(exclusive, bool):
            raise _fail(path, f"'{where}.exclusive' must be true or false")
        if not isinstance(regex, str) or not regex or len(regex) > MAX_REGEX_LEN:
            raise _fail(path, f"'{where}.regex' must be a non-empty string")
        try:
            compiled = re.compile(regex)
        except re.error as e:
            raise _fail(path, f"'{where}.regex' is not a valid regular expression ({e})") from e
        out.append(Namespace(compiled, exclusive))
    return tuple(out)


def parse_registration(raw: Any, path: str, server_name: str) -> ApplicationService:
    """One registration file's mapping as an :class:`ApplicationService`."""
    if not isinstance(raw, dict):
        raise _fail(path, "the file must hold a YAML mapping")
    sid = _string(raw, "id", path, max_len=255)
    assert sid is not None
    if not _ID_RE.match(sid):
        raise _fail(path, "'id' may only use letters, digits and '._~-'")
    url = _string(raw, "url", path, required=False, max_len=2048)
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _fail(path, "'url' must be an http(s) URL (or null)")
        url = url.rstrip("/")
    as_token = _string(raw, "as_token", path)
    hs_token = _string(raw, "hs_token", path)
    localpart = _string(raw, "sender_localpart", path, max_len=255)
    assert as_token is not None and hs_token is not None and localpart is not None
    if as_token == hs_token:
        raise _fail(path, "'as_token' and 'hs_token' must differ")
    namespaces = raw.get("namespaces") or {}
    if not isinstance(namespaces, dict):
        raise _fail(path, "'namespaces' must be a mapping of users, aliases and rooms")
    unknown = set(namespaces) - {"users", "aliases", "rooms"}
    if unknown:
        raise _fail(path, f"unknown namespace '{sorted(unknown)[0]}'")
    flags = {}
    for key in ("rate_limited", "receive_ephemeral", "push_ephemeral",
                "de.sorunome.msc2409.push_ephemeral", "org.matrix.msc3202"):
        if key in raw and not isinstance(raw[key], bool):
            raise _fail(path, f"'{key}' must be true or false")
        flags[key] = raw.get(key)
    protocols = raw.get("protocols") or []
    if not isinstance(protocols, list) or not all(
            isinstance(p, str) and 0 < len(p) <= 255 for p in protocols):
        raise _fail(path, "'protocols' must be a list of strings")
    return ApplicationService(
        id=sid, url=url, as_token=as_token, hs_token=hs_token,
        sender=make_user_id(localpart, server_name),
        users=_namespaces(namespaces.get("users"), "users", path),
        aliases=_namespaces(namespaces.get("aliases"), "aliases", path),
        rooms=_namespaces(namespaces.get("rooms"), "rooms", path),
        rate_limited=flags["rate_limited"] is not False,
        receive_ephemeral=any(flags[k] for k in ("receive_ephemeral", "push_ephemeral",
                                                 "de.sorunome.msc2409.push_ephemeral")),
        msc3202=bool(flags["org.matrix.msc3202"]),
        protocols=tuple(protocols), source=path,
    )


def check_services(services: list[ApplicationService]) -> None:
    """Cross-file rules: unique ids and tokens, exclusive namespaces claimed once."""
    seen: dict[str, ApplicationService] = {}
    tokens: dict[str, ApplicationService] = {}
    for svc in services:
        if svc.id in seen:
            raise _fail(svc.source, f"id '{svc.id}' is also used by {seen[svc.id].source}")
        seen[svc.id] = svc
        for token in (svc.as_token, svc.hs_token):
            other = tokens.get(token)
            if other is not None:
                raise _fail(svc.source, f"a token is also used by {other.source}")
            tokens[token] = svc
    for a in services:
        for b in services:
            if a is b:
                continue
            for kind in ("users", "aliases", "rooms"):
                mine = {ns.regex.pattern for ns in getattr(a, kind) if ns.exclusive}
                theirs = {ns.regex.pattern for ns in getattr(b, kind)}
                both = mine & theirs
                if both:
                    raise _fail(a.source, f"exclusive {kind} namespace '{sorted(both)[0]}' "
                                f"overlaps {b.source}")
            if a.is_exclusive_user(b.sender):
                raise _fail(a.source, f"exclusive users namespace contains the sender of "
                            f"{b.source}")


def load_appservices(paths: list[str], server_name: str) -> list[ApplicationService]:
    """Read and validate every registration file (start-up; raises ConfigError)."""
    services = []
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise _fail(path, f"cannot read the file ({e.strerror})") from e
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise _fail(path, "not valid YAML") from e
        services.append(parse_registration(raw, path, server_name))
    check_services(services)
    return services

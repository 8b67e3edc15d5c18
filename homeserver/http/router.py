"""The one route table for every HTTP path Parley serves.

Servlets register ``(method, path template)`` pairs with a handler, an optional
JSON schema for the body and whether an access token is required. Path templates
use ``{name}`` for a path segment; the decoded segment is passed to the handler.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator

JsonDict = dict[str, Any]
# A handler returns (status, body); body is a dict (rendered as JSON) or bytes.
HandlerResult = tuple[int, Any]
Handler = Callable[..., Awaitable[HandlerResult]]

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

CLIENT_VERSIONS: tuple[str, ...] = ("r0", "v3")

# Body validators by the schema's canonical text: checking a schema against the
# metaschema is the costliest part of building the route table (over half of a test
# server's start-up), and a validator is stateless, so every router shares them.
_VALIDATORS: dict[str, Draft202012Validator] = {}


def body_validator(schema: JsonDict) -> Draft202012Validator:
    """The (shared) validator of ``schema``, checked against the metaschema once."""
    key = json.dumps(schema, sort_keys=True, default=repr)
    validator = _VALIDATORS.get(key)
    if validator is None:
        Draft202012Validator.check_schema(schema)
        validator = _VALIDATORS[key] = Draft202012Validator(schema)
    return validator


def client_paths(path: str, versions: Iterable[str] = CLIENT_VERSIONS) -> list[str]:
    """``/login`` → ``/_matrix/client/r0/login`` and ``/_matrix/client/v3/login``."""
    return [f"/_matrix/client/{v}{path}" for v in versions]


def compile_template(template: str) -> re.Pattern[str]:
    """Turn ``/a/{x}/b`` into a regex matching one non-empty segment per parameter."""
    out = []
    pos = 0
    for m in _PARAM.finditer(template):
        out.append(re.escape(template[pos : m.start()]))
        out.append(f"(?P<{m.group(1)}>[^/]+)")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("^" + "".join(out) + "$")


@dataclass
class Route:
    method: str
    template: str
    pattern: re.Pattern[str]
    handler: Handler
    # "required" | "optional" | "none" | "federation" (X-Matrix: sets ApiRequest.origin,
    # federation/auth.py)
    auth: str
    body_validator: Draft202012Validator | None = None
    # Requests from deactivated / guest users: whether guests may call this.
    allow_guest: bool = False
    # Whether a body must be present and be a JSON object.
    json_body: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Router:
    """Maps a method and a raw (still percent-encoded) path to a :class:`Route`."""

    def __init__(self) -> None:
        self._routes: list[Route] = []
        # Literal paths are looked up first, in O(1).
        self._literal: dict[str, list[Route]] = {}

    def add(
        self,
        method: str,
        templates: str | Iterable[str],
        handler: Handler,
        *,
        auth: str = "required",
        body_schema: JsonDict | None = None,
        json_body: bool | None = None,
        allow_guest: bool = False,
    ) -> None:
        if auth not in ("required", "optional", "none", "federation"):
            raise ValueError(f"bad auth mode {auth!r}")
        if isinstance(templates, str):
            templates = [templates]
        validator = body_validator(body_schema) if body_schema is not None else None
        for template in templates:
            route = Route(
                method=method.upper(),
                template=template,
                pattern=compile_template(template),
                handler=handler,
                auth=auth,
                body_validator=validator,
                allow_guest=allow_guest,
                json_body=bool(json_body if json_body is not None else body_schema is not None),
            )
            self._routes.append(route)
            if not _PARAM.search(template):
                self._literal.setdefault(template, []).append(route)

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        """Return (route, raw path params, path_known).

        ``path_known`` is true when some route matches the path with another
        method, so the caller can answer 405 rather than 404.
        """
        path_known = False
        literal = self._literal.get(path)
        if literal:
            for route in literal:
                if route.method == method:
                    return route, {}, True
            path_known = True
        for route in self._routes:
            m = route.pattern.match(path)
            if m is None:
                continue
            if route.method == method:
                return route, m.groupdict(), True
            path_known = True
        return None, {}, path_known

    def allowed_methods(self, path: str) -> list[str]:
        return sorted({r.method for r in self._routes if r.pattern.match(path)})

    @property
    def routes(self) -> list[Route]:
        return list(self._routes)

"""The consent pages (Synapse's ``/_matrix/consent``): ``GET`` shows the privacy policy
(with an "I agree" form when the link names a user), ``POST`` (the form) records the
acceptance. Parameters: ``u`` (localpart), ``h`` (its HMAC), ``v`` (policy version,
default the current one); see :mod:`homeserver.handlers.consent`.

A resource of its own (mounted on the site root) rather than a route: the page is HTML
whose form must be allowed to post to itself, where the API's CSP forbids every form.
Errors are Matrix errors (JSON), as everywhere else.
"""

from __future__ import annotations

import html
import logging
from typing import Any

from twisted.internet import defer
from twisted.web import resource, server

from homeserver.audit import context as audit_context
from homeserver.auth.requester import ClientInfo
from homeserver.handlers.consent import ConsentHandler, ConsentPage
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.server import encode_json

logger = logging.getLogger(__name__)

CONSENT_PATH = "/_matrix/consent"
MAX_FORM_BYTES = 16 * 1024  # the form's three short fields
PAGE_CSP = ("default-src 'none'; style-src 'unsafe-inline'; form-action 'self';"
            " frame-ancestors 'none'; base-uri 'none'")
_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # the page's URL holds the link's hash
    "Cache-Control": "no-cache, no-store, must-revalidate",
}


class _PageRequest:
    """What the audit context reads of a request (its client; no access token)."""

    def __init__(self, client: ClientInfo) -> None:
        self.client = client
        self.requester = None


class ConsentResource(resource.Resource):
    isLeaf = True

    def __init__(self, handler: ConsentHandler, trusted_proxies: bool = False) -> None:
        super().__init__()
        self._handler = handler
        self._trusted_proxies = trusted_proxies

    def render(self, request: server.Request) -> Any:  # type: ignore[override]
        d = defer.ensureDeferred(self._serve(request))
        d.addErrback(lambda f: logger.error("consent page failed: %s", f.getErrorMessage()))
        return server.NOT_DONE_YET

    async def _serve(self, request: server.Request) -> None:
        method = request.method.decode("ascii", "replace").upper()
        audit_context.bind(_PageRequest(self._client(request)))
        try:
            if getattr(request, "body_too_large", False) or \
                    request.content.seek(0, 2) > MAX_FORM_BYTES:
                raise MatrixError(413, "Request body too large", Codes.TOO_LARGE)
            if method in ("GET", "HEAD"):
                page = await self._handler.page(_arg(request, "u"), _arg(request, "h"),
                                                _arg(request, "v"))
                status, body = 200, render_page(page, accepted=False)
            elif method == "POST":
                page = await self._handler.accept(_arg(request, "u"), _arg(request, "h"),
                                                  _arg(request, "v"))
                status, body = 200, render_page(page, accepted=True)
            else:
                raise MatrixError(405, "Unrecognized request: method not allowed",
                                  Codes.UNRECOGNIZED)
        except MatrixError as e:
            _respond(request, e.code, encode_json(e.to_json()), "application/json")
            return
        except Exception:
            logger.exception("consent page failed")
            _respond(request, 500, encode_json({"errcode": Codes.UNKNOWN,
                                                "error": "Internal server error"}),
                     "application/json")
            return
        _respond(request, status, body, "text/html; charset=utf-8")

    def _client(self, request: server.Request) -> ClientInfo:
        address = request.getClientAddress()
        ip = str(getattr(address, "host", "-"))
        if self._trusted_proxies:
            forwarded = request.getHeader("x-forwarded-for")
            if forwarded:
                ip = forwarded.split(",")[0].strip()
        return ClientInfo(ip=ip, user_agent=(request.getHeader("user-agent") or "")[:512])


def _arg(request: server.Request, name: str) -> str | None:
    values = request.args.get(name.encode("ascii"))
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError as e:
        raise MatrixError(400, f"Parameter '{name}' is not UTF-8", Codes.INVALID_PARAM) from e


def _respond(request: server.Request, status: int, body: bytes, content_type: str) -> None:
    if request.finished or getattr(request, "_disconnected", False):
        return
    request.setResponseCode(status)
    for name, value in _HEADERS.items():
        request.setHeader(name, value)
    request.setHeader("Content-Security-Policy", PAGE_CSP)
    request.setHeader("Content-Type", content_type)
    request.setHeader("Content-Length", str(len(body)))
    if request.method != b"HEAD":
        request.write(body)
    request.finish()


def render_page(page: ConsentPage, accepted: bool) -> bytes:
    """The policy page: every value escaped; the form only for a named user who has not
    accepted this version yet."""
    e = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">",
        f"<title>{e(page.policy_name)}</title></head><body>",
        f"<h1>{e(page.policy_name)}</h1>",
        f"<p>Version {e(page.version)}</p>",
        f"<div style=\"white-space: pre-wrap\">{e(page.policy_text)}</div>",
    ]
    if accepted:
        parts.append("<p id=\"accepted\">Thank you, your agreement has been recorded.</p>")
    elif page.has_consented:
        parts.append("<p id=\"accepted\">You have already agreed to this policy.</p>")
    elif page.user is not None and page.user_hash is not None:
        parts.append(
            "<form method=\"post\" action=\"consent\">"
            f"<input type=\"hidden\" name=\"u\" value=\"{e(page.user)}\">"
            f"<input type=\"hidden\" name=\"h\" value=\"{e(page.user_hash)}\">"
            f"<input type=\"hidden\" name=\"v\" value=\"{e(page.version)}\">"
            "<button type=\"submit\">I agree</button></form>")
    parts.append("</body></html>")
    return "".join(parts).encode("utf-8")

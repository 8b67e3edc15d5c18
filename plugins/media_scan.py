"""The built-in media scanner: the declared content type must match the file's magic
bytes, and a file whose SHA-256 is on the deny list is refused.

Registered by the homeserver when ``media.builtin_scanner`` is true (the default).
``application/octet-stream`` (what E2EE clients upload: ciphertext has no magic) is
never refused on type grounds, only by the deny list.
"""

from __future__ import annotations

import logging

from plugins.hookspecs import hookimpl

logger = logging.getLogger(__name__)

# Declared type -> predicate over the first bytes of the file.
_MAGIC = {
    "image/png": lambda h: h.startswith(b"\x89PNG\r\n\x1a\n"),
    "image/jpeg": lambda h: h.startswith(b"\xff\xd8\xff"),
    "image/gif": lambda h: h.startswith((b"GIF87a", b"GIF89a")),
    "image/webp": lambda h: h[:4] == b"RIFF" and h[8:12] == b"WEBP",
    "application/pdf": lambda h: h.startswith(b"%PDF-"),
}
_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png"}
HEAD_BYTES = 16


def base_type(content_type: str) -> str:
    """``Image/PNG; charset=x`` -> ``image/png``."""
    base = content_type.split(";", 1)[0].strip().lower()
    return _ALIASES.get(base, base)


def sniff(head: bytes) -> str | None:
    """The checked type whose magic ``head`` carries, if any."""
    return next((t for t, ok in _MAGIC.items() if ok(head)), None)


def magic_mismatch(head: bytes, content_type: str) -> str | None:
    """A reason if the declared type is one we can check and the bytes disagree."""
    declared = base_type(content_type)
    if declared == "application/octet-stream":
        return None
    check = _MAGIC.get(declared)
    if check is not None and not check(head):
        return f"declared {declared} but content is {sniff(head) or 'something else'}"
    return None


def load_deny_list(path: str) -> frozenset[str]:
    """One lowercase hex SHA-256 per line; ``#`` comments and blank lines ignored."""
    out = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            entry = line.split("#", 1)[0].strip().lower()
            if entry:
                if len(entry) != 64 or any(c not in "0123456789abcdef" for c in entry):
                    raise ValueError(f"{path}: not a SHA-256 hex digest: {entry[:70]!r}")
                out.add(entry)
    return frozenset(out)


class BuiltinMediaScanner:
    """A pluggy plugin object (so it can carry the deny list loaded at start-up)."""

    def __init__(self, deny_list_file: str | None = None) -> None:
        self.deny_list_file = deny_list_file
        self.denied = load_deny_list(deny_list_file) if deny_list_file else frozenset()

    def reload(self) -> None:
        if self.deny_list_file:
            self.denied = load_deny_list(self.deny_list_file)

    @hookimpl
    def scan_media(self, path: str, content_type: str, sha256: str) -> str | None:
        if sha256.lower() in self.denied:
            return "sha256 on the deny list"
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
        return magic_mismatch(head, content_type)

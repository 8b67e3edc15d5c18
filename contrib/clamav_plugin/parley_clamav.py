"""Parley media scan plugin for a ClamAV daemon (clamd ``INSTREAM`` protocol).

Runs on Parley's scanning thread, so plain blocking sockets are fine here.
"""

from __future__ import annotations

import logging
import os
import socket
import struct

import pluggy

hookimpl = pluggy.HookimplMarker("parley")
logger = logging.getLogger(__name__)

CHUNK = 64 * 1024


def _connect(address: str, timeout: float) -> socket.socket:
    if ":" in address and not address.startswith("/"):
        host, _, port = address.rpartition(":")
        return socket.create_connection((host, int(port)), timeout=timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(address)
    return sock


def instream(sock: socket.socket, path: str) -> str:
    """Send ``path`` with INSTREAM on a connected socket; return clamd's reply line."""
    sock.sendall(b"zINSTREAM\0")
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sock.sendall(struct.pack("!L", len(chunk)) + chunk)
    sock.sendall(struct.pack("!L", 0))
    reply = b""
    while not reply.endswith(b"\0"):
        data = sock.recv(4096)
        if not data:
            break
        reply += data
    return reply.rstrip(b"\0").decode("utf-8", "replace").strip()


def verdict(reply: str) -> str | None:
    """None for ``stream: OK``; a reason for a detection or an error."""
    if reply.endswith(" OK"):
        return None
    if reply.endswith(" FOUND"):
        return "malware: " + reply.removeprefix("stream:").removesuffix("FOUND").strip()
    return "scanner error: " + (reply or "no reply")


def scan_file(path: str, address: str, timeout: float = 30.0) -> str | None:
    with _connect(address, timeout) as sock:
        return verdict(instream(sock, path))


@hookimpl
def scan_media(path: str, content_type: str, sha256: str) -> str | None:
    address = os.environ.get("PARLEY_CLAMAV_SOCKET", "/run/clamav/clamd.ctl")
    timeout = float(os.environ.get("PARLEY_CLAMAV_TIMEOUT", "30"))
    try:
        return scan_file(path, address, timeout)
    except OSError as e:
        logger.error("ClamAV unavailable at %s: %s", address, e)
        if os.environ.get("PARLEY_CLAMAV_FAIL_OPEN") == "1":
            return None
        return "scanner unavailable"

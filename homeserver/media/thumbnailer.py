"""Thumbnails with Pillow, for unencrypted PNG/JPEG/GIF/WebP only. Called on a thread.

Decompression bombs: the pixel count from the header is checked against the limit
before any pixel is decoded, and Pillow's own ``MAX_IMAGE_PIXELS`` guard is set to it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image, ImageOps

from homeserver.config.model import ThumbnailSize

# Source type -> (Pillow format, thumbnail content type); Synapse's choice: PNG for
# types that may carry transparency, JPEG otherwise.
THUMBNAILABLE = {
    "image/png": ("PNG", "image/png"),
    "image/gif": ("PNG", "image/png"),
    "image/jpeg": ("JPEG", "image/jpeg"),
    "image/webp": ("JPEG", "image/jpeg"),
}
METHODS = ("scale", "crop")


class ThumbnailError(Exception):
    """The source cannot be thumbnailed (corrupt, too many pixels, wrong type)."""


def select_size(sizes: Sequence[ThumbnailSize], width: int, height: int,
                method: str) -> ThumbnailSize:
    """The configured size that serves a request for ``width`` x ``height``.

    As Synapse: among the sizes of the requested method (any method if none is
    configured), the smallest that is at least as large as the request in both
    dimensions, else the largest. Every request thus maps to one of a fixed set, which
    bounds the work and the cache per media to ``len(sizes)`` thumbnails.
    """
    candidates = [s for s in sizes if s.method == method] or list(sizes)
    big_enough = [s for s in candidates if s.width >= width and s.height >= height]
    if big_enough:
        return min(big_enough, key=lambda s: (s.width * s.height, s.width))
    return max(candidates, key=lambda s: (s.width * s.height, s.width))


def target_size(src_w: int, src_h: int, width: int, height: int, method: str) -> tuple[int, int]:
    """The output size; never larger than the source.

    ``scale`` fits inside width x height keeping the aspect ratio; ``crop`` has exactly
    the requested aspect ratio (the centre is kept), as large as fits in both.
    """
    if method == "scale":
        ratio = min(width / src_w, height / src_h, 1.0)
        return max(1, round(src_w * ratio)), max(1, round(src_h * ratio))
    if src_w >= width and src_h >= height:
        return width, height
    ratio = min(src_w / width, src_h / height)
    return max(1, int(width * ratio)), max(1, int(height * ratio))


def generate(path: str, content_type: str, width: int, height: int, method: str,
             max_pixels: int) -> tuple[bytes, str, int, int]:
    """Return (bytes, content type, width, height) of the thumbnail of ``path``."""
    fmt = THUMBNAILABLE.get(content_type)
    if fmt is None:
        raise ThumbnailError("unsupported content type")
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with Image.open(path) as img:
            src_w, src_h = img.size
            if src_w * src_h > max_pixels:
                raise ThumbnailError("image has too many pixels")
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img) or img
            out_w, out_h = target_size(img.width, img.height, width, height, method)
            if method == "crop":
                result = ImageOps.fit(img, (out_w, out_h), Image.Resampling.LANCZOS)
            else:
                result = img.resize((out_w, out_h), Image.Resampling.LANCZOS)
            if fmt[0] == "JPEG" and result.mode not in ("RGB", "L"):
                result = result.convert("RGB")
            elif fmt[0] == "PNG" and result.mode not in ("RGB", "RGBA", "L", "LA", "P"):
                result = result.convert("RGBA")
            buf = io.BytesIO()
            result.save(buf, fmt[0], **({"quality": 80} if fmt[0] == "JPEG" else {}))
            return buf.getvalue(), fmt[1], out_w, out_h
    except ThumbnailError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError) as e:
        raise ThumbnailError(str(e)[:200]) from e

"""Choosing the configured thumbnail size that serves a request (finding 6), and the
``media.thumbnail_sizes`` config key."""

from __future__ import annotations

import os
import tempfile

from twisted.trial import unittest

from homeserver.config.loader import ConfigError, load_config
from homeserver.config.model import DEFAULT_THUMBNAIL_SIZES, ThumbnailSize
from homeserver.media.thumbnailer import select_size


def _pick(width: int, height: int, method: str,
          sizes: tuple[ThumbnailSize, ...] = DEFAULT_THUMBNAIL_SIZES) -> tuple[int, int, str]:
    s = select_size(sizes, width, height, method)
    return s.width, s.height, s.method


class SelectSizeTest(unittest.TestCase):
    def test_smallest_covering_size_of_the_method(self) -> None:
        self.assertEqual(_pick(1, 1, "crop"), (32, 32, "crop"))
        self.assertEqual(_pick(32, 32, "crop"), (32, 32, "crop"))
        self.assertEqual(_pick(33, 20, "crop"), (96, 96, "crop"))
        self.assertEqual(_pick(96, 96, "scale"), (320, 240, "scale"))
        self.assertEqual(_pick(321, 10, "scale"), (640, 480, "scale"))
        self.assertEqual(_pick(10, 481, "scale"), (800, 600, "scale"))

    def test_larger_than_every_size_gives_the_largest(self) -> None:
        self.assertEqual(_pick(4000, 4000, "scale"), (800, 600, "scale"))
        self.assertEqual(_pick(4000, 4000, "crop"), (96, 96, "crop"))
        self.assertEqual(_pick(10**9, 1, "scale"), (800, 600, "scale"))

    def test_method_without_sizes_uses_all(self) -> None:
        only_scale = (ThumbnailSize(100, 100, "scale"), ThumbnailSize(200, 200, "scale"))
        self.assertEqual(_pick(150, 150, "crop", only_scale), (200, 200, "scale"))

    def test_every_request_maps_into_the_set(self) -> None:
        seen = {_pick(w, h, m) for w in range(1, 2000, 13) for h in range(1, 2000, 17)
                for m in ("scale", "crop")}
        self.assertLessEqual(seen, {(s.width, s.height, s.method) for s in DEFAULT_THUMBNAIL_SIZES})


class ThumbnailSizesConfigTest(unittest.TestCase):
    def _load(self, media: str) -> object:
        folder = tempfile.mkdtemp()
        path = os.path.join(folder, "c.yaml")
        with open(path, "w") as f:
            f.write("server_name: example.org\nauth:\n  signing_keys:\n"
                    "    - {kid: k1, algorithm: HS256, key: '" + "s" * 40 + "'}\n" + media)
        return load_config(path)

    def test_default_and_custom(self) -> None:
        self.assertEqual(self._load("").media.thumbnail_sizes, DEFAULT_THUMBNAIL_SIZES)
        config = self._load("media:\n  thumbnail_sizes:\n    - {width: 64, height: 64, method: crop}\n"
                            "    - {width: 500, height: 400}\n")
        self.assertEqual(config.media.thumbnail_sizes,
                         (ThumbnailSize(64, 64, "crop"), ThumbnailSize(500, 400, "scale")))

    def test_invalid(self) -> None:
        for bad in ("[]", "[{width: 0, height: 10}]", "[{width: 10, height: 10, method: zoom}]",
                    "[{width: 10}]", "[{width: 10000, height: 10}]"):
            with self.assertRaises(ConfigError, msg=bad):
                self._load(f"media:\n  thumbnail_sizes: {bad}\n")

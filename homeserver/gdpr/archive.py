"""The export archive on disk, written off the reactor thread.

A job writes each batch of each section as a part file under
``<data_dir>/exports/<export_id>.parts/<section>/<batch>.json`` (a temp name renamed
into place, so a part is either whole or absent); the batch number comes from the
section's cursor row, so a job resumed after a restart rewrites at most the batch it
was writing. When every section is done, :class:`ArchiveWriter` assembles the zip
(``<export_id>.zip.tmp`` renamed to ``<export_id>.zip``; an interrupted assembly simply
starts again) and the parts are removed.

The zip holds ``manifest.json``, ``<section>.json`` for single-batch sections,
``<section>/<batch>.json`` for batched ones, and ``media/files/<media_id>`` for each
file the user uploaded, copied as stored (ciphertext stays ciphertext). Media is read
through the media backend (local path or a temp copy from S3) one file at a time, and
zip members are written with :mod:`zipfile` in a thread, so neither the archive nor a
media file is ever held in memory.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.threads import deferToThread

# (media id) -> (a readable local path, its cleanup), or None when the file is missing.
MediaOpener = Callable[[str], Awaitable[tuple[str, Callable[[], None]] | None]]

MANIFEST = "manifest.json"
MEDIA_FILES_DIR = "media/files"


def _dump(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, indent=1, sort_keys=True).encode("utf-8")


class ExportDir:
    """Where one export's parts and archive live (paths only; no user input in them:
    export ids are generated, section names are ours)."""

    def __init__(self, root: str, export_id: str) -> None:
        self.root = root
        self.export_id = export_id
        self.parts = os.path.join(root, f"{export_id}.parts")
        self.archive = os.path.join(root, f"{export_id}.zip")

    def part_path(self, section: str, batch: int) -> str:
        return os.path.join(self.parts, section, f"{batch:06d}.json")

    async def write_part(self, section: str, batch: int, value: Any) -> None:
        await deferToThread(self._write_part, section, batch, value)

    def _write_part(self, section: str, batch: int, value: Any) -> None:
        dest = self.part_path(section, batch)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        tmp = dest + ".tmp"
        with open(tmp, "wb") as f:
            f.write(_dump(value))
        os.replace(tmp, dest)

    async def read_part(self, section: str, batch: int) -> Any:
        def _read() -> Any:
            with open(self.part_path(section, batch), "rb") as f:
                return json.loads(f.read())

        return await deferToThread(_read)

    async def size(self) -> int:
        return await deferToThread(os.path.getsize, self.archive)

    async def remove_all(self) -> None:
        """The parts, any half-written archive and the archive itself (cleanup)."""
        def _rm() -> None:
            shutil.rmtree(self.parts, ignore_errors=True)
            for path in (self.archive, self.archive + ".tmp"):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass

        await deferToThread(_rm)


class ArchiveWriter:
    """Assembles the zip from the parts; every file operation runs on a thread."""

    def __init__(self, export_dir: ExportDir) -> None:
        self._dir = export_dir
        self._zip: zipfile.ZipFile | None = None

    async def open(self) -> None:
        def _open() -> zipfile.ZipFile:
            os.makedirs(self._dir.root, exist_ok=True)
            return zipfile.ZipFile(self._dir.archive + ".tmp", "w",
                                   compression=zipfile.ZIP_DEFLATED, allowZip64=True)

        self._zip = await deferToThread(_open)

    def _zf(self) -> zipfile.ZipFile:
        assert self._zip is not None, "open() first"
        return self._zip

    async def add_json(self, name: str, value: Any) -> None:
        zf = self._zf()
        await deferToThread(zf.writestr, name, _dump(value))

    async def add_part(self, section: str, batch: int, name: str) -> None:
        """Copy a part file into the zip as ``name`` (streamed from disk)."""
        zf = self._zf()
        await deferToThread(zf.write, self._dir.part_path(section, batch), name)

    async def add_media(self, media_id: str, opener: MediaOpener) -> bool:
        """The stored bytes of one media file; False if the store no longer has it."""
        opened = await opener(media_id)
        if opened is None:
            return False
        path, cleanup = opened
        zf = self._zf()
        try:
            # Stored, not deflated: media is usually compressed or encrypted already.
            await deferToThread(zf.write, path, f"{MEDIA_FILES_DIR}/{media_id}",
                                zipfile.ZIP_STORED)
        finally:
            cleanup()
        return True

    async def finish(self) -> int:
        """Close the zip, move it into place, drop the parts; returns its size."""
        zf = self._zf()
        self._zip = None

        def _finish() -> int:
            zf.close()
            os.replace(self._dir.archive + ".tmp", self._dir.archive)
            shutil.rmtree(self._dir.parts, ignore_errors=True)
            return os.path.getsize(self._dir.archive)

        return await deferToThread(_finish)

    async def abort(self) -> None:
        zf, self._zip = self._zip, None
        if zf is None:
            return

        def _abort() -> None:
            zf.close()
            try:
                os.unlink(self._dir.archive + ".tmp")
            except FileNotFoundError:
                pass

        await deferToThread(_abort)


def open_archive(path: str) -> tuple[Any, int]:
    """The finished archive opened for streaming, and its size (run on a thread)."""
    f = open(path, "rb")  # noqa: SIM115 (closed by the response)
    return f, os.fstat(f.fileno()).st_size

"""Where file contents live: the FileStore protocol, the local-disk store, and the factory picking one from config.

Contents only: a file's metadata (owner, purpose, size) lives in the ledger store (llmp_files). Uploads (up to
200 MB) and output files (50,000 answers) are staged in a local file and handed over by path (`put_path`), never
held whole in memory: a store with `put_file` takes the path (the local store renames it into place; S3 can stream
it, as boto3's `upload_file` does), any other store gets its bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Protocol

from gateway.batch.file_names import FileMissing, check_name

__all__ = ["FileMissing", "FileStore", "LocalFileStore", "check_name", "put_path", "scratch"]

STALE_S = 86_400.0  # a staged file this old was left by a crash


class FileStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def put(self, name: str, data: bytes) -> None: ...

    async def get(self, name: str) -> bytes: ...  # raises FileMissing

    async def delete(self, name: str) -> None: ...  # missing is not an error


async def put_path(store: FileStore, name: str, path: Path) -> None:
    """The file at `path` stored as `name` (the staged file is consumed: moved or left for the caller to remove)."""
    put_file = getattr(store, "put_file", None)
    if put_file is not None:
        await put_file(name, path)
    else:
        await store.put(name, await asyncio.to_thread(path.read_bytes))


def scratch(store: FileStore) -> Path:
    """A new empty staging file: beside the local store's files (then renamed in place, on one file system), else in
    the system's temporary directory."""
    directory = getattr(store, "directory", None)
    handle, name = tempfile.mkstemp(prefix=".staged-", suffix=".tmp", dir=directory)
    os.close(handle)
    return Path(name)


class LocalFileStore:
    """Files on local disk (a laptop, one replica or replicas sharing the directory)."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # Staged files a crash left behind (a day old: no upload of a live replica sharing the directory is).
        for stale in self.directory.glob(".staged-*.tmp"):
            with contextlib.suppress(OSError):
                if stale.stat().st_mtime < time.time() - STALE_S:
                    stale.unlink()

    async def close(self) -> None:
        return None

    def _path(self, name: str) -> Path:
        return self.directory / check_name(name)

    def path(self, name: str) -> Path:
        """Where the file's content is (it may be missing): served from disk as it is read, never loaded whole."""
        return self._path(name)

    async def put(self, name: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, self._path(name), data)

    async def put_file(self, name: str, staged: Path) -> None:
        await asyncio.to_thread(self._put_file, staged, self._path(name))

    @staticmethod
    def _put_file(staged: Path, path: Path) -> None:
        with open(staged, "rb") as f:
            os.fsync(f.fileno())
        try:
            os.replace(staged, path)  # the same file system (see `scratch`): atomic, no copy
        except OSError:  # staged elsewhere (another device): copied, then renamed into place
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(staged, "rb") as src, open(tmp, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)

    @staticmethod
    def _put(path: Path, data: bytes) -> None:
        # Written under a temporary name, flushed, then renamed over the final one: a reader (or a restart after a
        # crash) sees the whole file or none of it (rename is atomic within a file system: POSIX rename(2)).
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)

    async def get(self, name: str) -> bytes:
        try:
            return await asyncio.to_thread(self._path(name).read_bytes)
        except FileNotFoundError:
            raise FileMissing(name) from None

    async def delete(self, name: str) -> None:
        await asyncio.to_thread(self._path(name).unlink, missing_ok=True)

"""Where file contents live: the FileStore protocol, the local-disk store, and the factory picking one from config.

Contents only: a file's metadata (owner, purpose, size) lives in the ledger store (llmp_files).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Protocol

from gateway.batch.file_names import FileMissing, check_name
from gateway.config.batch import BatchFiles

__all__ = ["FileMissing", "FileStore", "LocalFileStore", "check_name", "file_store"]


class FileStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def put(self, name: str, data: bytes) -> None: ...

    async def get(self, name: str) -> bytes: ...  # raises FileMissing

    async def delete(self, name: str) -> None: ...  # missing is not an error


class LocalFileStore:
    """Files on local disk (a laptop, one replica or replicas sharing the directory)."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    async def open(self) -> None:
        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)

    async def close(self) -> None:
        return None

    def _path(self, name: str) -> Path:
        return self.directory / check_name(name)

    async def put(self, name: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, self._path(name), data)

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


def file_store(settings: BatchFiles) -> FileStore:
    if settings.local_dir is not None:
        return LocalFileStore(settings.local_dir)
    assert settings.s3 is not None  # BatchFiles holds exactly one of local_dir and s3
    from gateway.batch.s3_files import S3FileStore  # boto3 is imported only by gateways that use S3

    store: FileStore = S3FileStore(settings.s3)
    return store

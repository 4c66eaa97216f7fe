"""Where file contents live: the FileStore protocol the stores implement (the batch branch's module; this copy holds
only what gateway/batch/s3_files.py needs, and the batch branch's files.py replaces it whole at merge).

Contents only: a file's metadata (owner, purpose, size) lives in the ledger store (llmp_files).
"""

from __future__ import annotations

import re
from typing import Protocol

_NAME = re.compile(r"file-[A-Za-z0-9]{1,64}").fullmatch


class FileMissing(Exception):
    """No content under that name (deleted, or never written)."""


class FileStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def put(self, name: str, data: bytes) -> None: ...

    async def get(self, name: str) -> bytes: ...  # raises FileMissing

    async def delete(self, name: str) -> None: ...  # missing is not an error


def check_name(name: str) -> str:
    """A file id as we mint them (`file-<hex>`): never a path of its own (no `/`, no `..`)."""
    if not _NAME(name):
        raise ValueError(f"not a file id: {name[:80]!r}")
    return name

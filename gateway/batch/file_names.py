"""A stored file's name and its absence: what every file store shares (gateway/batch/files.py, s3_files.py).

Apart from files.py so that a store module imports these without importing the factory that imports it.
"""

from __future__ import annotations

import re

_NAME = re.compile(r"file-[A-Za-z0-9]{1,64}").fullmatch


class FileMissing(Exception):
    """No content under that name (deleted, or never written)."""


def check_name(name: str) -> str:
    """A file id as we mint them (`file-<hex>`): never a path of its own (no `/`, no `..`)."""
    if not _NAME(name):
        raise ValueError(f"not a file id: {name[:80]!r}")
    return name

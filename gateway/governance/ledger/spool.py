"""The durable local spool of spend records: append-only segment files, rotated, flushed, replayed after a crash.

A record is one JSON line written with one `write(2)` to the active segment before the
client's response completes, so it survives the process being killed (SIGKILL, OOM,
a crash): the bytes are in the kernel. Against a machine crash or power loss they are
durable once fsynced: `fsync: interval` fsyncs each segment when it is rotated (every
flush interval), `fsync: always` before each response (slow).

Each live segment is held with an exclusive `flock`; the kernel drops the lock when its
process dies, however it dies. A segment whose lock can be taken belongs to nobody: it
is replayed (its records inserted, ignoring ids already present) and deleted. So several
worker processes may share one spool directory.

Segment names carry the identity of the store they are for (`store_identity`), and a spool
replays only its own store's segments: two gateways of different databases sharing a
directory never put each other's records in the wrong one. Segments from before names
carried it (`spend-<ns>-<pid>-<seq>.spool`) are replayed by whichever gateway finds them,
as they always were. The default directory is per store too (`default_spool_dir`).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import orjson

SUFFIX = ".spool"
LEGACY = "spend-[0-9]*" + SUFFIX  # written before segment names said which store they are for


def store_identity(url: str) -> str:
    """Which database a store URL names, as 16 hex digits: scheme, user, host, port and database (or the
    SQLite file's absolute path), never the password (the identity is written in file names)."""
    if url.startswith("sqlite:///"):
        where = "sqlite:" + os.path.abspath(url[len("sqlite:///"):])
    else:
        u = urlparse(url)
        scheme = "postgresql" if u.scheme == "postgres" else u.scheme
        where = f"{scheme}:{u.username or ''}@{u.hostname or ''}:{u.port or 5432}/{u.path.lstrip('/')}"
    return hashlib.sha256(where.encode()).hexdigest()[:16]


def default_spool_dir(url: str) -> str:
    """`./llmp-spool/<store identity>`: gateways of different stores started in one directory keep apart."""
    return os.path.join("llmp-spool", store_identity(url))


@dataclass
class Segment:
    path: Path
    fd: int
    records: int = 0
    lines: list[bytes] | None = None  # what this process appended, kept so a flush need not read the file back


class SpendSpool:
    def __init__(self, directory: str | Path, fsync_always: bool = False, store_id: str = "") -> None:
        self.directory = Path(directory)
        self.fsync_always = fsync_always
        self.store_id = store_id
        self._name = f"spend-s{store_id}-" if store_id else "spend-"
        self.active: Segment | None = None
        self._seq = 0

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.active = self._new_segment()

    def _new_segment(self) -> Segment:
        self._seq += 1
        path = self.directory / f"{self._name}{time.time_ns()}-{os.getpid()}-{self._seq}{SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return Segment(path, fd, 0, [])

    def append(self, record: dict[str, Any]) -> None:
        """One record, in the kernel when this returns (and on disk with fsync: always)."""
        seg = self.active
        assert seg is not None, "spool not open"
        line = orjson.dumps(record)
        os.write(seg.fd, line + b"\n")
        seg.records += 1
        if seg.lines is not None:
            seg.lines.append(line)
        if self.fsync_always:
            os.fsync(seg.fd)

    def rotate(self) -> Segment | None:
        """Start a new active segment; the old one (still locked by us) is returned for flushing."""
        old = self.active
        if old is None or old.records == 0:
            return None
        self.active = self._new_segment()
        return old

    def orphans(self) -> list[Segment]:
        """Segments of dead processes (their lock is free): now locked by us, for replay."""
        ours = {self.active.path} if self.active else set()
        found = []
        paths = set(self.directory.glob(f"{self._name}*{SUFFIX}")) | set(self.directory.glob(LEGACY))
        for path in sorted(paths):
            if path in ours:
                continue
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # another process replayed it meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # alive: its owner flushes it
            if not path.exists():  # replayed and deleted between our glob and our lock
                os.close(fd)
                continue
            found.append(Segment(path, fd, -1))
        return found

    @staticmethod
    def read(segment: Segment) -> list[bytes]:
        """The segment's complete records, one JSON object per item."""
        with open(segment.path, "rb") as f:
            data = f.read()
        lines = []
        for line in data.split(b"\n"):
            if not line:
                continue
            try:
                orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a torn last line (power loss mid-write): its response never completed
            lines.append(line)
        return lines

    def quarantine(self, line: bytes, reason: str) -> None:
        """Set a record the store refuses aside, in `quarantine.jsonl` beside the segments, for a human to look at:
        it never holds the rest of the spool back."""
        entry = orjson.dumps({"ts": time.time(), "store": self.store_id, "reason": reason[:300],
                              "record": line.decode(errors="replace")})
        fd = os.open(self.directory / "quarantine.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, entry + b"\n")
            os.fsync(fd)  # before the segment holding the record is deleted
        finally:
            os.close(fd)

    @staticmethod
    def sync(segment: Segment) -> None:
        os.fsync(segment.fd)

    @staticmethod
    def done(segment: Segment) -> None:
        """The segment's records are in the store: delete it, then let go of its lock."""
        try:
            segment.path.unlink()
        except FileNotFoundError:
            pass
        os.close(segment.fd)

    @staticmethod
    def release(segment: Segment) -> None:
        """Give a segment back unflushed (the store is down): the next flush or start replays it."""
        os.close(segment.fd)

    def close(self) -> None:
        if self.active is not None:
            seg, self.active = self.active, None
            if seg.records == 0:
                self.done(seg)
            else:
                os.fsync(seg.fd)
                os.close(seg.fd)

"""Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam 2018) over a pool's replicas."""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

VIRTUAL_NODES = 64


def stable_hash(data: bytes) -> int:
    # Same answer in every worker process and every gateway replica (unlike hash()).
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class BoundedLoadRing(Generic[T]):
    """Maps a session key to replicas: its ring successor first, skipping any replica over capacity.

    Capacity is ceil(c * (total in-flight + 1) / replicas), so no replica takes
    more than c times the mean load, while a given key keeps landing on the
    same replica whenever that replica has room (its KV cache stays warm).
    """

    def __init__(self, members: Sequence[T], name: Callable[[T], str], vnodes: int = VIRTUAL_NODES) -> None:
        self.members = list(members)
        points = []
        for index, member in enumerate(self.members):
            label = name(member).encode()
            for v in range(vnodes):
                points.append((stable_hash(label + b"#" + str(v).encode()), index))
        points.sort()
        self._hashes = [p[0] for p in points]
        self._owners = [p[1] for p in points]

    def order(self, key: bytes, load: Callable[[T], int], usable: Callable[[T], bool], c: float) -> list[T]:
        """Replicas in the order to try them for `key`: the bounded-load pick first, then ring order."""
        n = len(self.members)
        if n == 0:
            return []
        if n == 1:
            return self.members[:]
        total = sum(load(m) for m in self.members)
        capacity = math.ceil(c * (total + 1) / n)
        start = bisect.bisect_left(self._hashes, stable_hash(key)) % len(self._hashes)
        seen: list[int] = []
        size = len(self._owners)
        for step in range(size):
            owner = self._owners[(start + step) % size]
            if owner not in seen:
                seen.append(owner)
                if len(seen) == n:
                    break
        walk = [self.members[i] for i in seen]
        pick = next((m for m in walk if usable(m) and load(m) < capacity), None)
        if pick is None:
            return walk
        return [pick] + [m for m in walk if m is not pick]

"""The `cache:` config section: which calls the response cache (gateway/cache/) answers, for how long, and its size.

    cache:
      ttl_seconds: 3600              # an answer is served for this long after it was stored
      max_entry_bytes: 1048576       # an answer larger than this is not stored (at most 16 MiB)
      max_bytes: 268435456           # all cached answers of this gateway's store; the soonest to expire go first
      hit_cost_fraction: 0.0         # a hit costs this fraction of what the call would have cost
      scope: team                    # team: a team's keys share answers (a key without a team is its own scope)
                                     # key: every key its own
      models: [llama-3-1-8b]         # aliases cached for every caller ("*": every alias)
      teams: []                      # team_ids whose calls are cached on every alias
      keys: []                       # key aliases likewise
      temperature_above_zero: false  # true: calls with temperature > 0 (or none given) are cached too

The store is the top-level `redis` section when present (shared by the replicas of the region), else an
in-process LRU (one replica). See gateway/README.md, "Response cache".
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MIB = 1024 * 1024


class CacheSettings(BaseModel):
    # Same rule as gateway.config.native: unknown keys are typos, refused by name.
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Redis takes TTLs in milliseconds as a 64-bit integer: a year bounds it far below that, and far above any use.
    ttl_seconds: float = Field(3600.0, gt=0, le=366 * 86400)
    # A hit reads its entry in one Redis GET, bounded by redis.timeout_ms (100 ms by default), and a GET that times out
    # makes every call bypass the cache for redis.retry_after_ms: 16 MiB took 46 ms on loopback here (Redis sends a
    # reply 64 KiB per event loop turn: networking.c `writeToClient`, NET_MAX_WRITES_PER_EVENT), more across a VPC.
    # Larger answers are not worth the risk.
    max_entry_bytes: int = Field(MIB, ge=1, le=16 * MIB)
    max_bytes: int = Field(256 * MIB, ge=1)
    hit_cost_fraction: float = Field(0.0, ge=0, le=1)
    scope: Literal["team", "key"] = "team"
    models: list[str] = []
    teams: list[str] = []
    keys: list[str] = []
    temperature_above_zero: bool = False

    def covers(self, alias: str, group: str, team_id: str | None, key_alias: str | None) -> bool:
        """Whether a call to `alias` (served by the model alias `group`) by this caller is cached."""
        models = self.models
        return ("*" in models or alias in models or group in models
                or (team_id is not None and team_id in self.teams)
                or (key_alias is not None and key_alias in self.keys))


def check_cache(cache: CacheSettings | None, aliases: Collection[str]) -> None:
    """Cross-checks against the rest of the config; ValueError naming the field."""
    if cache is None:
        return
    if cache.max_entry_bytes > cache.max_bytes:
        raise ValueError(f"cache.max_entry_bytes ({cache.max_entry_bytes}) is larger than cache.max_bytes "
                         f"({cache.max_bytes}): no answer that size could be kept")
    for alias in cache.models:
        if alias != "*" and alias not in aliases:
            raise ValueError(f"cache.models: {alias!r} is not a model alias (or \"*\" for every alias)")
    if not (cache.models or cache.teams or cache.keys):
        raise ValueError("cache: names no model, team or key to cache for (set cache.models, e.g. [\"*\"])")

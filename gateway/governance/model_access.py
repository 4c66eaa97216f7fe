"""Whether a key's, team's or user's `models` list lets it call a model name, as LiteLLM decides it.

LiteLLM 1.106.2, litellm/proxy/auth/auth_checks.py: `_can_object_call_model` allows a call when the name the
client sent, or the model group a model_group_alias names, passes `check_model_access_helper`: an empty list, `*`
or `all-proxy-models` allows every model; `all-team-models` stands for every proxy model when the key belongs to
a team (`_resolve_all_team_model_sentinel_for_auth_check`, the team's own list still applies); an entry with `*`
allows the names it matches whole (`is_model_allowed_by_pattern`: `^pattern$` with `*` as `.*`); any other entry
allows exactly that name. Here a wildcard-served name's pattern (`openai/*`) counts as its model group too, so a
key given the configured `openai/*` may call what it serves.

Not carried over: LiteLLM also matches `gpt-4o` against `openai/*` by guessing the provider of a bare name
(`_model_custom_llm_provider_matches_wildcard_pattern`), and knows model access groups (model_info.access_groups,
ignored by the settings table). Dots and other regex characters in a pattern match themselves here, where LiteLLM
leaves them unescaped (`gpt-4.1*` would also take `gpt-401` there).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

ALL_MODELS = frozenset({"*", "all-proxy-models"})
ALL_TEAM_MODELS = "all-team-models"


@lru_cache(maxsize=4096)
def _pattern(entry: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in entry.split("*")))


def may_use(models: Sequence[str], name: str, group: str | None = None, in_team: bool = False) -> bool:
    """May a holder of `models` call `name` (served by the model group `group`)? An empty list allows all."""
    if not models:
        return True
    names = (name,) if group is None or group == name else (name, group)
    for entry in models:
        if entry in ALL_MODELS or entry in names or (in_team and entry == ALL_TEAM_MODELS):
            return True
        if "*" in entry and any(_pattern(entry).fullmatch(n) for n in names):
            return True
    return False

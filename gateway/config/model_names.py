"""Model names with `*` wildcards (LiteLLM's wildcard routing): which client names a pattern matches, and the
upstream model name the matched parts make.

LiteLLM 1.106.2, litellm/router_utils/pattern_match_deployments.py: a model_name pattern becomes
`re.escape(pattern).replace(r"\\*", "(.*)")` matched with `re.match` (anchored at the start; the last `(.*)`
takes the rest), patterns are tried most specific first (longest regex, then most wildcards), and each
`*` of the deployment's model is replaced, in order, by the part the pattern's `*` matched
(`set_deployment_model_name`): `model_name: openai/*` with `model: openai/*` sends `gpt-4o` upstream for
a client's `openai/gpt-4o`; `model_name: "*"` with `model: openai/*` sends the client's name as is.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping

WILDCARD = "*"


def is_pattern(name: str) -> bool:
    return WILDCARD in name


@functools.lru_cache(maxsize=1024)
def pattern_regex(pattern: str) -> re.Pattern[str]:
    # Cached: called per request with the config's few patterns (re's own cache still escapes and looks up).
    # Used with `.match` as LiteLLM does: anchored at the start only, so `gpt-*-mini` also takes
    # `gpt-4o-mini-tts` (and sends `gpt-4o-mini` upstream), exactly as a LiteLLM proxy would.
    return re.compile(re.escape(pattern).replace(r"\*", "(.*)"))


def by_specificity(patterns: Iterable[str]) -> list[str]:
    """Patterns in the order LiteLLM tries them: longest regex first, then the one with more wildcards."""
    specials = "*+?\\^$|()"

    def key(p: str) -> tuple[int, int]:
        regex = pattern_regex(p).pattern
        return len(regex), sum(regex.count(c) for c in specials)

    return sorted(patterns, key=key, reverse=True)


def match(patterns: Iterable[str], name: str) -> tuple[str, tuple[str, ...]] | None:
    """The first pattern (in the given order) matching `name`, and the parts its wildcards matched."""
    for pattern in patterns:
        found = pattern_regex(pattern).match(name)
        if found:
            return pattern, found.groups()
    return None


def upstream_name(model: str, parts: tuple[str, ...], client_name: str) -> str:
    """A deployment's model with each `*` replaced by the matched parts, in order (LiteLLM's rule; with more
    parts than wildcards it sends the client's name as is)."""
    if not parts or WILDCARD not in model:
        return model
    if len(parts) > model.count(WILDCARD):
        return client_name
    for part in parts:
        model = model.replace(WILDCARD, part, 1)
    return model


class ModelGroups:
    """Which configured model alias serves a name a client sends: the alias itself, a model_aliases name's target
    (LiteLLM's model_group_alias), or the most specific wildcard alias matching it, as the router resolves it
    (upstream/routing.py `Router.route`)."""

    def __init__(self, aliases: Iterable[str], renames: Mapping[str, str]) -> None:
        self.aliases = frozenset(aliases)
        self.renames = dict(renames)
        self.patterns = by_specificity(a for a in self.aliases if is_pattern(a))

    def of(self, name: str) -> str | None:
        """The model alias serving `name`, or None when no route serves it."""
        if name in self.aliases:
            return name
        target = self.renames.get(name, name)
        if target in self.aliases:
            return target
        hit = match(self.patterns, target)
        return hit[0] if hit is not None else None

    def label(self, name: str) -> str:
        """`name` as a metrics label: a configured name as the client called it, a wildcard match by its pattern,
        anything else "unknown" (client-chosen strings never become label values)."""
        if name in self.aliases or name in self.renames:
            return name
        return self.of(name) or "unknown"

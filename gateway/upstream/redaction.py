"""Upstream text shown to clients and written to logs: length-capped, secrets and key-shaped strings redacted."""

from __future__ import annotations

import re
from collections.abc import Iterable

LIMIT = 200
REDACTED = "[redacted]"
# Shapes of credentials an upstream may echo: a bearer token, an `sk-...` key (OpenAI, Anthropic, LiteLLM,
# ours), a header or field named like a key with its value, and any long run mixing letters and digits.
_SHAPES = re.compile(
    r"(?i)(?P<bearer>bearer\s+)[^\s\"',;}]+"
    r"|\bsk-[A-Za-z0-9_\-]{6,}"
    r"|(?P<field>\b(?:x-api-key|api[_-]?key|authorization|token|secret|password)[\"']?\s*[:=]\s*[\"']?(?:bearer\s+)?)"
    r"[^\s\"',;}]+"
    r"|\b(?=[A-Za-z0-9_\-+/]*\d)(?=[A-Za-z0-9_\-+/]*[A-Za-z])[A-Za-z0-9_\-+/]{24,}=*"
)


def _shape(match: re.Match[str]) -> str:
    prefix = match.group("bearer") or match.group("field") or ""
    return prefix + REDACTED


def redact(text: str, secrets: Iterable[str] = (), limit: int = LIMIT) -> str:
    """`text` on one line, at most `limit` characters, with every known secret and key-shaped string redacted."""
    text = text[: limit * 20]  # bounded work on a huge body; what is cut is never shown
    for secret in secrets:
        if len(secret) >= 8:
            text = text.replace(secret, REDACTED)
    text = _SHAPES.sub(_shape, text)
    text = " ".join(text.split())  # no line breaks or control whitespace from the upstream in logs
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""Judging a LiteLLM config against the settings table (litellm_settings.py): refuse, or list what is ignored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.config.errors import ConfigError
from gateway.config.litellm_settings import BY_PATH, SETTINGS


@dataclass(frozen=True, slots=True)
class Ignored:
    """One ignored setting of a loaded file: logged once at start."""

    path: str
    why: str

    def line(self) -> str:
        return f"{self.path} ignored: {self.why}"


PLUGIN = "a plug-in (a guardrail, an interception, a Python hook) may rewrite or reject calls; the gateway runs none"
SECTIONS = ("litellm_settings", "general_settings", "router_settings")
UNKNOWN = "not a LiteLLM setting this gateway knows"


def _on(value: Any) -> bool:
    """Does this value turn a setting on? `false`, `[]`, `{}`, `""` and null leave it off."""
    return value is not None and value is not False and value != [] and value != {} and value != ""


def review(doc: dict[str, Any]) -> list[Ignored]:
    """Refuse (ConfigError naming the first refused setting and why) or list the ignored settings, each once."""
    found: dict[str, Ignored] = {}

    def judge(path: str, shown: str, value: Any) -> None:
        setting = BY_PATH.get(path)
        if setting is None:
            if _on(value):
                found.setdefault(path, Ignored(path, UNKNOWN))
            return
        if setting.outcome == "honoured" or not _on(value):
            return
        refused = setting.outcome == "refused" or (setting.refuse_when is not None and setting.refuse_when(value))
        if refused:
            reason = setting.why if setting.outcome == "refused" else \
                PLUGIN
            raise ConfigError(f"{shown}: not supported by the gateway: {reason}")
        found.setdefault(path, Ignored(path, setting.why))

    for name, value in doc.items():
        if name in SECTIONS:
            for key, inner in (value or {}).items() if isinstance(value, dict) else ():
                judge(f"{name}.{key}", f"{name}.{key}", inner)
        else:
            judge(str(name), str(name), value)
    for i, entry in enumerate(doc.get("model_list") or []):
        for part in ("litellm_params", "model_info"):
            inner = entry.get(part) if isinstance(entry, dict) else None
            for key, value in inner.items() if isinstance(inner, dict) else ():
                judge(f"model_list[].{part}.{key}", f"model_list[{i}].{part}.{key}", value)
    return list(found.values())


def markdown_table() -> str:
    """The README's table of LiteLLM settings (gateway/README.md, "LiteLLM format"), generated from SETTINGS."""
    rows = ["| LiteLLM setting | Gateway | Why |", "|---|---|---|"]
    for outcome in ("honoured", "ignored", "refused"):
        for s in SETTINGS:
            if s.outcome == outcome:
                extra = " (refused for anything but logging integrations)" if s.refuse_when is not None else ""
                rows.append(f"| `{s.path}` | {s.outcome}{extra} | {s.why.replace('|', '/')} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")

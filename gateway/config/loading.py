"""Loading a config file: YAML, then the native format or LiteLLM's, told apart by the document's shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.config.errors import ConfigError
from gateway.config.litellm import LITELLM_NAMES, translate
from gateway.config.litellm_review import Ignored
from gateway.config.native import GatewayConfig, parse_native


@dataclass(frozen=True)
class Loaded:
    """A config as loaded from its file: what it says, and the LiteLLM settings it ignores (logged once at start)."""

    config: GatewayConfig
    path: str = ""
    litellm: bool = False
    ignored: list[Ignored] = field(default_factory=list)

    def explain(self, exc: ConfigError) -> str:
        """A later check's error (the master key's), in the words of the file the user wrote, naming it."""
        message = str(exc)
        if self.litellm:
            for ours, theirs in LITELLM_NAMES.items():
                if message.startswith(ours + ":"):
                    message = theirs + message[len(ours):]
        return f"{self.path}: {message}" if self.path else message


def parse_config(doc: Any) -> GatewayConfig:
    """Native format, or LiteLLM's when the document has a `model_list`."""
    return parse_loaded(doc).config


def parse_loaded(doc: Any, path: str = "") -> Loaded:
    if isinstance(doc, dict) and "model_list" in doc:
        config, ignored = translate(doc)
        return Loaded(config, path, True, ignored)
    return Loaded(parse_native(doc), path)


def load_config(path: str | Path) -> GatewayConfig:
    return load(path).config


def load(path: str | Path) -> Loaded:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    try:
        return parse_loaded(doc, str(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None

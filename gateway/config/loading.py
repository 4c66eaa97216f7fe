"""Loading a config file: YAML, then the native format or LiteLLM's, told apart by the document's shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gateway.config.errors import ConfigError
from gateway.config.litellm import from_litellm
from gateway.config.native import GatewayConfig, parse_native


def parse_config(doc: Any) -> GatewayConfig:
    """Native format, or LiteLLM's when the document has a `model_list`."""
    if isinstance(doc, dict) and "model_list" in doc:
        return from_litellm(doc)
    return parse_native(doc)


def load_config(path: str | Path) -> GatewayConfig:
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
        return parse_config(doc)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None

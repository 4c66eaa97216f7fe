"""`os.environ/NAME` values (LiteLLM's convention), read from the environment when a config is loaded."""

from __future__ import annotations

import os
from typing import Any

from gateway.config.errors import ConfigError

ENV_PREFIX = "os.environ/"


def resolve_env(value: Any, where: str = "") -> Any:
    """Replace every `os.environ/NAME` string (LiteLLM's convention) by the variable's value."""
    if isinstance(value, str):
        if value.startswith(ENV_PREFIX):
            name = value[len(ENV_PREFIX):]
            if name not in os.environ:
                raise ConfigError(f"{where or 'value'}: environment variable {name} is not set")
            return os.environ[name]
        return value
    if isinstance(value, dict):
        return {k: resolve_env(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_env(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value

"""`os.environ/NAME` values (LiteLLM's convention), read from the environment when a config is loaded."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from gateway.config.errors import ConfigError

ENV_PREFIX = "os.environ/"


def resolve_env(value: Any, where: str = "", environ: Mapping[str, str] | None = None) -> Any:
    """Replace every `os.environ/NAME` string (LiteLLM's convention) by the variable's value.

    `environ` defaults to the process environment; a LiteLLM file's `environment_variables` are laid over it
    (LiteLLM sets them in os.environ before reading the rest of the file)."""
    env = os.environ if environ is None else environ
    if isinstance(value, str):
        if value.startswith(ENV_PREFIX):
            name = value[len(ENV_PREFIX):]
            if name not in env:
                raise ConfigError(f"{where or 'value'}: environment variable {name} is not set")
            return env[name]
        return value
    if isinstance(value, dict):
        return {k: resolve_env(v, f"{where}.{k}" if where else str(k), env) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_env(v, f"{where}[{i}]", env) for i, v in enumerate(value)]
    return value

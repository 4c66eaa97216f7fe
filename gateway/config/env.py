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
    (LiteLLM sets them in os.environ before reading the rest of the file). Every variable that is not set is
    named in one error, each with its field, so that one run shows everything to export."""
    env = os.environ if environ is None else environ
    missing: list[tuple[str, str]] = []
    resolved = _resolve(value, where, env, missing)
    if missing:
        fields = "; ".join(f"{field or 'value'}: environment variable {name} is not set" for field, name in missing)
        names = " ".join(dict.fromkeys(name for _, name in missing))
        plural = "s" if len(missing) > 1 else ""
        raise ConfigError(f"{fields} ({len(missing)} variable{plural} to set: {names})")
    return resolved


def _resolve(value: Any, where: str, env: Mapping[str, str], missing: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):
        if value.startswith(ENV_PREFIX):
            name = value[len(ENV_PREFIX):]
            if name not in env:
                missing.append((where, name))
                return value
            return env[name]
        return value
    if isinstance(value, dict):
        return {k: _resolve(v, f"{where}.{k}" if where else str(k), env, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, f"{where}[{i}]", env, missing) for i, v in enumerate(value)]
    return value

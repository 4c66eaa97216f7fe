"""Config errors, worded for the person who wrote the file: `ConfigError` and pydantic's errors as one line."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class ConfigError(ValueError):
    """A config file problem, worded for the person who wrote the file."""


def format_validation_error(exc: ValidationError, doc: Any = None) -> str:
    lines = []
    for err in exc.errors():
        loc = _loc(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(lines)


def _loc(parts: tuple[Any, ...]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("int", "str", "float", "bool"):
            continue  # union branch names from pydantic, not fields the user wrote
        else:
            out += f".{part}" if out else str(part)
    return out

"""The shape a configured URL must have (upstreams, token endpoints): http(s), a host, no trailing slash."""

from __future__ import annotations

import re

_URL = re.compile(r"^https?://[^/\s]+(/\S*)?$")


def check_url(url: str) -> str:
    """The URL without its trailing slash, or a ValueError naming the value."""
    if not _URL.match(url):
        raise ValueError(f"{url!r} is not an http(s) URL")
    return url.rstrip("/")

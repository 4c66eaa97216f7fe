"""Free TCP ports for tests that start real servers."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on now (the kernel's choice for port 0 on 127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_on(*hosts: str) -> int:
    """A port free on every one of `hosts` (loopback addresses), so replicas can share it as pods do."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind((hosts[0], 0))
            port = first.getsockname()[1]
            try:
                for host in hosts[1:]:
                    with socket.socket() as other:
                        other.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no port free on all of {hosts}")

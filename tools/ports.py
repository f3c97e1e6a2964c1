"""Free local ports for services that tests and benchmarks start themselves.

A port the kernel hands out for ``bind(0)`` comes from its ephemeral range, and so does every port
that Ray's processes and outgoing connections take while the cluster starts: a port picked that way
and bound a few seconds later was taken in between often enough to fail CI ("Failed to bind to
address"). Ports are therefore picked *below* the ephemeral range, above Ray's worker-port range
(10002–19999) and below Serve's direct-ingress ports (30000–31000), where nothing is assigned
automatically.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_RAY_WORKER_PORTS_END = 20_000
_SERVE_DIRECT_INGRESS_START = 30_000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_DEFAULT_EPHEMERAL_START = 32_768
_pick = random.Random()


def _ephemeral_start() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _DEFAULT_EPHEMERAL_START


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A local TCP port that is free now and that no other process will be handed meanwhile."""
    end = min(_ephemeral_start(), _SERVE_DIRECT_INGRESS_START)
    if end <= _RAY_WORKER_PORTS_END + 1000:
        # An unusual ephemeral range leaves no quiet band: fall back to the kernel's choice.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    for _ in range(1000):
        port = _pick.randrange(_RAY_WORKER_PORTS_END, end)
        if _bindable(port):
            return port
    raise RuntimeError(f"no free port between {_RAY_WORKER_PORTS_END} and {end}")

"""Ports picked for test services stay out of ranges that others assign (CI once lost a race there)."""

from __future__ import annotations

import socket

from tools.ports import _RAY_WORKER_PORTS_END, _SERVE_DIRECT_INGRESS_START, _ephemeral_start, free_port


def test_free_port_is_below_the_ephemeral_range_and_bindable() -> None:
    for _ in range(20):
        port = free_port()
        assert _RAY_WORKER_PORTS_END <= port < min(_ephemeral_start(), _SERVE_DIRECT_INGRESS_START)
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_free_port_skips_a_port_in_use() -> None:
    held = []
    try:
        for _ in range(50):
            s = socket.socket()
            s.bind(("127.0.0.1", free_port()))
            held.append(s)
        in_use = {s.getsockname()[1] for s in held}
        assert len(in_use) == len(held)
        assert all(free_port() not in in_use for _ in range(200))
    finally:
        for s in held:
            s.close()

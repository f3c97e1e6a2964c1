"""Ports picked for test services stay out of ranges that others assign (CI once lost a race there)."""

from __future__ import annotations

import socket

import pytest

from tools import ports
from tools.ports import _RAY_WORKER_PORTS_END, _SERVE_DIRECT_INGRESS_START, _ephemeral_start, free_port


def test_free_port_is_below_the_ephemeral_range_and_bindable() -> None:
    for _ in range(20):
        port = free_port()
        assert _RAY_WORKER_PORTS_END <= port < min(_ephemeral_start(), _SERVE_DIRECT_INGRESS_START)
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_free_port_skips_a_port_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """The picker proposes a port that is taken, then a free one: only the free one may come back."""
    taken, free = free_port(), free_port()
    proposals = iter([taken, free])
    monkeypatch.setattr(ports._pick, "randrange", lambda start, end: next(proposals))
    with socket.socket() as held:
        held.bind(("127.0.0.1", taken))
        assert free_port() == free

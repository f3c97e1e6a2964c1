"""/health's readiness: a model that must be up counts only once Serve runs a replica of it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from ray import serve

from deployments.ingress.readiness import Readiness


def _status(**running: int) -> SimpleNamespace:
    """Serve's status with one app, ``engines``, whose deployments run ``running[name]`` replicas."""
    deployments = {name: SimpleNamespace(replica_states={"RUNNING": n, "STARTING": 1}) for name, n in running.items()}
    return SimpleNamespace(applications={"engines": SimpleNamespace(deployments=deployments)})


def test_waits_for_every_model_without_a_running_replica(monkeypatch: pytest.MonkeyPatch):
    calls = []
    states = iter([_status(A=0, B=2), _status(A=1, B=2)])
    monkeypatch.setattr(serve, "status", lambda: calls.append(1) or next(states))
    readiness = Readiness({"a": ("engines", "A"), "b": ("engines", "B"), "c": ("elsewhere", "C")}, cache_s=0)
    assert asyncio.run(readiness.waiting()) == ["a", "c"]  # c's app is not deployed at all
    assert asyncio.run(readiness.waiting()) == ["c"]
    assert len(calls) == 2


def test_the_controller_is_asked_once_per_cache_period(monkeypatch: pytest.MonkeyPatch):
    calls = []
    monkeypatch.setattr(serve, "status", lambda: calls.append(1) or _status(A=1))
    readiness = Readiness({"a": ("engines", "A")}, cache_s=60)

    async def probes() -> list[list[str]]:
        return await asyncio.gather(*(readiness.waiting() for _ in range(20)))

    assert asyncio.run(probes()) == [[]] * 20
    assert len(calls) == 1

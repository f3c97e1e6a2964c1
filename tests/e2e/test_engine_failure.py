"""A replica whose engine dies fails Serve's health check and is replaced; the model keeps answering."""

from __future__ import annotations

import os
import signal
import time

import openai
import pytest

from tests.e2e.served import Served
from tools.e2e_app import DFLASH_MODEL

pytestmark = pytest.mark.e2e


def test_dead_engine_fails_health_check_and_is_replaced(served: Served):
    handle = served.engine_handle(DFLASH_MODEL)
    pids = handle.engine_pids.remote().result()
    assert pids, "the replica reports no engine processes"
    handle.check_health.remote().result()  # healthy while the engine runs
    for pid in pids:
        os.kill(pid, signal.SIGKILL)  # the engine core dies for real, as in a GPU fault or OOM kill
    deadline = time.monotonic() + 30
    while True:
        try:
            handle.check_health.remote().result(timeout_s=10)
        except Exception:  # noqa: BLE001 - EngineDeadError from vLLM, or the replica already gone
            break
        assert time.monotonic() < deadline, "check_health still passes with the engine dead"
        time.sleep(0.5)

    client = openai.OpenAI(base_url=served.v1, api_key="unused", max_retries=0, timeout=120)
    deadline = time.monotonic() + 400  # Serve notices, stops the replica and starts a new engine
    while True:
        try:
            reply = client.completions.create(model=DFLASH_MODEL, prompt="Back?", max_tokens=4, temperature=0)
            break
        except (openai.APIStatusError, openai.APIConnectionError) as exc:
            assert time.monotonic() < deadline, f"no replacement replica answered: {exc}"
            time.sleep(2)
    assert reply.usage.completion_tokens == 4
    assert handle.engine_pids.remote().result() != pids

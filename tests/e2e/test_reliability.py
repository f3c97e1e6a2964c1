"""Faults injected for real into the running app: access control, overload, a replica killed under load.

A second ingress app ("front") with API keys in Redis, a per-key token bucket and a tight admission
limit is deployed in front of the shared engines of the session's app (a few seconds, no new engine),
so these checks need no restart of the main app. The replica kill runs last and waits until Serve
has brought the replacement up, so the tests after it find the app whole.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from bench.chaos_load import LoadGenerator
from bench.prom import sample_total
from config import AdmissionConfig, AuthConfig
from contracts.redis_keys import RedisKeys
from deployments.ingress import api_keys
from tests.e2e.served import Served
from tools import api_keys as cli
from tools.e2e_app import AR_MODEL, DFLASH_MODEL

pytestmark = pytest.mark.e2e

FRONT = "dflash-front"
FRONT_IN_FLIGHT, FRONT_QUEUED = 2, 2


@dataclass(frozen=True)
class Front:
    v1: str
    base_url: str
    redis_url: str

    def key(self, name: str, rate: float, burst: int, **limits: float | int) -> str:
        return cli.add(redis.Redis.from_url(self.redis_url), FRONT, name, rate_per_s=rate, burst=burst, **limits)


@pytest.fixture(scope="module")
def front(served: Served) -> Iterator[Front]:
    from ray import serve

    from deployments.ingress.app import Ingress
    from serve_app.build import admission_limits, ingress_options

    auth = AuthConfig(redis_keys=True, key_cache_s=0, rate_limit_per_s=1000, rate_limit_burst=1000)
    admission = AdmissionConfig(max_in_flight=FRONT_IN_FLIGHT, max_queued=FRONT_QUEUED, queue_timeout_s=300)
    ingress = served.config.ingress.model_copy(update={"num_replicas": 1, "num_cpus": 0, "admission": admission})
    config = served.config.model_copy(update={"name": FRONT, "auth": auth, "ingress": ingress})
    engines = {m.id: served.engine_handle(m.id) for m in served.config.models}
    serve.run(
        serve.deployment(Ingress).options(**ingress_options(config)).bind(config, engines, admission_limits(config)),
        name=FRONT,
        route_prefix="/front",
    )
    try:
        yield Front(v1=served.base_url + "/front/v1", base_url=served.base_url + "/front", redis_url=served.redis.url)
    finally:
        serve.delete(FRONT)


def _error(resp: httpx.Response, status: int, err_type: str) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["type"] == err_type and err["message"], err
    return err


def _chat(front: Front, key: str | None, content: str = "hi") -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": DFLASH_MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 2}
    return httpx.post(front.v1 + "/chat/completions", json=body, headers=headers, timeout=120)


def test_api_keys_rate_limit_and_no_secret_in_logs(front: Front):
    key = front.key("slow", rate=0.05, burst=2)
    prompt = f"my-secret-prompt-{uuid.uuid4().hex}"
    _error(_chat(front, None), 401, "authentication_error")
    _error(_chat(front, "sk-dflash-not-a-key"), 401, "authentication_error")
    # Raised outside the generation path too: the ApiError handler must be in the app Serve runs.
    _error(httpx.get(front.v1 + "/models", timeout=60), 401, "authentication_error")
    assert httpx.get(front.base_url + "/health").status_code == 200  # open
    assert [_chat(front, key, prompt).status_code for _ in range(2)] == [200, 200]
    limited = _chat(front, key, prompt)
    _error(limited, 429, "rate_limit_error")
    assert int(limited.headers["retry-after"]) >= 1
    assert cli.main(["--redis", front.redis_url, "--app", FRONT, "revoke", "slow"]) == 0
    _error(_chat(front, key), 401, "authentication_error")  # key_cache_s=0: revoked at once

    # Neither the key nor the prompt reached any log of the app (ingress, engines, proxy, controller).
    assert not _logs_holding(key, prompt)


def _logs_holding(*texts: str) -> list[str]:
    """This Ray session's log files (every process's: Serve's proxy, replicas, controller) holding any of ``texts``."""
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    wanted = [t.encode() for t in texts]
    holding = []
    for path in (p for p in logs.rglob("*") if p.is_file()):
        data = path.read_bytes()  # once per file, whatever the number of texts
        if any(w in data for w in wanted):
            holding.append(path.name)
    return holding


def test_serves_proxy_keeps_only_a_safe_client_request_id(front: Front):
    """Serve's proxy logs its request id and echoes it; a client's id that is not a short safe token never gets
    there (deployments/proxy_headers.py runs ahead of Serve's own request-id middleware)."""
    key = front.key("ids", rate=1000, burst=1000)
    safe, forged = f"client-{uuid.uuid4().hex}", f"forged-{uuid.uuid4().hex}<script>" + "A" * 600
    body = {"model": DFLASH_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

    def reply(request_id: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}", "x-request-id": request_id}
        answer = httpx.post(front.v1 + "/chat/completions", json=body, headers=headers, timeout=120)
        assert answer.status_code == 200, answer.text
        return answer

    assert reply(safe).headers["x-request-id"] == safe
    assert reply(forged).headers["x-request-id"] not in (forged, "")
    deadline = time.monotonic() + 30  # Serve logged the safe one: the scan below would see a forged one
    while not _logs_holding(safe):
        assert time.monotonic() < deadline, "no log holds the client's safe request id"
        time.sleep(0.5)
    assert not _logs_holding(forged.split("<")[0])


def test_token_budget_reserves_each_requests_bound_and_gives_back_what_it_did_not_spend(front: Front):
    """A key's own budget of 1,000 tokens, refilled too slowly to matter here; its bucket is read in Redis."""
    burst = 1000
    key = front.key("budget", rate=1000, burst=1000, tokens_per_s=0.001, token_burst=burst)
    client = redis.Redis.from_url(front.redis_url)
    bucket = RedisKeys(FRONT).token_bucket(api_keys.digest(key))

    def settles_at(expected: float) -> None:
        """The bucket holds ``expected`` once the request has settled (a stream settles after its last byte)."""
        deadline = time.monotonic() + 30
        while abs(float(client.hget(bucket, "tokens")) - expected) > 0.5:
            assert time.monotonic() < deadline, (client.hget(bucket, "tokens"), expected)
            time.sleep(0.2)

    url, headers = front.v1 + "/chat/completions", {"Authorization": f"Bearer {key}"}
    body = {"model": DFLASH_MODEL, "messages": [{"role": "user", "content": "Count to ten."}], "max_tokens": 24}
    body |= {"temperature": 0, "ignore_eos": True}  # the same usage every time
    reply = httpx.post(url, json=body, headers=headers, timeout=120)
    assert reply.status_code == 200, reply.text
    usage = reply.json()["usage"]
    spent = usage["prompt_tokens"] + usage["completion_tokens"]
    settles_at(burst - spent)  # reserved its bound (~60 tokens), got back all but what it spent

    # Streamed without asking for usage: settled by the usage chunk the ingress asked for and did not relay.
    with httpx.stream("POST", url, json=body | {"stream": True}, headers=headers, timeout=120) as stream:
        assert stream.status_code == 200
        events = [line for line in stream.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and not any('"usage"' in e for e in events), events[-3:]
    settles_at(burst - 2 * spent)

    # More than the bucket can ever hold is a 400; more than is left now, a 429 that says when to retry.
    over = _error(httpx.post(url, json=body | {"max_tokens": burst + 1}, headers=headers), 400, "invalid_request_error")
    assert over["code"] == "token_budget_exceeded"
    left = burst - 2 * spent
    short = httpx.post(url, json=body | {"max_tokens": left - 10}, headers=headers, timeout=60)
    assert _error(short, 429, "rate_limit_error")["code"] == "token_budget_exceeded"
    assert int(short.headers["retry-after"]) >= 1
    settles_at(left)  # a refused request takes nothing


def test_overload_burst_is_refused_with_429_not_queued_without_bound(front: Front):
    key = front.key("fast", rate=1000, burst=1000)
    load = LoadGenerator(front.v1, DFLASH_MODEL, max_tokens=96, api_key=key, timeout_s=300)
    report = asyncio.run(load.burst(12))
    counts = report.counts()
    assert set(counts) <= {"ok", "http_429"}, counts
    assert counts["ok"] >= FRONT_IN_FLIGHT + FRONT_QUEUED, counts  # admitted and queued ones all complete
    assert counts["http_429"] >= 1, counts
    assert all(o.retry_after == "1" for o in report.outcomes if o.kind == "http_429")


def _kill_replica(served: Served) -> tuple[str, list[psutil.Process]]:
    """SIGKILL the busiest AR replica's process (only it, as a crash would end it); returns its replica id
    and its engine processes, which must die with it."""
    replicas = served.engine_handle(AR_MODEL).broadcast("describe").results(timeout_s=30)
    victim = max(replicas, key=lambda r: r["report"].ongoing_requests)
    engine = psutil.Process(victim["pid"]).children(recursive=True)
    assert engine, "the replica runs its vLLM engine core in a child process"
    os.kill(victim["pid"], signal.SIGKILL)
    return victim["replica_id"], engine


def _retries(served: Served) -> float:
    return sum(
        sample_total(text, "dflash_serve_dispatch_retries_total", model=AR_MODEL) or 0.0
        for text in served.ingress_metrics()
    )


def test_replica_killed_under_load_loses_no_request(served: Served):
    """Requests not yet answered are retried on the other replica; streams under way end with an error
    event and [DONE]; none is lost or hangs; Serve starts a replacement."""
    retries_before = _retries(served)
    load = LoadGenerator(served.v1, AR_MODEL, workers=6, max_tokens=48, timeout_s=120)

    async def run() -> tuple[str, list[psutil.Process]]:
        stop = asyncio.Event()
        task = asyncio.create_task(load.run(stop))
        await asyncio.sleep(4)
        killed = await asyncio.to_thread(_kill_replica, served)
        await asyncio.sleep(10)
        stop.set()
        await task
        return killed

    victim, engine = asyncio.run(run())
    # Ray kills a dead worker's process group (RAY_process_group_cleanup_enabled): on a GPU an orphaned
    # engine core would keep the memory that the replacement replica needs.
    _, orphans = psutil.wait_procs(engine, timeout=60)
    assert not orphans, f"engine processes outlived their replica: {[p.pid for p in orphans]}"
    counts = load.report.counts()
    retried = _retries(served) - retries_before
    print(f"replica {victim} killed: sent={load.report.sent} {dict(counts)} retried={retried}")
    assert set(counts) <= {"ok", "stream_error"}, counts
    assert retried + counts["stream_error"] >= 1, "the kill hit no request in flight"

    deadline = time.monotonic() + 420  # Serve notices the death and starts a new engine (minutes on CPU)
    replicas: dict = {}
    while len(replicas) != 2 or victim in replicas:
        assert time.monotonic() < deadline, f"no replacement replica: {sorted(replicas)}"
        time.sleep(3)
        try:
            replicas = served.replica_reports(AR_MODEL)
        except Exception:  # noqa: BLE001 - the broadcast may still reach the dead replica for a moment
            replicas = {}

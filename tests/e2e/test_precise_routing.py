"""Precise routing on real engines: vLLM KV events through a real Redis, two ingress replicas, outages.

The AR twin of the e2e app runs two engine replicas in precise mode (each publishes vLLM's KV cache
events to the model's Redis stream) behind two ingress replicas, with session affinity on.
"""

from __future__ import annotations

import re
import threading
import time

import httpx
import openai
import pytest
import redis

from contracts.redis_keys import RedisKeys
from deployments.ingress.prompt import load_tokenizer, prompt_token_ids
from deployments.ingress.validation import parsed_request
from routing.events import BlocksStored, decode
from routing.hashing import block_hashes
from tests.e2e.served import Served
from tools.e2e_app import AR_MODEL

pytestmark = pytest.mark.e2e


def _long_system(topic: str) -> str:
    facts = " ".join(f"Fact {i} about {topic} deserves a careful and complete answer." for i in range(110))
    return f"You are an expert on {topic}. {facts}"


def _stream_key(served: Served) -> str:
    return RedisKeys(served.config.name).model_stream(AR_MODEL)


def _client(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.v1, api_key="unused", max_retries=0, timeout=300)


def _chat_request(body: dict):
    """The request as the ingress sends it on."""
    return parsed_request("chat", {"model": AR_MODEL, **body})


def _metric_sum(text: str, name: str, model: str = AR_MODEL) -> float:
    pattern = re.compile(rf'^{re.escape(name)}\{{[^}}]*model="{re.escape(model)}"[^}}]*\}} (\S+)$', re.M)
    return sum(float(v) for v in pattern.findall(text))


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _last_entry(r: redis.Redis, key: str) -> bytes:
    last = r.xrevrange(key, count=1)
    return last[0][0] if last else b"0-0"


def _engine_stored(r: redis.Redis, key: str, after: bytes) -> dict[str, list[int]]:
    """The hashes engines stored by the stream's entries after ``after``, by replica (routers' records apart)."""
    stored: dict[str, list[int]] = {}
    for _id, fields in r.xrange(key, min=b"(" + after):
        event = decode(fields[b"e"])
        if fields.get(b"src") == b"engine" and isinstance(event, BlocksStored):
            stored.setdefault(event.replica_id, []).extend(event.hashes)
    return stored


def _decisions(served: Served) -> list[dict[str, float]]:
    """Each ingress replica's routing decisions for the AR model, by reason (for failure messages)."""
    pattern = re.compile(r"^dflash_router_decisions_total\{([^}]*)\} (\S+)$", re.M)
    found = []
    for text in served.ingress_metrics():
        labels = [(dict(re.findall(r'(\w+)="([^"]*)"', m[1])), float(m[2])) for m in pattern.finditer(text)]
        found.append({lab["reason"]: v for lab, v in labels if lab.get("model") == AR_MODEL})
    return found


def _serving_replica(before: dict, after: dict) -> str:
    queried = {
        r: after[r].prefix_cache_queries_total - (before[r].prefix_cache_queries_total if r in before else 0)
        for r in after
    }
    assert sum(v > 0 for v in queried.values()) == 1, queried
    return max(queried, key=queried.get)


def test_ingress_renders_chat_exactly_as_vllm(served: Served):
    """The ingress tokenizes chat once and forwards the ids, so its rendering must be vLLM's, exactly."""
    model = next(m for m in served.config.models if m.id == AR_MODEL)
    tokenizer = load_tokenizer(*model.tokenizer_source())
    engine = served.engine_handle(AR_MODEL)
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": "What is 2+2?"},
    ]
    shapes = [
        {"messages": [{"role": "user", "content": "Hi"}]},
        {"messages": conversation},
        {"messages": conversation, "chat_template_kwargs": {"enable_thinking": True}},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Parts"}, {"type": "text", "text": "!"}]}]},
        {"messages": conversation, "tools": [tool]},
        {"messages": conversation, "tools": [tool], "tool_choice": "none"},
    ]
    for body in shapes:
        ours, exact = prompt_token_ids(tokenizer, "chat", _chat_request(body))
        theirs = engine.render_chat_ids.remote(_chat_request(body)).result(timeout_s=60)
        assert exact and ours == theirs, body
    # Tool-call history is transformed by vLLM before templating: the ingress leaves it to vLLM.
    history = [
        *conversation,
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    assert not prompt_token_ids(tokenizer, "chat", _chat_request({"messages": history, "tools": [tool]}))[1]


def test_router_hashes_equal_the_engines_kv_event_hashes(served: Served):
    r = redis.Redis.from_url(served.redis.url)
    key = _stream_key(served) + ":events"
    start_id = _last_entry(r, key)
    messages = [{"role": "system", "content": _long_system("glaciers")}, {"role": "user", "content": "One fact?"}]
    _client(served).chat.completions.create(model=AR_MODEL, messages=messages, max_tokens=4, temperature=0)

    model = next(m for m in served.config.models if m.id == AR_MODEL)
    ids, _exact = prompt_token_ids(
        load_tokenizer(*model.tokenizer_source()), "chat", _chat_request({"messages": messages})
    )
    stored: dict[str, list[int]] = {}

    def engine_stored_enough() -> bool:
        stored.clear()
        stored.update(_engine_stored(r, key, start_id))
        return bool(stored)

    _wait_for(engine_stored_enough, 15, "the engine's BlockStored events")
    reports = served.replica_reports(AR_MODEL)
    (replica, _), *others = stored.items()
    assert not others, "one request, one replica storing"
    geometry = reports[replica].geometry
    ours = block_hashes(ids, geometry)
    assert len(ours) >= 2, (len(ids), geometry)
    # Stores arrive step by step (prefill may take several): wait until the whole prompt is in.
    try:
        _wait_for(lambda: engine_stored_enough() and len(stored[replica]) >= len(ours), 15, "the whole prompt")
    except AssertionError:
        pass  # the comparison below says what differs
    engine_hashes = stored[replica]
    assert engine_hashes[: len(ours)] == ours, (len(ids), geometry, len(engine_hashes), len(ours))


def test_two_ingress_replicas_both_route_on_the_shared_index(served: Served):
    """Both ingress replicas made decisions for the AR model and follow the shared stream."""
    client = _client(served)
    for i in range(12):
        client.chat.completions.create(
            model=AR_MODEL, messages=[{"role": "user", "content": f"Ping {i}"}], max_tokens=2, temperature=0
        )
    texts = served.ingress_metrics()
    assert len(texts) == 2
    decisions = [_metric_sum(t, "dflash_router_decisions_total") for t in texts]
    assert all(d > 0 for d in decisions), decisions
    assert all(_metric_sum(t, "dflash_router_stream_connected") == 1 for t in texts)
    merged = httpx.get(served.base_url + "/metrics", timeout=30).text
    assert _metric_sum(merged, "dflash_router_decisions_total") == sum(decisions)
    assert _metric_sum(merged, "dflash_router_index_blocks") > 0


def test_session_affinity_keeps_each_session_on_one_replica(served: Served):
    client = _client(served)
    homes: dict[str, str] = {}
    for s in range(6):
        session = f"session-{s}"
        seen = set()
        for turn in range(3):
            before = served.replica_reports(AR_MODEL)
            kwargs = {"extra_headers": {"x-session-id": session}} if s % 2 else {"user": session}
            client.chat.completions.create(
                model=AR_MODEL,
                messages=[{"role": "user", "content": f"Unrelated question {turn} of {session}?"}],
                max_tokens=2,
                temperature=0,
                **kwargs,
            )
            seen.add(_serving_replica(before, served.replica_reports(AR_MODEL)))
        assert len(seen) == 1, (session, seen)
        homes[session] = seen.pop()
    print("session homes:", homes)


def test_redis_outage_fails_no_request_and_routing_recovers(served: Served):
    client = _client(served)
    failures: list[BaseException] = []
    done = threading.Event()
    sent = 0

    def traffic() -> None:
        nonlocal sent
        while not done.is_set():
            try:
                client.chat.completions.create(
                    model=AR_MODEL, messages=[{"role": "user", "content": f"During outage {sent}"}], max_tokens=2
                )
            except Exception as exc:  # noqa: BLE001 - any failure is what this test looks for
                failures.append(exc)
            sent += 1

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        time.sleep(2)
        served.redis.stop()
        time.sleep(6)  # routers and engines notice, retry and keep serving
        served.redis.start()  # same port, empty: no stream, no snapshots
        time.sleep(4)
    finally:
        done.set()
        worker.join(timeout=300)
    assert not failures, failures[:3]
    assert sent >= 3

    r = redis.Redis.from_url(served.redis.url)

    def resynced() -> bool:
        texts = served.ingress_metrics()
        snaps = list(r.scan_iter(match=_stream_key(served) + ":snap:*"))
        return len(snaps) == 2 and all(_metric_sum(t, "dflash_router_stream_connected") == 1 for t in texts)

    _wait_for(resynced, 60, "engines' snapshots and routers' reconnection after the restart")

    # Routing works on the rebuilt picture: a new conversation's second turn finds its first turn's cache.
    key = _stream_key(served) + ":events"
    start_id = _last_entry(r, key)
    # A first block of its own each run: the first turn is a cold prompt, whose blocks the engine stores anew.
    system = f"Run {time.time_ns()}. {_long_system('tides')}"
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "One fact?"}]
    before = served.replica_reports(AR_MODEL)
    first = client.chat.completions.create(model=AR_MODEL, messages=messages, max_tokens=4, temperature=0)
    middle = served.replica_reports(AR_MODEL)
    home = _serving_replica(before, middle)
    # The second turn may reach the other ingress replica, which learns of the first from the stream: wait
    # until the engine's events are there (the follower reads them at once; a user's next turn comes later).
    _wait_for(lambda: home in _engine_stored(r, key, start_id), 15, "the first turn's KV events in the stream")
    time.sleep(1)
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "More?"},
    ]
    decided = _decisions(served)
    client.chat.completions.create(model=AR_MODEL, messages=messages, max_tokens=4, temperature=0)
    after = served.replica_reports(AR_MODEL)
    assert _serving_replica(middle, after) == home, ("decisions by reason", decided, _decisions(served))
    assert after[home].prefix_cache_hits_total > middle[home].prefix_cache_hits_total

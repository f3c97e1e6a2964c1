"""The simulator's model of SGLang's gateway (``sim/routing/baselines/sglang_cache_aware.py``) against the real one.

The routing benchmarks compare our router with ``sglang_cache_aware`` in the simulator and with the real gateway
(``smg launch --policy cache_aware``, ``bench/peer_routers.py``) on real engines. The simulator's numbers are only
a fair baseline if its model routes as the gateway does, so this test replays one trace through both and compares
every decision: the router under test is the real ``smg`` binary from the environment, started with the benchmark's
own command line (``PeerArm.argv``); only the engines are fakes.

* **Fake engines.** Three tiny aiohttp servers on one event loop in a thread impersonate vLLM's OpenAI server as
  far as the gateway looks at it. At registration smg needs ``GET /health`` (200) and ``GET /v1/models`` (the
  served model; ``owned_by: vllm`` makes the worker a vLLM one, as the benchmark's engines are); it also asks
  ``/version`` and reads load reports at ``/loads``, ``/v1/loads`` and ``/metrics`` (an unidentified engine is
  asked ``/server_info``, ``/get_server_info``, ``/model_info`` and ``/get_model_info`` too). The fakes answer
  those with 404, which the gateway tolerates: with no load report from any worker it ranks workers by its own
  count of requests in flight there (a dark fleet), the load the model is given. In a case with reports,
  ``/metrics`` answers with vLLM's gauges instead (the requests the fake holds as running), as real engines do in
  the benchmark. A chat completion is answered
  non-streaming with an OpenAI-shaped body and usage. Each fake records which requests reached it (by the
  ``x-request-id`` header, which smg forwards) and holds a request open until the test releases it, so the test
  sets every worker's in-flight count exactly: that is how the load-dependent branches are driven
  deterministically, with no timing involved.
* **The model** runs on the same trace: its prompt is the text the gateway routes on (a chat request's message
  contents joined by single spaces, roles dropped: ``extract_text_for_routing`` in smg's
  ``crates/protocols/src/chat.rs``), cut into words by a toy tokenizer and hashed into 16-token vLLM blocks; its
  loads are the in-flight counts its own decisions produce. Decisions are compared up to a relabeling of the
  workers (the first time a worker is used fixes its label), so the expectations come from the model alone.
* **The traces.** ``multi_turn`` keeps to where the model's deliberate differences (characters vs blocks) cannot
  change the answer, and :func:`test_replay_trace_is_unambiguous` checks that it does: every shared prefix is far
  from the 0.3 threshold both in characters (what smg matches) and in blocks (what the model matches), a request
  that goes by load never ties between workers already used, and a cache hit always has one holder of its deepest
  match. The other traces each drive one rule of the gateway (smg 1.13.0 from PyPI; source: smg-project/smg,
  ``model_gateway/src/policies/``), which the model's first version got wrong, so they stay here:

  - ``hot_prefix_spill``: no fleet-wide count imbalance rule; the chosen holder is gated per request
    (``gate_selected_candidate``): it spills to the least-loaded worker when its load exceeds
    ``balance_rel_threshold`` x the mean AND the mean plus a margin capped at ``max(4, ceil(2 sqrt(mean)))``. At
    the shipped defaults the 8th concurrent request for one hot prefix spills (7 in flight against a mean of 2.3);
  - ``busier_recent_holder``: among the holders of the deepest match the least loaded wins
    (``select_matched_candidate``), not the most recently used;
  - ``tuned_balance``: at the benchmark's tuned point (``balance_abs_threshold=2``, ``balance_rel_threshold=1.1``)
    the gate keeps the holder with 3 in flight against a mean of 1 (not above 1 + 2);
  - ``stale_reports``: engines that report loads, scraped once before the replay: the gateway ranks by expected
    wait, in which a worker's requests are those reported plus those sent since the scrape (``least_load.rs``),
    so a worker that finished everything it was sent still looks busy until the next scrape, where ranking by
    live in-flight counts would pick it.

  Ties on load are broken at random on both sides (``least_load.rs``; the model's generator is seeded), so
  decisions are compared only where no tie between used workers arises, and
  :func:`test_an_idle_cluster_spreads_new_conversations` checks that both spread new conversations.

The gateway's flags beyond the benchmark's command line are pinned in ``PINNED_FLAGS``, each with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from bench.peer_routers import PeerArm
from contracts.engine_report import BlockGeometry
from routing.hashing import block_hashes
from routing.policy import ReplicaLoad, RouteRequest
from sim.routing.baselines import SglangCacheAwareConfig, SglangCacheAwarePolicy
from tools.ports import free_port

ENGINES = 3
MODEL = "fake-engine"
ENGINE_INDEX = web.AppKey("engine_index", int)
GEOMETRY = BlockGeometry.uniform(16)
THRESHOLD_MARGIN = 0.1  # every match rate stays this far from cache_threshold, in characters and in blocks
REPLAYS = 3  # attempts at a replay with no load scrape inside it
SETTLE_S = 10.0  # longest wait for the gateway to see a request arrive, finish or register (never a timing assert)

# The benchmark's command line (PeerArm.argv) plus what a deterministic replay needs. Nothing here changes how the
# cache_aware policy itself decides; each flag removes something around it that could act on its own (none did in
# these short replays: with only the benchmark's flags every case came out the same).
PINNED_FLAGS: tuple[str, ...] = (
    # Debug logs carry one "Cache-aware selection" line per decision: its branch and the characters matched out of
    # the routed text, which the test checks against the model's input and quotes on a mismatch.
    *("--log-level", "debug"),
    # Its default, 0.0.0.0:29000, would collide with any other gateway on the machine.
    *("--prometheus-host", "127.0.0.1"),
    # A retry would send one request to a second worker; a circuit breaker or a failed probe would take a worker
    # out of routing. The fakes never fail, but none of these may act during a replay.
    "--disable-retries",
    "--disable-circuit-breaker",
    "--disable-health-check",
    # Engines are polled for load reports only because the policy needs them (cache_aware ranks by expected wait):
    # a fake answers with none (404), or, in a case with reports, is scraped every 10 s (the default), the first
    # time only if it registered before the monitor's first tick: a replay starts right after a tick that scraped
    # every engine, and is run again if the next one falls inside it. No overload veto: the loads the test builds
    # are in flight, not waiting.
    "--disable-load-monitoring",
    "--disable-worker-overload-protection",
    # A held request is a worker with requests in flight and no progress: after 3 s (--worker-wedge-secs) the
    # gateway would stop routing to it, and --worker-stall-secs excludes a silent worker after a transport error.
    *("--worker-wedge-secs", "600"),
    *("--worker-stall-secs", "600"),
    # The warm-up slice sends a share of cache misses (and diverts a share of hits) to new or thin workers; the
    # gateway runs it only in the event-driven mode (gRPC with KV events), not on this path: off, to keep it so.
    *("--worker-warmup-secs", "0"),
    *("--worker-warmup-divert-every", "0"),
    *("--worker-warmup-thin-ratio", "0"),
    # No tree eviction during a replay (the model's clock never reaches its own interval either).
    *("--eviction-interval-secs", "3600"),
)


# ---------------------------------------------------------------------------------------------------------------
# Fake engines


class FakeEngines:
    """``count`` fake vLLM OpenAI servers on one event loop in a daemon thread.

    They record which of them each chat completion reached, by its ``x-request-id``, and keep a request open, once
    it has arrived, while the test holds it.
    """

    def __init__(self, count: int) -> None:
        self.ports = [free_port() for _ in range(count)]
        self.urls = [f"http://127.0.0.1:{port}" for port in self.ports]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-engines", daemon=True)
        self._runners: list[web.AppRunner] = []
        self._lock = threading.Lock()
        self._to_hold: set[str] = set()
        self._arrivals: dict[str, int] = {}  # request id -> engine index
        self._gates: dict[str, asyncio.Event] = {}  # held requests that arrived and are not released yet
        self._reports = False  # whether /metrics answers with vLLM's load gauges (else 404: a dark fleet)
        self._scrapes = [0] * count  # /metrics answered with gauges, per engine

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=SETTLE_S)

    def stop(self) -> None:
        self.release_all()
        asyncio.run_coroutine_threadsafe(self._cleanup(), self._loop).result(timeout=SETTLE_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=SETTLE_S)

    async def _serve(self) -> None:
        for index, port in enumerate(self.ports):
            app = web.Application()
            app[ENGINE_INDEX] = index
            app.router.add_get("/health", self._health)
            app.router.add_get("/v1/models", self._models)
            app.router.add_get("/metrics", self._metrics)
            app.router.add_post("/v1/chat/completions", self._chat)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            self._runners.append(runner)

    async def _cleanup(self) -> None:
        for runner in self._runners:
            await runner.cleanup()

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def _models(self, request: web.Request) -> web.Response:
        model = {"id": MODEL, "object": "model", "created": 0, "owned_by": "vllm", "max_model_len": 65536}
        return web.json_response({"object": "list", "data": [model]})

    async def _metrics(self, request: web.Request) -> web.Response:
        """vLLM's gauges as the gateway reads them: the requests this engine holds run, none wait, no KV in use."""
        index = request.app[ENGINE_INDEX]
        with self._lock:
            if not self._reports:
                raise web.HTTPNotFound()
            running = sum(1 for rid in self._gates if self._arrivals[rid] == index)
            self._scrapes[index] += 1
        labels = f'{{model_name="{MODEL}"}}'
        gauges = {"num_requests_running": running, "num_requests_waiting": 0, "kv_cache_usage_perc": 0.0}
        return web.Response(text="".join(f"vllm:{name}{labels} {value}\n" for name, value in gauges.items()))

    def report_loads(self, on: bool) -> None:
        """Answer ``/metrics`` with load gauges (or 404), counting scrapes afresh."""
        with self._lock:
            self._reports = on
            self._scrapes = [0] * len(self.urls)

    def scrapes(self) -> tuple[int, ...]:
        """Scrapes per engine since :meth:`report_loads`."""
        with self._lock:
            return tuple(self._scrapes)

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        rid = request.headers["x-request-id"]
        gate = asyncio.Event()
        with self._lock:
            self._arrivals[rid] = request.app[ENGINE_INDEX]
            if rid in self._to_hold:
                self._gates[rid] = gate
            else:
                gate.set()
        await gate.wait()
        prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])
        return web.json_response(
            {
                "id": f"chatcmpl-{rid}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": MODEL,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 1, "total_tokens": prompt_tokens + 1},
            }
        )

    def reset(self) -> None:
        """Forget earlier replays' requests (nothing may be held)."""
        with self._lock:
            assert not self._gates, "a request is still held"
            self._to_hold.clear()
            self._arrivals.clear()

    def hold(self, rid: str) -> None:
        """Keep request ``rid`` open once it arrives, until :meth:`release`."""
        with self._lock:
            self._to_hold.add(rid)

    def release(self, rid: str) -> None:
        with self._lock:
            self._to_hold.discard(rid)
            gate = self._gates.pop(rid)
        self._loop.call_soon_threadsafe(gate.set)

    def release_all(self) -> None:
        with self._lock:
            self._to_hold.clear()
            gates, self._gates = list(self._gates.values()), {}
        for gate in gates:
            self._loop.call_soon_threadsafe(gate.set)

    def arrival(self, rid: str) -> int | None:
        """The engine request ``rid`` reached, if it has."""
        with self._lock:
            return self._arrivals.get(rid)

    def in_flight(self) -> dict[str, int]:
        """Requests each engine holds now, by URL: the loads the test constructs."""
        with self._lock:
            held = list(self._gates)
            counts = dict.fromkeys(self.urls, 0)
            for rid in held:
                counts[self.urls[self._arrivals[rid]]] += 1
        return counts


@pytest.fixture(scope="module")
def engines() -> Iterator[FakeEngines]:
    fakes = FakeEngines(ENGINES)
    fakes.start()
    try:
        yield fakes
    finally:
        fakes.stop()


# ---------------------------------------------------------------------------------------------------------------
# The real gateway


@dataclass
class Gateway:
    url: str
    log: Path
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=SETTLE_S)

    def decisions(self) -> dict[str, dict[str, str]]:
        """Request id -> the gateway's own account of its decision, from its debug log: ``branch``,
        ``matched_units`` and ``input_units`` (characters of the routed text), ``matched_ratio``..."""
        decisions: dict[str, dict[str, str]] = {}
        for raw in self.log.read_text(errors="replace").splitlines():
            line = re.sub(r"\x1b\[[0-9;]*m", "", raw)
            found = re.search(r'request_id="([^"]+)".*Cache-aware selection (.*)', line)
            if found:
                decisions[found[1]] = {k: v.strip('"') for k, v in re.findall(r'(\w+)=("[^"]*"|\S+)', found[2])}
        return decisions


@pytest.fixture()
def start_gateway(engines: FakeEngines, tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """Starts ``smg`` for a PeerArm's knobs in front of the fake engines; every one is killed at teardown.

    With ``reports``, the engines answer load scrapes, and the gateway is ready once a tick has read every one's.
    """
    gateways: list[Gateway] = []

    def start(knobs: tuple[tuple[str, str], ...], reports: bool = False) -> Gateway:
        engines.report_loads(reports)
        port = free_port()
        argv = PeerArm("smg", "cache_aware", knobs).argv(port, engines.urls)
        argv += [*PINNED_FLAGS, "--prometheus-port", str(free_port())]
        log = tmp_path / f"smg-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        gateway = Gateway(f"http://127.0.0.1:{port}", log, proc)
        gateways.append(gateway)
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"smg exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
            with contextlib.suppress(httpx.HTTPError, ValueError):
                ready = httpx.get(f"{gateway.url}/readiness", timeout=1)
                if ready.status_code == 200 and ready.json().get("healthy_workers") == len(engines.urls):
                    if not reports or min(engines.scrapes()) > 0:
                        return gateway
            if time.monotonic() > deadline:
                raise RuntimeError(f"smg not ready in 30 s:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)

    try:
        yield start
    finally:
        for gateway in gateways:
            gateway.stop()


# ---------------------------------------------------------------------------------------------------------------
# Traces

Messages = tuple[tuple[str, str], ...]  # (role, content)


@dataclass(frozen=True)
class Send:
    """One chat completion; a held one stays in flight at its engine until a later ``Release``."""

    rid: str
    messages: Messages
    hold: bool = False


@dataclass(frozen=True)
class Release:
    rid: str


Step = Send | Release

_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "po", "di", "fu", "ga", "he", "ju", "by")


def words(seed: int, count: int, lead: str = "") -> str:
    """``count`` pseudo-words, the same for the same seed; ``lead`` first, if given, to fix how the text begins."""
    rng = random.Random(seed)
    drawn = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(count)]
    return " ".join([lead, *drawn[1:]] if lead else drawn)


@dataclass(frozen=True)
class Conversation:
    """A system prompt and user turns; turn k is sent with the history so far, the assistant's answers in it."""

    name: str
    system: str
    users: tuple[str, ...]
    answers: tuple[str, ...] = ()

    def turn(self, k: int, hold: bool = False) -> Send:
        messages: list[tuple[str, str]] = [("system", self.system)]
        for i in range(k):
            messages.append(("user", self.users[i]))
            if i < k - 1:
                messages.append(("assistant", self.answers[i]))
        return Send(f"{self.name}{k}", tuple(messages), hold)


def conversation(name: str, seed: int, system: str, turns: int, user_words: int, first: str = "") -> Conversation:
    users = tuple(words(seed * 100 + t, user_words, first if t == 0 else "") for t in range(turns))
    answers = tuple(words(seed * 100 + 50 + t, 12) for t in range(turns))
    return Conversation(name, system, users, answers)


LONG_SYSTEM = words(1, 150)  # ~1,000 characters, 9 blocks: whoever shares it is a cache hit
SHORT_SYSTEM = words(2, 4)  # a few characters, less than a block: sharing it is not


def _agreement() -> tuple[Step, ...]:
    """Multi-turn conversations behind a long shared system prompt or a short one, some held to build loads.

    Loads as (X, Y, Z), workers labelled by first use, after each step.
    """
    a, b, g = (conversation(n, s, LONG_SYSTEM, 3, 20) for n, s in (("a", 10), ("b", 11), ("g", 12)))
    c, d, e, f = (conversation(n, s, SHORT_SYSTEM, 3, 120) for n, s in (("c", 20), ("d", 21), ("e", 22), ("f", 23)))
    # Opens like LONG_SYSTEM (its first 24 words), then 200 words of its own: ~0.1 of it matches.
    p = Conversation("p", " ".join(LONG_SYSTEM.split()[:24]), (words(30, 200),))
    return (
        a.turn(1),  # cold on an idle cluster: X (0, 0, 0)
        a.turn(2, hold=True),  # hit: X (1, 0, 0)
        b.turn(1, hold=True),  # a new conversation on the long prompt hits X, the busiest: (2, 0, 0)
        c.turn(1, hold=True),  # short prompt, cold: a fresh worker Y (2, 1, 0)
        d.turn(1, hold=True),  # cold, least loaded: Z (2, 1, 1)
        c.turn(2, hold=True),  # hit Y over Z, as loaded: (2, 2, 1)
        p.turn(1),  # shares X's opening, below the threshold: cold, least loaded Z (2, 2, 1)
        e.turn(1, hold=True),  # cold: Z (2, 2, 2)
        Release("a2"),  # (1, 2, 2)
        f.turn(1),  # cold: X (1, 2, 2)
        Release("c1"),  # (1, 1, 2)
        d.turn(2),  # hit Z, the busiest (1, 1, 2)
        Release("b1"),  # (0, 1, 2)
        g.turn(1, hold=True),  # long prompt: X (1, 1, 2)
        a.turn(3, hold=True),  # hit X (2, 1, 2)
        b.turn(2, hold=True),  # hit X, now the busiest (3, 1, 2)
        f.turn(2),  # hit X, three in flight there (3, 1, 2)
        e.turn(2),  # hit Z (3, 1, 2)
        Release("c2"),  # (3, 0, 2)
        Release("d1"),  # (3, 0, 1)
        c.turn(3, hold=True),  # hit Y, the least loaded (3, 1, 1)
        d.turn(3, hold=True),  # hit Z over Y, as loaded (3, 1, 2)
        conversation("h", 40, SHORT_SYSTEM, 1, 120).turn(1),  # cold: Y (3, 1, 2)
        *(Release(rid) for rid in ("e1", "g1", "a3", "b2", "c3", "d3")),
    )


def _hot_prefix() -> tuple[Step, ...]:
    """One long system prompt, then eight new conversations on it at once."""
    sessions = [conversation(f"s{i}-", 50 + i, LONG_SYSTEM, 1, 20) for i in range(9)]
    return (
        sessions[0].turn(1),
        *(s.turn(1, hold=True) for s in sessions[1:]),  # the 8th arrives with 7 in flight at X, none elsewhere
        *(Release(f"s{i}-1") for i in range(1, 9)),
    )


def _busier_recent_holder() -> tuple[Step, ...]:
    """A 32-word opening sent cold to two workers; the later one is busier when a short request hits the opening."""
    opening = words(60, 32)
    first = Conversation("x", opening, (words(61, 200, lead="alpha"),))
    second = conversation("y", 62, opening, 2, 200, first="bravo")
    short = Conversation("z", opening, (words(63, 16, lead="charlie"),))  # 2 of its 3 blocks are the opening
    return (
        first.turn(1, hold=True),  # cold: X (1, 0, 0)
        second.turn(1, hold=True),  # cold: Y (1, 1, 0)
        second.turn(2, hold=True),  # hit: Y (1, 2, 0); Y is now the opening's most recent holder
        short.turn(1),  # holders of the opening: X (1 in flight) and Y (2)
        Release("x1"),
        Release("y1"),
        Release("y2"),
    )


def _cold_ties() -> tuple[Step, ...]:
    """Twelve unrelated one-turn conversations on an idle cluster, one at a time."""
    return tuple(conversation(f"t{i}-", 70 + i, words(90 + i, 8), 1, 60).turn(1) for i in range(12))


def _tuned_balance() -> tuple[Step, ...]:
    """Four new conversations on one long system prompt at once."""
    sessions = [conversation(f"u{i}-", 80 + i, LONG_SYSTEM, 1, 20) for i in range(4)]
    return (
        *(s.turn(1, hold=True) for s in sessions),  # the 4th arrives with (3, 0, 0) in flight
        *(Release(f"u{i}-1") for i in range(4)),
    )


def _stale_reports() -> tuple[Step, ...]:
    """Engines that report loads, scraped once, before the first request: a worker's expected wait is the requests
    sent to it since, floored at its live count, so its completions go unseen until the next scrape."""
    sessions = [conversation(f"w{i}-", 100 + i, LONG_SYSTEM, 1, 20) for i in range(3)]
    m = conversation("m", 110, SHORT_SYSTEM, 2, 120)
    n, o = (conversation(name, seed, SHORT_SYSTEM, 1, 120) for name, seed in (("n", 111), ("o", 112)))
    return (
        *(s.turn(1, hold=True) for s in sessions),  # cold, then two hits: X; in flight (3, 0, 0), sent (3, 0, 0)
        *(Release(f"w{i}-1") for i in range(3)),  # in flight (0, 0, 0): X's three still count in its wait
        m.turn(1, hold=True),  # cold: Y, not X (sent 3, 0, 0)
        m.turn(2, hold=True),  # hit: Y, in flight (0, 2, 0)
        n.turn(1, hold=True),  # cold: Z (sent 3, 2, 0); by live counts X and Z would tie
        o.turn(1, hold=True),  # cold: Z (sent 3, 2, 1); by live counts X (0, 2, 1)
        *(Release(rid) for rid in ("m1", "m2", "n1", "o1")),
    )


@dataclass(frozen=True)
class Case:
    trace: tuple[Step, ...]
    knobs: tuple[tuple[str, str], ...] = ()  # the PeerArm's flags that differ from smg's defaults
    reports: bool = False  # whether the engines report loads (one scrape before the replay, none during it)

    def model_config(self) -> SglangCacheAwareConfig:
        """The model at the same point: smg's CLI defaults are SglangCacheAwareConfig's."""
        knobs = {flag.replace("-", "_"): value for flag, value in self.knobs}
        return SglangCacheAwareConfig(
            **{name: int(v) if name == "balance_abs_threshold" else float(v) for name, v in knobs.items()},
            # The replay's one scrape comes before its first decision; the model's clock (a step a second) never
            # reaches its next one.
            load_monitor_interval_s=3600.0 if self.reports else None,
        )


AGREEMENT = Case(_agreement())


# ---------------------------------------------------------------------------------------------------------------
# The model's replay


def routed_text(messages: Messages) -> str:
    """What the gateway matches a chat request on: the message contents joined by single spaces."""
    return " ".join(content for _, content in messages)


def tokens(text: str) -> list[int]:
    """A toy tokenizer, one token per word: prefixes of the text are prefixes of its tokens, as a real one's are."""
    return [zlib.crc32(word.encode()) for word in text.split(" ")]


@dataclass
class ModelReplay:
    routed: list[str] = field(default_factory=list)  # replica per Send
    reasons: list[str] = field(default_factory=list)
    loads: list[dict[str, int]] = field(default_factory=list)  # in flight per replica when it decided
    characters: list[tuple[int, int]] = field(default_factory=list)  # (matched, total): what the gateway matches
    ambiguities: list[str] = field(default_factory=list)  # where the model's deliberate differences could matter


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def model_replay(case: Case) -> ModelReplay:
    """The model's decisions for ``case``, its loads being the in-flight counts its own decisions produce."""
    config = case.model_config()
    clock = [0.0]
    policy = SglangCacheAwarePolicy(lambda: clock[0], config)
    replicas = [f"r{i}" for i in range(ENGINES)]
    in_flight = dict.fromkeys(replicas, 0)
    held: dict[str, str] = {}
    seen_texts: list[str] = []
    replay = ModelReplay()
    for i, step in enumerate(case.trace):
        clock[0] = float(i)  # every decision is newer than the last: "most recently used" is well defined
        if isinstance(step, Release):
            in_flight[held.pop(step.rid)] -= 1
            continue
        text = routed_text(step.messages)
        request = RouteRequest(step.rid, tuple(block_hashes(tokens(text), GEOMETRY)))
        decision = policy.choose(request, [ReplicaLoad(r, in_flight[r], capacity=1024) for r in replicas])
        # The gateway's character tree matches the longest common prefix with any prompt routed before.
        char_matched = max((_common_prefix(text, seen) for seen in seen_texts), default=0)
        char_rate = char_matched / len(text)
        depth, holders = policy.tree.match(request.block_hashes, set(replicas))
        block_rate = depth / max(1, len(request.block_hashes))
        for unit, rate in (("characters", char_rate), ("blocks", block_rate)):
            if abs(rate - config.cache_threshold) < THRESHOLD_MARGIN:
                replay.ambiguities.append(f"{step.rid}: match rate {rate:.2f} in {unit} is near the threshold")
        if (char_rate > config.cache_threshold) != (block_rate > config.cache_threshold):
            replay.ambiguities.append(f"{step.rid}: characters and blocks fall on different sides of the threshold")
        if decision.reason == "prefix" and len(holders) > 1:
            replay.ambiguities.append(f"{step.rid}: {sorted(holders)} all hold the deepest match")
        if decision.reason != "prefix":
            least = min(in_flight.values())
            tied = {r for r in replicas if in_flight[r] == least}
            if len(tied) > 1 and tied & set(replay.routed):
                replay.ambiguities.append(f"{step.rid}: {sorted(tied)} tie at {least} in flight")
        policy.on_routed(request, decision.first)
        seen_texts.append(text)
        replay.routed.append(decision.first)
        replay.characters.append((char_matched, len(text)))
        replay.reasons.append(f"{decision.reason} (loads {[in_flight[r] for r in replicas]})")
        replay.loads.append(dict(in_flight))
        if step.hold:
            in_flight[decision.first] += 1
            held[step.rid] = decision.first
    return replay


def labels(routed: Sequence[object]) -> list[str]:
    """Workers renamed A, B, C... in order of first use: decisions compared up to a relabeling."""
    names: dict[object, str] = {}
    return [names.setdefault(worker, "ABCDEFGH"[len(names)]) for worker in routed]


# ---------------------------------------------------------------------------------------------------------------
# The gateway's replay


class RouteMismatch(AssertionError):
    """The gateway routed a request elsewhere than the model."""


async def _until(check: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + SETTLE_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {SETTLE_S} s")
        await asyncio.sleep(0.005)


async def _settle(client: httpx.AsyncClient, engines: FakeEngines) -> None:
    """Wait until the gateway's in-flight counts (it decrements one as it finishes a response) are the requests the
    engines hold: the next decision then sees exactly the loads the test built."""
    expected = engines.in_flight()
    deadline = time.monotonic() + SETTLE_S
    while True:
        workers = (await client.get("/workers")).raise_for_status().json()["workers"]
        loads = {w["url"]: w["load"] for w in workers}
        if loads == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the gateway's loads {loads} never matched the engines' {expected}")
        await asyncio.sleep(0.005)


async def gateway_replay(gateway: Gateway, engines: FakeEngines, trace: Sequence[Step]) -> list[int]:
    """The engine each ``Send`` of ``trace`` reached through the gateway."""
    engines.reset()
    routed: list[int] = []
    pending: dict[str, asyncio.Task[httpx.Response]] = {}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=httpx.Timeout(60.0)) as client:
        try:
            for step in trace:
                if isinstance(step, Release):
                    engines.release(step.rid)
                    (await pending.pop(step.rid)).raise_for_status()
                else:
                    if step.hold:
                        engines.hold(step.rid)
                    body = {"model": MODEL, "messages": [{"role": r, "content": c} for r, c in step.messages]}
                    task = asyncio.create_task(
                        client.post("/v1/chat/completions", json=body, headers={"x-request-id": step.rid})
                    )
                    if step.hold:
                        pending[step.rid] = task
                        await _until(
                            lambda rid=step.rid, t=task: engines.arrival(rid) is not None or t.done(),
                            f"{step.rid} did not reach an engine",
                        )
                        if task.done():
                            (await task).raise_for_status()
                    else:
                        (await task).raise_for_status()
                    arrived = engines.arrival(step.rid)
                    assert arrived is not None, f"{step.rid} answered without reaching an engine"
                    routed.append(arrived)
                # The next decision must see exactly the loads the test built.
                await _settle(client, engines)
        finally:
            engines.release_all()
            await asyncio.gather(*pending.values(), return_exceptions=True)
    return routed


# ---------------------------------------------------------------------------------------------------------------
# Tests


def test_replay_trace_is_unambiguous():
    """The agreement trace stays where the model's deliberate differences cannot change a decision."""
    replay = model_replay(AGREEMENT)
    assert replay.ambiguities == []
    # It exercises both branches, and loads decide both: hits that stay on a busier worker than the least loaded,
    # misses spread over every worker by load.
    decisions = list(zip(replay.reasons, replay.routed, replay.loads, strict=True))
    assert any(r.startswith("prefix") and loads[to] > min(loads.values()) for r, to, loads in decisions)
    assert len({to for r, to, _ in decisions if r.startswith("cold")}) == ENGINES


CASES = [
    pytest.param(AGREEMENT, id="multi_turn"),
    pytest.param(Case(_hot_prefix()), id="hot_prefix_spill"),
    pytest.param(Case(_busier_recent_holder()), id="busier_recent_holder"),
    pytest.param(
        Case(_tuned_balance(), (("balance-abs-threshold", "2"), ("balance-rel-threshold", "1.1"))), id="tuned_balance"
    ),
    pytest.param(Case(_stale_reports(), reports=True), id="stale_reports"),
]


def test_an_idle_cluster_spreads_new_conversations(engines: FakeEngines, start_gateway: Callable[..., Gateway]):
    """Twelve unrelated conversations, one at a time: both break the load ties at random, neither piles them onto
    one worker (an older model sent every tie to the first). All on one worker by chance: 3 in 3^12."""
    case = Case(_cold_ties())
    assert len(set(model_replay(case).routed)) > 1
    assert len(set(asyncio.run(gateway_replay(start_gateway(()), engines, case.trace)))) > 1


@pytest.mark.parametrize("case", CASES)
def test_gateway_routes_as_the_model_says(case: Case, engines: FakeEngines, start_gateway: Callable[..., Gateway]):
    expected = model_replay(case)
    for _ in range(REPLAYS):
        gateway = start_gateway(case.knobs, reports=case.reports)
        scrapes = engines.scrapes()
        routed = asyncio.run(gateway_replay(gateway, engines, case.trace))
        if engines.scrapes() == scrapes:
            break
        gateway.stop()  # a tick fell inside the replay: the decisions after it saw other reports than the model's
    else:
        raise AssertionError(f"a load scrape fell inside each of {REPLAYS} replays")

    sends = [step for step in case.trace if isinstance(step, Send)]
    deadline = time.monotonic() + SETTLE_S  # the gateway's log writer may lag a little behind its decisions
    while len(decisions := gateway.decisions()) < len(sends) and time.monotonic() < deadline:
        time.sleep(0.02)
    # The gateway matched the text the model was given: message contents joined by spaces, the prompts before it.
    assert {rid: (int(d["matched_units"]), int(d["input_units"])) for rid, d in decisions.items()} == {
        s.rid: chars for s, chars in zip(sends, expected.characters, strict=True)
    }
    want, got = labels(expected.routed), labels(routed)
    if want != got:
        i = next(i for i, (w, g) in enumerate(zip(want, got, strict=True)) if w != g)
        raise RouteMismatch(
            f"{sends[i].rid} (send {i + 1} of {len(sends)}): the model routes it to {want[i]} "
            f"[{expected.reasons[i]}], the gateway to {got[i]} [{decisions.get(sends[i].rid)}]\n"
            f"model:   {''.join(want)}\ngateway: {''.join(got)}"
        )

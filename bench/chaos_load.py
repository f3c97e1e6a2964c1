"""A closed-loop load generator that accounts for every request, for fault tests and ``make chaos``.

Each worker sends one request after another (streaming and non-streaming in turn) until told to stop,
and files each under exactly one outcome:

* ``ok`` — a complete answer (a 200 JSON body, or a stream that ends with ``data: [DONE]``);
* ``stream_error`` — a stream that ended cleanly with an OpenAI error event and ``[DONE]`` (its replica
  died under it: the only honest answer once bytes have reached the client);
* ``http_<status>`` — an error answer (an OpenAI error body);
* ``truncated`` — a stream that stopped without ``[DONE]``; ``hung`` — no answer within the client
  timeout; ``exception`` — a broken connection. These three count as lost.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

LOST = ("truncated", "hung", "exception")


@dataclass(frozen=True)
class Outcome:
    kind: str
    stream: bool
    started: float  # monotonic
    seconds: float
    retry_after: str | None = None


@dataclass
class LoadReport:
    outcomes: list[Outcome] = field(default_factory=list)

    def counts(self) -> Counter[str]:
        return Counter(o.kind for o in self.outcomes)

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    @property
    def lost(self) -> int:
        return sum(self.counts()[k] for k in LOST)


def _classify_stream(lines: list[str]) -> str:
    events = [line[6:] for line in lines if line.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        return "truncated"
    for event in events[:-1]:
        if event.startswith('{"error"') and "error" in json.loads(event):
            return "stream_error"
    return "ok"


class LoadGenerator:
    """``workers`` concurrent clients of one model through the OpenAI completions/chat routes."""

    def __init__(
        self,
        v1_url: str,
        model: str,
        *,
        workers: int = 4,
        max_tokens: int = 32,
        timeout_s: float = 120,
        api_key: str | None = None,
        chat: bool = True,
    ) -> None:
        self._v1 = v1_url
        self._model = model
        self._workers = workers
        self._max_tokens = max_tokens
        self._timeout_s = timeout_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._chat = chat
        self.report = LoadReport()

    def _request(self, n: int, stream: bool) -> tuple[str, dict]:
        body: dict = {"model": self._model, "max_tokens": self._max_tokens, "temperature": 0, "stream": stream}
        if self._chat:
            body["messages"] = [{"role": "user", "content": f"Request {n}: tell me something new."}]
            return "/chat/completions", body
        body["prompt"] = f"Request {n}: once upon a time"
        return "/completions", body

    async def one(self, client: httpx.AsyncClient, n: int, stream: bool) -> Outcome:
        path, body = self._request(n, stream)
        start = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout_s):
                if stream:
                    async with client.stream("POST", self._v1 + path, json=body, headers=self._headers) as resp:
                        if resp.status_code != 200:
                            await resp.aread()
                            kind = f"http_{resp.status_code}"
                        else:
                            kind = _classify_stream([line async for line in resp.aiter_lines()])
                else:
                    resp = await client.post(self._v1 + path, json=body, headers=self._headers)
                    kind = (
                        "ok" if resp.status_code == 200 and resp.json().get("choices") else f"http_{resp.status_code}"
                    )
        except TimeoutError:
            kind, resp = "hung", None
        except httpx.HTTPError:
            kind, resp = "exception", None
        retry_after = resp.headers.get("retry-after") if resp is not None else None
        return Outcome(kind, stream, start, time.monotonic() - start, retry_after)

    async def run(self, stop: asyncio.Event) -> LoadReport:
        """Send until ``stop`` is set; every request started is waited for and counted."""
        counter = iter(range(1 << 30))
        limits = httpx.Limits(max_connections=self._workers, max_keepalive_connections=self._workers)
        async with httpx.AsyncClient(timeout=self._timeout_s, limits=limits) as client:

            async def worker(w: int) -> None:
                stream = w % 2 == 0  # half the workers start streaming, and each alternates
                while not stop.is_set():
                    self.report.outcomes.append(await self.one(client, next(counter), stream=stream))
                    stream = not stream

            await asyncio.gather(*(worker(w) for w in range(self._workers)))
        return self.report

    async def burst(self, requests: int) -> LoadReport:
        """``requests`` streaming requests at once (an overload spike), each counted."""
        async with httpx.AsyncClient(timeout=self._timeout_s, limits=httpx.Limits(max_connections=requests)) as client:
            outcomes = await asyncio.gather(*(self.one(client, n, stream=True) for n in range(requests)))
        self.report.outcomes.extend(outcomes)
        return self.report

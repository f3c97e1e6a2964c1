"""``make chaos``: inject each fault into the real app under load and count what happens to every request.

Brings up the test app's two-replica AR model on the tiny target (tests.conftest.e2e_config: the prefix
router in precise mode, a real redis-server) with an API key, a Redis rate limit that fails open, and a
small admission limit; then, one after another, under closed-loop load (bench.chaos_load):

* ``baseline`` — no fault;
* ``engine replica SIGKILL`` — one AR replica's process killed mid-load, as a crash ends it (then
  the script waits for Serve's replacement before the next fault);
* ``redis stop + restart`` — redis-server killed mid-load and restarted empty;
* ``client disconnects`` — streams dropped after their first chunk; succeeded = the engines' running
  count back to 0 within 1 s;
* ``overload burst`` — three times what admission takes, at once.

Writes docs/results/chaos.json, docs/results/chaos.png and the table between the chaos markers of
docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from bench.chaos_load import LoadGenerator, LoadReport
from bench.machine import describe_machine
from bench.prom import sample_total
from config import AdmissionConfig, AppConfig, AuthConfig
from deployments.ingress import api_keys
from tools.doc_markers import replace_between
from tools.ports import free_port
from tools.redis_server import RedisServer

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results"
DOC = REPO / "docs" / "reliability.md"
BEGIN, END = "<!-- chaos:begin -->", "<!-- chaos:end -->"
IN_FLIGHT, QUEUED = 6, 6


@dataclass
class FaultResult:
    fault: str
    sent: int
    succeeded: int
    retried: int
    failed: int
    lost: int
    outcomes: dict[str, int] = field(default_factory=dict)
    note: str = ""


def chaos_config(redis_url: str, key: str) -> AppConfig:
    from tools.e2e_app import AR_MODEL, e2e_config

    base = e2e_config(redis_url)
    ar = next(m for m in base.models if m.id == AR_MODEL)  # two replicas: a retry has somewhere to go
    auth = AuthConfig(
        api_key_sha256=[api_keys.digest(key)], rate_limit_per_s=1000, rate_limit_burst=1000, on_redis_error="open"
    )
    admission = AdmissionConfig(max_in_flight=IN_FLIGHT, max_queued=QUEUED, queue_timeout_s=120)
    ingress = base.ingress.model_copy(update={"admission": admission})
    return base.model_copy(update={"name": "dflash-chaos", "models": [ar], "auth": auth, "ingress": ingress})


class Chaos:
    def __init__(self, base_url: str, config: AppConfig, redis_server: RedisServer, key: str, seconds: float) -> None:
        from tools.e2e_app import AR_MODEL

        self.base_url = base_url
        self.config = config
        self.redis = redis_server
        self.key = key
        self.seconds = seconds
        self.model = AR_MODEL
        self.engine = next(m for m in config.models if m.id == AR_MODEL)

    def _handle(self) -> Any:
        from ray import serve

        return serve.get_deployment_handle(self.engine.deployment_name(), app_name=self.config.name)

    def _replicas(self) -> list[dict[str, Any]]:
        return self._handle().broadcast("describe").results(timeout_s=60)

    def _retries(self) -> int:
        text = httpx.get(self.base_url + "/metrics", timeout=60, headers=self._auth()).text
        return round(sample_total(text, "dflash_serve_dispatch_retries_total", model=self.model) or 0)

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def _load(self, workers: int = 6) -> LoadGenerator:
        return LoadGenerator(self.base_url + "/v1", self.model, workers=workers, max_tokens=32, api_key=self.key)

    async def _under_load(self, fault: Callable[[], Awaitable[str]] | None) -> tuple[LoadReport, str]:
        load, stop = self._load(), asyncio.Event()
        task = asyncio.create_task(load.run(stop))
        note = ""
        await asyncio.sleep(self.seconds / 3)
        if fault is not None:
            note = await fault()
        await asyncio.sleep(2 * self.seconds / 3)
        stop.set()
        return await task, note

    def _result(self, fault: str, report: LoadReport, retried: int, note: str = "") -> FaultResult:
        counts = report.counts()
        return FaultResult(
            fault=fault,
            sent=report.sent,
            succeeded=counts["ok"],
            retried=retried,
            failed=report.sent - counts["ok"] - report.lost,
            lost=report.lost,
            outcomes=dict(counts),
            note=note,
        )

    async def _measured(self, name: str, fault: Callable[[], Awaitable[str]] | None) -> FaultResult:
        before = self._retries()
        report, note = await self._under_load(fault)
        return self._result(name, report, self._retries() - before, note)

    async def baseline(self) -> FaultResult:
        return await self._measured("baseline (no fault)", None)

    async def replica_kill(self) -> FaultResult:
        victim: dict[str, Any] = {}

        async def kill() -> str:
            replicas = await asyncio.to_thread(self._replicas)
            target = max(replicas, key=lambda r: r["report"].ongoing_requests)
            victim.update(target)
            os.kill(target["pid"], signal.SIGKILL)  # its engine processes die with it (Ray kills the group)
            return f"killed replica pid {target['pid']} with {target['report'].ongoing_requests} in flight"

        result = await self._measured("engine replica SIGKILL", kill)
        t0 = time.monotonic()
        while True:  # Serve replaces the replica; the next fault starts from a whole app
            try:
                ids = {r["replica_id"] for r in await asyncio.to_thread(self._replicas)}
            except Exception:  # noqa: BLE001 - the broadcast may still reach the dead replica for a moment
                ids = set()
            if len(ids) == 2 and victim["replica_id"] not in ids:
                break
            if time.monotonic() - t0 > 600:
                raise RuntimeError("Serve did not replace the killed replica within 10 minutes")
            await asyncio.sleep(3)
        result.note += f"; replacement serving after {time.monotonic() - t0:.0f} s"
        return result

    async def redis_outage(self) -> FaultResult:
        async def outage() -> str:
            self.redis.stop()
            await asyncio.sleep(self.seconds / 3)
            self.redis.start()
            return f"redis down {self.seconds / 3:.0f} s, restarted empty (auth fail-open)"

        return await self._measured("redis stop + restart", outage)

    async def disconnects(self, n: int = 8) -> FaultResult:
        body = {"model": self.model, "prompt": "A very long story:", "max_tokens": 1000, "stream": True}
        aborted_in_time = 0
        async with httpx.AsyncClient(timeout=120) as client:
            for _ in range(n):
                async with client.stream(
                    "POST", self.base_url + "/v1/completions", json=body, headers=self._auth()
                ) as resp:
                    async for _line in resp.aiter_lines():
                        break  # the client leaves after its first chunk
                deadline = time.monotonic() + 1
                while time.monotonic() < deadline:
                    stats = await asyncio.to_thread(self._replicas)
                    if all(r["report"].engine_unfinished_requests == 0 for r in stats):
                        aborted_in_time += 1
                        break
                    await asyncio.sleep(0.1)
        return FaultResult(
            fault="client disconnects",
            sent=n,
            succeeded=aborted_in_time,
            retried=0,
            failed=n - aborted_in_time,
            lost=0,
            note="succeeded = engine request aborted within 1 s of the client leaving",
        )

    async def overload(self) -> FaultResult:
        burst = 3 * (IN_FLIGHT + QUEUED)
        report = await LoadGenerator(
            self.base_url + "/v1", self.model, max_tokens=64, api_key=self.key, timeout_s=300
        ).burst(burst)
        counts = report.counts()
        note = f"{counts['http_429']} answered 429 + Retry-After at once (admission {IN_FLIGHT} + queue {QUEUED})"
        return self._result("overload burst", report, 0, note)


def markdown(results: list[FaultResult]) -> str:
    rows = [
        "| fault injected | sent | succeeded | retried | failed | lost | notes |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        rows.append(f"| {r.fault} | {r.sent} | {r.succeeded} | {r.retried} | {r.failed} | {r.lost} | {r.note} |")
    return "\n".join(rows)


def plot(results: list[FaultResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    names = [r.fault for r in results]
    bottom = [0] * len(results)
    for label, values in (
        ("succeeded", [r.succeeded for r in results]),
        ("failed (clean error)", [r.failed for r in results]),
        ("lost", [r.lost for r in results]),
    ):
        ax.barh(names, values, left=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xlabel("requests")
    ax.set_title("Requests under injected faults (make chaos)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write(results: list[FaultResult]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    run = {"date": time.strftime("%Y-%m-%d"), "machine": describe_machine(), "faults": [asdict(r) for r in results]}
    (RESULTS / "chaos.json").write_text(json.dumps(run, indent=2) + "\n")
    plot(results, RESULTS / "chaos.png")
    report()


def report() -> None:
    """The docs table from the committed result file (``make chaos`` rewrites both)."""
    run = json.loads((RESULTS / "chaos.json").read_text())
    results = [FaultResult(**r) for r in run["faults"]]
    table = f"Run {run['date']} on {run['machine']} (`docs/results/chaos.json`):\n\n{markdown(results)}"
    replace_between(DOC, BEGIN, END, table)
    print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15, help="load time around each fault")
    parser.add_argument("--report-only", action="store_true", help="rewrite the docs table from the result file")
    opts = parser.parse_args()
    if opts.report_only:
        report()
        return
    from tools.serve import serving

    os.chdir(REPO)
    redis_server = RedisServer()
    redis_server.start()
    key = api_keys.generate()
    config = chaos_config(redis_server.url, key)
    try:
        print("starting the app (engines take minutes on CPU)...", flush=True)
        with serving(config, free_port(), num_cpus=4) as base_url:
            chaos = Chaos(base_url, config, redis_server, key, opts.seconds)
            phases = [chaos.baseline, chaos.replica_kill, chaos.redis_outage, chaos.disconnects, chaos.overload]
            results = []
            for phase in tqdm(phases, desc="faults"):
                results.append(asyncio.run(phase()))
                tqdm.write(f"{results[-1].fault}: {results[-1].outcomes or ''} {results[-1].note}")
        write(results)
    finally:
        redis_server.stop()


if __name__ == "__main__":
    main()

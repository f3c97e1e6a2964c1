"""The peer routers a user would run instead of ours, as their users run them: upstream binaries from PyPI.

* ``smg`` (SGLang's model gateway, ``smg launch``): ``cache_aware`` (approximate radix tree over request
  text), ``prefix_hash`` (consistent hash of the first tokens), ``power_of_two``, ``round_robin``;
* ``vllm-router`` (vLLM's fork of the same gateway): ``cache_aware``, ``consistent_hash`` and ``kv_aware``
  (fed by the engines' KV events over ZMQ).

A ``PeerArm`` is one policy at its shipped defaults plus, for a tuned point, the flags that differ from
them: nothing else is passed, so "defaults" means the CLI's own defaults (smg 1.13.0 / vllm-router
0.1.17: ``cache_threshold`` 0.3, ``balance_abs_threshold`` 64, ``balance_rel_threshold`` 1.5).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROUTERS = ("smg", "vllm-router")


@dataclass(frozen=True)
class PeerArm:
    """One peer router configuration: which binary, which policy, which knobs differ from its defaults."""

    router: str
    policy: str
    knobs: tuple[tuple[str, str], ...] = ()  # (CLI flag without dashes, value)
    kv_events: bool = False  # the engines must publish KV events and the router subscribe to them

    @property
    def family(self) -> str:
        """Router and policy: the arms a grid over knobs picks the best of."""
        return f"{self.router}/{self.policy}"

    @property
    def name(self) -> str:
        tuned = ",".join(f"{k}={v}" for k, v in self.knobs)
        return self.family + (f"[{tuned}]" if tuned else "")

    def argv(
        self,
        port: int,
        workers: list[str],
        kv_event_sources: tuple[str, ...] = (),
        block_size: int | None = None,
        model: str | None = None,
    ) -> list[str]:
        """The launcher's command line: the router on ``port`` in front of ``workers``.

        A KV-event arm subscribes to ``kv_event_sources`` (``WORKER_URL=tcp://…``, one per worker) and is told
        the engines' block size, which its hashes must use (its default, 16, is not ours), and the served
        model's name, which it requires with static sources.
        """
        if self.router not in ROUTERS:
            raise ValueError(f"unknown router {self.router!r}")
        # Each launcher is the package's own console script, run from this interpreter's environment.
        head = (
            [str(Path(sys.executable).parent / "smg"), "launch"]
            if self.router == "smg"
            else [str(Path(sys.executable).parent / "vllm-router")]
        )
        argv = [*head, "--host", "127.0.0.1", "--port", str(port), "--worker-urls", *workers, "--policy", self.policy]
        if self.kv_events:
            for source in kv_event_sources:
                argv += ["--kv-event-source", source]
            argv += ["--kv-event-block-size", str(block_size)] if block_size else []
            argv += ["--kv-event-model", model] if model else []
        for flag, value in self.knobs:
            argv += [f"--{flag}", value]
        return argv


def _grid(router: str, policy: str, *points: dict[str, str], kv_events: bool = False) -> list[PeerArm]:
    """The shipped default first, then one arm per point of the family's grid."""
    return [PeerArm(router, policy, kv_events=kv_events)] + [
        PeerArm(router, policy, tuple(p.items()), kv_events) for p in points
    ]


# A small grid per family over its own knobs, one knob moved at a time from the shipped default: the cache
# threshold (how much of a request must match for affinity to win), the spill threshold (how many in-flight
# requests of imbalance break affinity; 64 never trips with two replicas at concurrency 4), and prefix_hash's
# hashed length (256 tokens covers less than a shared system prompt here).
PEER_ARMS: list[PeerArm] = [
    *_grid(
        "smg",
        "cache_aware",
        {"cache-threshold": "0.5"},
        {"cache-threshold": "0.8"},
        {"balance-abs-threshold": "2", "balance-rel-threshold": "1.1"},
    ),
    *_grid("smg", "prefix_hash", {"prefix-token-count": "1024"}),
    *_grid("smg", "power_of_two"),
    *_grid("smg", "round_robin"),
    *_grid("vllm-router", "cache_aware", {"cache-threshold": "0.5"}, {"balance-abs-threshold": "2"}),
    *_grid("vllm-router", "consistent_hash"),
    *_grid("vllm-router", "kv_aware", kv_events=True),
]


def start_peer(
    arm: PeerArm,
    port: int,
    workers: list[str],
    log_path: Path,
    kv_event_sources: tuple[str, ...] = (),
    block_size: int | None = None,
    model: str | None = None,
) -> subprocess.Popen[bytes]:
    """The router for ``arm``, in its own process group (stop it with ``bench.vllm_server.stop``)."""
    log = log_path.open("wb")
    argv = arm.argv(port, workers, kv_event_sources, block_size, model)
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

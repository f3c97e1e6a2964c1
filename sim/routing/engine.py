"""The cost of one engine step on one replica, calibrated to the seed table (one B300, gemma-4-26B-A4B).

A replica runs vLLM's continuous batching: every step carries each running sequence's decode tokens
plus chunks of pending prefills, up to ``max_batched_tokens``. A step costs

    t_step = t_decode(b) + prefill_tokens / prefill_tps        (t_decode(0) = t_ar(1): one weight pass)

**Autoregressive decode.** The seed table measured 259, 1296 and 3233 output tok/s at concurrency 1, 8
and 32, so one decode step takes b / throughput: 3.86, 6.17 and 9.90 ms. Between those points
``t_ar(b)`` interpolates linearly; past 32 it keeps the last slope (0.155 ms per sequence), the slow
growth of a memory-bound step as its KV reads grow.

**DFlash.** A step drafts ``spec_tokens`` (15) tokens with the drafter and verifies them with the target;
a sequence gains its acceptance length τ (drawn per request from the seed's 4.3–8.6) per step:

    t_spec(b) = κ · t_ar(b) + (spec_tokens + 1) · b / prefill_tps

The second term charges the verified tokens at the prefill rate (verification is compute, like a
prefill chunk); κ covers the drafter and the wider expert reads of a 16-token verify. κ is solved so
that at b = 1 and the median τ the speedup is the seed's median 3.45× (3.2–3.7×). The model then gives
2.9× at b = 8 and 2.0× at b = 64: speculation pays less as the batch fills, as measured elsewhere.

**Prefill** runs at ``prefill_tps`` = 50k tokens/s: an assumption, not a measurement. 2·4B FLOPs per
token is 8 GFLOP; a B300 (≈2.25 PFLOP/s dense BF16) at the ~20% MFU vLLM's fused-MoE prefill reaches
gives ≈56k tokens/s, and an H100 measures roughly 20–25k tokens/s on a 3B-active MoE. The cached part
of a prompt costs nothing; attention over cached context is not charged.

``kv_blocks`` is scaled down from a B300's pool (order 10^6 tokens for the full-attention group) so that a
run can fill the cluster's cache with a few ten thousand requests; the workloads scale with it (see
docs/routing-simulator.md).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from sim.production import production_model

# The seed table: (concurrency, output tokens/s) of plain autoregressive decoding on one B300.
SEED_AR_THROUGHPUT: tuple[tuple[int, float], ...] = ((1, 259.0), (8, 1296.0), (32, 3233.0))
SEED_TAU_RANGE: tuple[float, float] = (4.3, 8.6)
SEED_SPEEDUP_AT_1 = 3.45  # the middle of the seed's 3.2–3.7x


def _production_k() -> int:
    speculative = production_model().speculative
    if speculative is None:
        raise ValueError("the production config serves no drafter; the simulator models DFlash")
    return speculative.num_speculative_tokens


@dataclass(frozen=True, slots=True)
class EngineModel:
    """One replica's engine: batching limits, KV pool and step costs. Immutable and shared by replicas."""

    kv_blocks: int = 4096  # per replica, 16-token blocks (65,536 tokens): scaled down, see the module doc
    block_size: int = 16
    max_num_seqs: int = field(default_factory=lambda: production_model().engine.max_num_seqs)
    max_batched_tokens: int = field(default_factory=lambda: production_model().engine.max_num_batched_tokens)
    prefill_tps: float = 50_000.0  # assumption, see the module doc
    speculative: bool = True
    spec_tokens: int = field(default_factory=_production_k)
    tau_range: tuple[float, float] = SEED_TAU_RANGE
    speedup_at_1: float = SEED_SPEEDUP_AT_1

    def ar_step_s(self, batch: int) -> float:
        """Step time of plain decoding at ``batch`` sequences (piecewise linear through the seed points)."""
        points = [(c, c / tps) for c, tps in SEED_AR_THROUGHPUT]
        b = max(1, batch)
        for (c0, t0), (c1, t1) in itertools.pairwise(points):
            if b <= c1:
                return t0 + (t1 - t0) * (b - c0) / (c1 - c0)
        (c0, t0), (c1, t1) = points[-2], points[-1]
        return t1 + (t1 - t0) / (c1 - c0) * (b - c1)

    @property
    def verify_tokens(self) -> int:
        """Tokens of budget one decoding sequence uses per step (1 without speculation)."""
        return self.spec_tokens + 1 if self.speculative else 1

    @property
    def kappa(self) -> float:
        """DFlash's step overhead factor, solved from the seed's speedup at concurrency 1 and median τ."""
        tau = sum(self.tau_range) / 2
        spec_step_1 = tau / self.speedup_at_1 * self.ar_step_s(1)
        return (spec_step_1 - (self.spec_tokens + 1) / self.prefill_tps) / self.ar_step_s(1)

    def decode_step_s(self, batch: int) -> float:
        """One step with ``batch`` decoding sequences (and no prefill)."""
        if batch <= 0:
            return self.ar_step_s(1)
        if not self.speculative:
            return self.ar_step_s(batch)
        return self.kappa * self.ar_step_s(batch) + self.verify_tokens * batch / self.prefill_tps

    def step_s(self, decoding: int, prefill_tokens: int) -> float:
        return self.decode_step_s(decoding) + prefill_tokens / self.prefill_tps

    def decode_tps(self, batch: int, tau: float | None = None) -> float:
        """Output tokens/s at a steady ``batch`` (τ defaults to the middle of the range)."""
        gain = 1.0 if not self.speculative else (tau if tau is not None else sum(self.tau_range) / 2)
        return batch * gain / self.decode_step_s(batch)

    def cold_capacity_rps(self, prompt_tokens: float, output_tokens: float) -> float:
        """Requests/s one replica sustains with no cache hit at a full batch: the unit of the load axis.

        Each request costs its prefill plus its share of the full batch's decode steps.
        """
        tau = sum(self.tau_range) / 2 if self.speculative else 1.0
        steps = math.ceil(max(0.0, output_tokens - 1) / tau)
        decode_share_s = steps * self.decode_step_s(self.max_num_seqs) / self.max_num_seqs
        per_request_s = prompt_tokens / self.prefill_tps + decode_share_s
        return 1.0 / per_request_s

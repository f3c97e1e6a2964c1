"""The cost of one engine step on one replica, fitted to the seed table (one B300, gemma-4-26B-A4B).

A replica runs vLLM's continuous batching: every step carries each running sequence's decode tokens
plus chunks of pending prefills, up to ``max_batched_tokens``. A step costs

    t_step = t_decode(b) + prefill_tokens / prefill_tps        (t_decode(0) = t_ar(1): one weight pass)

**Autoregressive decode.** A seed cell at concurrency c measured c / tokens/s per step; ``t_ar(b)``
runs through the mean over the five tasks at c = 1, 8 and 32 (3.84, 6.54 and 11.35 ms), linearly in
between, and past 32 keeps the last slope: the slow growth of a memory-bound step as its KV reads grow.

**DFlash.** A step drafts ``spec_tokens`` (15) tokens and verifies them; a sequence gains its
acceptance length τ per step (drawn per request from the seed's range, 4.24–8.61). The seed cells give
the DFlash step time c·τ / tokens/s, and

    t_spec(b) = κ · t_ar(b) + v · b

is fitted to all fifteen cells (each against its own AR step) by least squares in relative error with
v ≥ 0 (``fit_dflash_cost``). κ covers the drafter's pass and the wider expert reads of a 16-token verify;
v would charge verify compute per sequence. The seed's speedups do not fall from c = 1 to 32, and the fit
puts v at 0: the model keeps the speedup at τ / κ at every batch, extrapolating past 32, where the seed
has no cell. ``calibration`` reports the model against every cell.

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
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from sim.production import production_model
from sim.seed_table import SeedCell, seed_cells


def _seed_ar_steps() -> tuple[tuple[int, float], ...]:
    """(concurrency, AR step seconds): the mean over the seed's tasks at each measured concurrency."""
    cells = seed_cells()
    return tuple(
        (c, statistics.fmean(x.ar_step_s for x in cells if x.concurrency == c))
        for c in sorted({x.concurrency for x in cells})
    )


SEED_AR_STEPS = _seed_ar_steps()
SEED_TAU_RANGE: tuple[float, float] = (min(c.tau for c in seed_cells()), max(c.tau for c in seed_cells()))


@dataclass(frozen=True, slots=True)
class DflashCost:
    """A DFlash step's time against the AR step at the same batch: ``kappa · t_ar(b) + verify_s · b``."""

    kappa: float
    verify_s: float  # per sequence in the batch, >= 0

    def step_s(self, ar_step_s: float, batch: int) -> float:
        return self.kappa * ar_step_s + self.verify_s * batch


def fit_dflash_cost(cells: Sequence[SeedCell]) -> DflashCost:
    """Least squares in relative step-time error over ``cells``, both terms held at or above 0.

    Each cell is one row ``kappa · ar/spec + verify_s · c/spec ≈ 1``. Non-negative least squares in two
    unknowns: the unconstrained solution if it is feasible, else the better of the two one-term fits.
    """
    xs = [c.ar_step_s / c.dflash_step_s for c in cells]
    ys = [c.concurrency / c.dflash_step_s for c in cells]

    def sse(fit: DflashCost) -> float:
        return sum((fit.kappa * x + fit.verify_s * y - 1) ** 2 for x, y in zip(xs, ys, strict=True))

    sxx, syy = sum(x * x for x in xs), sum(y * y for y in ys)
    sxy, sx, sy = sum(x * y for x, y in zip(xs, ys, strict=True)), sum(xs), sum(ys)
    candidates = [DflashCost(kappa=sx / sxx, verify_s=0.0), DflashCost(kappa=0.0, verify_s=sy / syy)]
    det = sxx * syy - sxy * sxy
    if det > 1e-12 * sxx * syy:  # not collinear
        full = DflashCost(kappa=(sx * syy - sy * sxy) / det, verify_s=(sy * sxx - sx * sxy) / det)
        if full.kappa >= 0 and full.verify_s >= 0:
            candidates.append(full)
    return min(candidates, key=sse)


def _production_k() -> int:
    speculative = production_model().speculative
    if speculative is None:
        raise ValueError("the production config serves no drafter; the simulator models DFlash")
    return speculative.num_speculative_tokens


@dataclass(frozen=True, slots=True)
class CellFit:
    """The model against one seed cell: tokens/s it predicts at the cell's concurrency (and τ) vs measured."""

    task: str
    concurrency: int
    ar_tps: float
    ar_model_tps: float
    dflash_tps: float
    dflash_model_tps: float

    @property
    def ar_error(self) -> float:
        return self.ar_model_tps / self.ar_tps - 1

    @property
    def dflash_error(self) -> float:
        return self.dflash_model_tps / self.dflash_tps - 1


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
    dflash: DflashCost = field(default_factory=lambda: fit_dflash_cost(seed_cells()))

    def ar_step_s(self, batch: int) -> float:
        """Step time of plain decoding at ``batch`` sequences (piecewise linear through the seed points)."""
        b = max(1, batch)
        for (c0, t0), (c1, t1) in itertools.pairwise(SEED_AR_STEPS):
            if b <= c1:
                return t0 + (t1 - t0) * (b - c0) / (c1 - c0)
        (c0, t0), (c1, t1) = SEED_AR_STEPS[-2], SEED_AR_STEPS[-1]
        return t1 + (t1 - t0) / (c1 - c0) * (b - c1)

    @property
    def verify_tokens(self) -> int:
        """Tokens of budget one decoding sequence uses per step (1 without speculation)."""
        return self.spec_tokens + 1 if self.speculative else 1

    def decode_step_s(self, batch: int) -> float:
        """One step with ``batch`` decoding sequences (and no prefill)."""
        if batch <= 0:
            return self.ar_step_s(1)
        if not self.speculative:
            return self.ar_step_s(batch)
        return self.dflash.step_s(self.ar_step_s(batch), batch)

    def calibration(self, cells: Sequence[SeedCell] | None = None) -> tuple[CellFit, ...]:
        """The model as the simulator runs it (one AR curve, the cell's τ) against each seed cell."""
        out = []
        for cell in cells if cells is not None else seed_cells():
            c = cell.concurrency
            spec = self.dflash.step_s(self.ar_step_s(c), c)
            out.append(CellFit(cell.task, c, cell.ar_tps, c / self.ar_step_s(c), cell.dflash_tps, c * cell.tau / spec))
        return tuple(out)

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

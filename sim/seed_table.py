"""The seed table: z-lab's DFlash measurement of gemma-4-26B-A4B on one B300, the simulators' calibration.

One B300, vLLM, thinking on, max output 4096, greedy, block size 16, z-lab's ``dflash/benchmark.py``
against a server: for each of five tasks and concurrency 1, 8 and 32, output tokens/s of plain
autoregressive decoding, of DFlash, and DFlash's mean acceptance length τ (tokens per verify step).
It lives here, below ``bench`` (whose ``dflash_table`` prints our runs beside it), because the routing and
autoscaling simulators fit their engine model to it (``sim.routing.engine``).
"""

from __future__ import annotations

from dataclasses import dataclass

# task -> concurrency -> (AR tokens/s, DFlash tokens/s, tau)
REFERENCE: dict[str, dict[int, tuple[float, float, float]]] = {
    "math500": {1: (259, 925, 8.61), 8: (1296, 4837, 8.55), 32: (3233, 11435, 8.60)},
    "gsm8k": {1: (256, 825, 7.71), 8: (1217, 4241, 7.76), 32: (3174, 10306, 7.72)},
    "humaneval": {1: (246, 818, 7.80), 8: (1182, 4240, 7.87), 32: (2881, 9150, 7.83)},
    "mbpp": {1: (272, 698, 6.09), 8: (1288, 3387, 5.99), 32: (2950, 7898, 6.03)},
    "mt-bench": {1: (272, 492, 4.33), 8: (1146, 2259, 4.33), 32: (2164, 4829, 4.24)},
}


@dataclass(frozen=True, slots=True)
class SeedCell:
    """One measured cell, with the per-step times it implies (a step at concurrency c emits c·gain tokens)."""

    task: str
    concurrency: int
    ar_tps: float
    dflash_tps: float
    tau: float

    @property
    def ar_step_s(self) -> float:
        return self.concurrency / self.ar_tps

    @property
    def dflash_step_s(self) -> float:
        return self.concurrency * self.tau / self.dflash_tps

    @property
    def speedup(self) -> float:
        return self.dflash_tps / self.ar_tps


def seed_cells() -> tuple[SeedCell, ...]:
    return tuple(
        SeedCell(task, c, ar, dflash, tau) for task, row in REFERENCE.items() for c, (ar, dflash, tau) in row.items()
    )

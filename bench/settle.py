"""The pause between two arms of a benchmark whose engines share a CPU machine's cores.

vLLM's engine processes busy-wait on their shared-memory queues for a second after the last message
they read, then sleep on a socket (``SpinCondition``, ``busy_loop_s=1``, in
vllm/distributed/device_communicators/shm_broadcast.py). On a CPU machine vLLM binds every engine's
worker to the same core (its automatic OpenMP binding takes core 0 and reserves the rest), so for that
second the arm just measured spins on the core the next arm's worker computes on. Measured on a 2-core
box (bench.overhead, AR, c=8, 2026-12-07): the arm that started right after the other waited 0.6-1.0 s
longer for its first tokens (TTFT p50 ~1,000 ms against ~200 ms) and lost a quarter of its throughput;
after this pause, no more than without the other arm at all. Every arm starts after it, so none pays for
the one before.
"""

from __future__ import annotations

import time

ENGINE_IDLE_SPIN_S = 1.0  # vLLM's busy_loop_s (see above)
SETTLE_S = 2 * ENGINE_IDLE_SPIN_S  # with a margin for a loaded machine's late wake-ups


def settle() -> None:
    """Wait until an engine that just served its last request has stopped spinning."""
    time.sleep(SETTLE_S)

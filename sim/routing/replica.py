"""One engine replica: vLLM-style continuous batching over a finite prefix-cached KV pool.

Each step (vLLM V1's scheduler, simplified): running sequences first — every decoding sequence takes
``verify_tokens`` of the ``max_batched_tokens`` budget, prefilling ones take chunks of what is left —
then waiting requests are admitted in order while a sequence slot, budget and KV blocks remain (a
request that does not fit blocks those behind it; no preemption: its output blocks are reserved at
admission). A prefill's last chunk samples the first token at the end of its step (TTFT); after that
a sequence gains τ tokens per step.

To stay fast, steps that only decode are taken together: the replica plans a run of identical steps
up to the next finish, and a request arriving meanwhile cuts the run at the step boundary after its
arrival (where vLLM would admit it). Times come back to the simulator, which owns the clock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from routing.hashing import BlockHash
from sim.routing.engine import EngineModel
from sim.routing.kv_cache import KvCache
from sim.routing.workloads import Turn


@dataclass(slots=True, eq=False)
class Job:
    """One request's life, from the router's arrival to its last token."""

    request_id: str
    session: int
    turn_index: int
    turn: Turn
    arrival_s: float
    replica: int = -1
    reason: str = ""
    hit_blocks: int = 0
    computed_tokens: int = 0  # prompt tokens with KV: hits plus prefilled chunks
    chunk_tokens: int = 0  # prompt tokens scheduled in the current step
    generated: float = 0.0
    registered: list[BlockHash] = field(default_factory=list)  # hashed blocks it pins
    private_blocks: int = 0
    next_block: int = 0  # next prompt block to register
    first_token_s: float = math.nan
    done_s: float = math.nan

    @property
    def prefilled(self) -> bool:
        return self.computed_tokens == self.turn.prompt_tokens


@dataclass(slots=True)
class _Plan:
    start_s: float
    step_s: float
    steps: int
    decoding: list[Job]
    prefilling: list[Job]

    @property
    def end_s(self) -> float:
        return self.start_s + self.steps * self.step_s


class Replica:
    def __init__(self, index: int, replica_id: str, engine: EngineModel) -> None:
        self.index = index
        self.replica_id = replica_id
        self.engine = engine
        self.kv = KvCache(engine.kv_blocks)
        self.waiting: deque[Job] = deque()
        self.running: list[Job] = []
        self.epoch = 0  # bumped whenever the pending step end changes; stale ends are ignored
        self._plan: _Plan | None = None

    def submit(self, job: Job, now: float) -> float | None:
        """Queue ``job``; returns the (new) end of the current step run if it changed, else None."""
        bs = self.engine.block_size
        if math.ceil((job.turn.prompt_tokens + job.turn.output_tokens) / bs) > self.kv.capacity_blocks:
            raise ValueError(
                f"request {job.request_id} needs more KV blocks than a replica has ({self.kv.capacity_blocks}): "
                "shorten the workload's prompts or raise EngineModel.kv_blocks"
            )
        self.waiting.append(job)
        plan = self._plan
        if plan is None:
            return self._start(now)
        if plan.steps > 1 and len(self.running) < self.engine.max_num_seqs:
            done = int((now - plan.start_s) / plan.step_s)
            if done + 1 < plan.steps:
                plan.steps = done + 1
                self.epoch += 1
                return plan.end_s
        return None

    def complete(self, now: float) -> tuple[list[Job], list[Job], float | None]:
        """The planned steps ended at ``now``: (first tokens, finished requests, next step end)."""
        plan = self._plan
        if plan is None:
            raise RuntimeError(f"replica {self.replica_id} completed a step it never planned")
        for job in plan.decoding:
            job.generated += plan.steps * self._tokens_per_step(job)
        first = []
        for job in plan.prefilling:
            job.computed_tokens += job.chunk_tokens
            job.chunk_tokens = 0
            if job.prefilled:
                job.generated = 1.0
                job.first_token_s = now
                first.append(job)
        finished = [j for j in self.running if j.prefilled and j.generated >= j.turn.output_tokens - 1e-9]
        for job in finished:
            self.running.remove(job)
            self.kv.release(job.registered, job.private_blocks)
            job.done_s = now
        return first, finished, self._start(now)

    def _start(self, now: float) -> float | None:
        """Plan the next step(s) from ``now``; returns when they end (None: idle)."""
        eng = self.engine
        budget = eng.max_batched_tokens
        decoding = [j for j in self.running if j.prefilled]
        budget -= len(decoding) * eng.verify_tokens
        prefilling = []
        for job in self.running:
            if not job.prefilled and budget > 0:
                budget = self._schedule_chunk(job, budget, prefilling)
        while self.waiting and len(self.running) < eng.max_num_seqs and budget > 0 and self._admit(self.waiting[0]):
            job = self.waiting.popleft()
            self.running.append(job)
            budget = self._schedule_chunk(job, budget, prefilling)
        self.epoch += 1
        if not self.running:
            self._plan = None
            return None
        prefill_tokens = sum(j.chunk_tokens for j in prefilling)
        if prefill_tokens:
            plan = _Plan(now, eng.step_s(len(decoding), prefill_tokens), 1, decoding, prefilling)
        else:
            steps = min(self._steps_to_finish(j) for j in decoding)
            plan = _Plan(now, eng.decode_step_s(len(decoding)), steps, decoding, [])
        self._plan = plan
        return plan.end_s

    def _admit(self, job: Job) -> bool:
        bs = self.engine.block_size
        turn = job.turn
        hits = self.kv.cached_prefix(turn.block_hashes, (turn.prompt_tokens - 1) // bs)
        new_blocks = math.ceil((turn.prompt_tokens + turn.output_tokens) / bs) - hits
        hit_hashes = turn.block_hashes[:hits]
        if not self.kv.can_admit(hit_hashes, new_blocks):
            return False
        self.kv.admit(hit_hashes, new_blocks)
        job.hit_blocks = hits
        job.computed_tokens = hits * bs
        job.registered = list(hit_hashes)
        job.private_blocks = new_blocks
        job.next_block = hits
        return True

    def _schedule_chunk(self, job: Job, budget: int, prefilling: list[Job]) -> int:
        """Give ``job`` the next prefill chunk; its full blocks become cached now, as in vLLM."""
        job.chunk_tokens = min(job.turn.prompt_tokens - job.computed_tokens, budget)
        prefilling.append(job)
        full = min(len(job.turn.block_hashes), (job.computed_tokens + job.chunk_tokens) // self.engine.block_size)
        if full > job.next_block:
            done = self.kv.register(job.turn.block_hashes[job.next_block : full])
            job.registered += done
            job.private_blocks -= len(done)
            job.next_block = full
        return budget - job.chunk_tokens

    def _tokens_per_step(self, job: Job) -> float:
        return job.turn.tau if self.engine.speculative else 1.0

    def _steps_to_finish(self, job: Job) -> int:
        return max(1, math.ceil((job.turn.output_tokens - job.generated) / self._tokens_per_step(job) - 1e-9))

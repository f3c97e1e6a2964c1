"""DFlash counters read from a Prometheus exposition, and what their deltas say.

vLLM reports speculative decoding as counters (``vllm:spec_decode_*``, labels ``model_name``, ``engine``
and, per position, ``position``). A benchmark reads ``/metrics`` before and after a run and works on the
difference, as ``vllm bench serve`` does: the mean acceptance length is ``tau = 1 + accepted / drafts``
(each verification step emits the accepted draft tokens plus one token of the target's own), and the
acceptance rate at draft position ``i`` is ``accepted_at_i / drafts``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

DRAFTS = "vllm:spec_decode_num_drafts_total"
DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens_total"
ACCEPTED = "vllm:spec_decode_num_accepted_tokens_total"
ACCEPTED_PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"


@dataclass(frozen=True)
class SpecCounters:
    """Totals of one model's counters (summed over engines and replicas) at one scrape, or a delta."""

    drafts: float = 0.0
    draft_tokens: float = 0.0
    accepted: float = 0.0
    generation_tokens: float = 0.0
    accepted_per_pos: dict[int, float] = field(default_factory=dict)

    def __sub__(self, before: SpecCounters) -> SpecCounters:
        positions = set(self.accepted_per_pos) | set(before.accepted_per_pos)
        return SpecCounters(
            drafts=self.drafts - before.drafts,
            draft_tokens=self.draft_tokens - before.draft_tokens,
            accepted=self.accepted - before.accepted,
            generation_tokens=self.generation_tokens - before.generation_tokens,
            accepted_per_pos={
                p: self.accepted_per_pos.get(p, 0.0) - before.accepted_per_pos.get(p, 0.0) for p in sorted(positions)
            },
        )

    @property
    def acceptance_length(self) -> float | None:
        """Mean tokens emitted per verification step (tau); None when nothing was drafted."""
        if self.drafts <= 0:
            return None
        return 1.0 + self.accepted / self.drafts

    @property
    def acceptance_rate(self) -> float | None:
        """Share of drafted tokens accepted."""
        if self.draft_tokens <= 0:
            return None
        return self.accepted / self.draft_tokens

    def per_position_acceptance(self) -> list[float]:
        """Acceptance rate at each draft position, 0-based (falls with the position)."""
        if self.drafts <= 0:
            return []
        return [self.accepted_per_pos[p] / self.drafts for p in sorted(self.accepted_per_pos)]


def sample_total(text: str, name: str, **labels: str) -> float | None:
    """Sum of the samples named ``name`` whose labels include ``labels``; None when there is none."""
    values = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return sum(values) if values else None


def read_counters(text: str, model: str | None = None) -> SpecCounters:
    """The spec-decode and generation counters in ``text``, for ``model`` (its ``model_name`` label) or all."""
    totals: dict[str, float] = defaultdict(float)
    per_pos: dict[int, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if model is not None and s.labels.get("model_name") != model:
                continue
            if s.name == ACCEPTED_PER_POS:
                per_pos[int(s.labels["position"])] += s.value
            elif s.name in (DRAFTS, DRAFT_TOKENS, ACCEPTED, GENERATION_TOKENS):
                totals[s.name] += s.value
    return SpecCounters(
        drafts=totals[DRAFTS],
        draft_tokens=totals[DRAFT_TOKENS],
        accepted=totals[ACCEPTED],
        generation_tokens=totals[GENERATION_TOKENS],
        accepted_per_pos=dict(sorted(per_pos.items())),
    )

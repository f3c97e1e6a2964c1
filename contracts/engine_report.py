"""The typed values that cross process boundaries between the parts: engine -> router/autoscaler, ingress -> router.

Serve carries an engine replica's report as a flat ``dict[str, float]`` (what ``record_routing_stats`` and
``record_autoscaling_stats`` must return; the autoscaler receives each key's mean over its look-back
window). :meth:`ReplicaReport.to_wire` writes that dict and :meth:`ReplicaReport.from_wire` reads it back,
raising :class:`ReportError` that names a missing key: a key renamed on one side fails loudly instead of
reading as 0 and silently turning routing cold or the autoscaler blind.

Optional fields (latency percentiles, acceptance lengths) are ``None`` until measured and absent on the
wire, so a window's mean is taken over the samples that have them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import ClassVar


class ReportError(ValueError):
    """An engine replica's report lacks a field this version of the router or autoscaler needs."""


@dataclass(frozen=True, slots=True)
class BlockGeometry:
    """How an engine caches prompts, in tokens: the units a router must hash in for its blocks to meet the cache's.

    Invariants: ``group_block_size`` is a multiple of ``block_size`` and ``align_tokens`` of
    ``group_block_size`` (vLLM's hybrid allocator pages each KV group in multiples of the hashing block,
    and reuses prompts in units of the least common multiple of its groups' blocks).
    """

    block_size: int  # the engine core's hashing block
    group_block_size: int  # the block of the full-attention KV group whose events the routers follow
    align_tokens: int  # prompts hit in multiples of this

    DEFAULT: ClassVar[BlockGeometry]

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.group_block_size % self.block_size or self.align_tokens % self.group_block_size:
            raise ValueError(
                f"inconsistent block geometry {self}: group_block_size must be a positive multiple of block_size, "
                "align_tokens of group_block_size"
            )

    @classmethod
    def uniform(cls, block_size: int) -> BlockGeometry:
        """One KV group of ``block_size`` blocks (every non-hybrid model)."""
        return cls(block_size, block_size, block_size)


BlockGeometry.DEFAULT = BlockGeometry.uniform(16)  # vLLM's default block, used until a replica has reported


@dataclass(frozen=True, slots=True)
class ReplicaReport:
    """One engine replica's state. Gauges are as of its last engine step, ``*_total`` counters since it started,
    ``*_per_s`` and the percentiles over its recent window (``autoscaling.stats_window_s``)."""

    geometry: BlockGeometry
    num_running: float  # sequences in the running batch
    num_waiting: float  # sequences queued in the engine (skipped ones included)
    kv_cache_usage: float  # share of KV blocks in use, 0..1
    kv_tokens_in_use: float
    kv_capacity_tokens: float
    ongoing_requests: float  # calls in flight in this replica
    engine_unfinished_requests: float  # requests the engine still tracks (0 once aborted ones are gone)
    generation_tokens_total: float
    prompt_tokens_total: float
    prefix_cache_queries_total: float  # prompt tokens looked up in the prefix cache
    prefix_cache_hits_total: float  # of those, tokens found cached
    spec_drafts_total: float
    spec_draft_tokens_total: float
    spec_accepted_tokens_total: float
    generation_tokens_per_s: float
    finished_requests_per_s: float  # the replica's measured service rate
    ttft_p90_s: float | None = None
    tpot_p90_s: float | None = None
    acceptance_length: float | None = None  # DFlash tau since start: 1 + accepted / drafts
    recent_acceptance_length: float | None = None  # the same over the recent window
    # The running batch averaged over the recent window, weighted by time: the batch the window's
    # tokens/s was delivered at (``num_running`` is the last step's, which a burst has just changed).
    recent_running: float | None = None

    _GEOMETRY_KEYS: ClassVar[tuple[str, str, str]] = ("block_size", "group_block_size", "cache_align_tokens")

    def to_wire(self) -> dict[str, float]:
        """The flat record Serve carries (geometry flattened, unmeasured fields left out)."""
        g = self.geometry
        out = dict(
            zip(self._GEOMETRY_KEYS, map(float, (g.block_size, g.group_block_size, g.align_tokens)), strict=True)
        )
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "geometry" and value is not None:
                out[f.name] = float(value)
        return out

    @classmethod
    def from_wire(cls, data: Mapping[str, float]) -> ReplicaReport:
        """The report in ``data``; :class:`ReportError` names the required keys it lacks."""
        required = [f.name for f in fields(cls) if f.name != "geometry" and f.default is not None]
        missing = [k for k in (*cls._GEOMETRY_KEYS, *required) if k not in data]
        if missing:
            raise ReportError(f"engine replica report lacks {missing} (has {sorted(data)}); engine and router differ")
        block, group, align = (int(data[k]) for k in cls._GEOMETRY_KEYS)
        values = {f.name: data.get(f.name) for f in fields(cls) if f.name != "geometry"}
        return cls(geometry=BlockGeometry(block, group, align), **values)  # type: ignore[arg-type]

    @classmethod
    def from_means(cls, data: Mapping[str, float]) -> ReplicaReport:
        """The report in Serve's per-field means over its look-back window (what an autoscaling policy gets).

        Serve averages every field, the geometry's too: over a window in which a replica learned its geometry
        from its first KV events, the mean of two geometries is none (block 32, group 58). The geometry is
        taken as the default here: nothing that reads means uses it; the routers read whole reports.
        """
        g = BlockGeometry.DEFAULT
        default = dict(
            zip(cls._GEOMETRY_KEYS, map(float, (g.block_size, g.group_block_size, g.align_tokens)), strict=True)
        )
        return cls.from_wire({**data, **default})


@dataclass(frozen=True, slots=True)
class PromptHashing:
    """How a router hashes prompts: in its replicas' reported geometry, at most ``max_blocks`` blocks, from the
    engines' NONE_HASH seed. A router publishes its own so that the ingress, in the same process, can hash a prompt
    in its render pool exactly as the router would, off the event loop the router runs on."""

    geometry: BlockGeometry
    max_blocks: int | None
    seed: str


@dataclass(frozen=True, slots=True)
class RoutingHint:
    """What the ingress knows about a request that the router needs; passed to the engine call as ``routing=``."""

    token_ids: tuple[int, ...] = ()  # the prompt as the engine will see it (chat template applied)
    session_key: str | None = None  # x-session-id or the OpenAI `user` field, when session affinity is on
    block_hashes: tuple[int, ...] = ()  # the prompt's block hashes, under ``hashed``
    hashed: PromptHashing | None = None  # None: not hashed; a router hashing otherwise re-hashes ``token_ids``

    @classmethod
    def of(cls, value: object) -> RoutingHint | None:
        """``value`` as a hint: Serve may deliver a by-value copy of this class, equal in fields, not in identity."""
        if value is None or isinstance(value, cls):
            return value
        token_ids, session_key = getattr(value, "token_ids", None), getattr(value, "session_key", None)
        if token_ids is None:
            raise TypeError(f"routing hint {type(value).__name__} has no token_ids")
        hashed = getattr(value, "hashed", None)
        if hashed is not None:  # a by-value copy too: equal in fields
            g = hashed.geometry
            geometry = BlockGeometry(g.block_size, g.group_block_size, g.align_tokens)
            hashed = PromptHashing(geometry, hashed.max_blocks, hashed.seed)
        return cls(tuple(token_ids), session_key, tuple(getattr(value, "block_hashes", ())), hashed)

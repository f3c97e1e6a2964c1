"""The vLLM engine of one replica: the target's settings and its DFlash drafter."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from config.base import HubCommit, Strict
from vllm_plugins.draft_semantics import DraftSemanticsMode


class SpeculativeConfig(Strict):
    """The DFlash drafter that runs beside the target on the same GPU."""

    method: Literal["dflash"] = Field("dflash", description="Speculative method passed to vLLM.")
    draft_model: str = Field(description="Drafter source: Hugging Face id or local directory.")
    draft_revision: HubCommit | None = Field(
        None, description="The drafter's Hugging Face commit (40 hex digits); None: its main branch at download."
    )
    num_speculative_tokens: int = Field(
        15,
        ge=1,
        le=63,
        description="Tokens drafted per step; at most the drafter's block size - 1 (a DFlash block's first "
        "position is the last verified token). Checked at load against a local drafter's config.json; a Hugging "
        "Face drafter is not checked (nothing local to read, and vLLM 0.32 does not bound a DFlash K either).",
    )
    attention_backend: str | None = Field(
        None,
        description="The drafter's own attention backend (must support non-causal attention; "
        "flash_attn on Hopper/Blackwell). None lets vLLM choose.",
    )
    draft_semantics: DraftSemanticsMode = Field(
        "auto",
        description="The drafter's forward: auto and zlab run z-lab's reference semantics (the target's scaled "
        "embeddings, soft-capped logits; vllm_plugins/, vLLM PR #41703's first item), stepping aside where vLLM "
        "already applies them; zlab also refuses to start an engine where the plugin is not installed; vllm runs "
        "stock vLLM's draft forward (for A/B measurements).",
    )


class EngineConfig(Strict):
    """vLLM engine settings for one replica (target + drafter on one GPU)."""

    max_model_len: int = Field(4096, ge=16, description="Context length (prompt + output) in tokens.")
    max_num_seqs: int = Field(64, ge=1, description="Sequences the engine batches at once.")
    max_num_batched_tokens: int = Field(
        8192, ge=16, description="Token budget of one scheduler step; keep >= max_num_seqs x (K+1)."
    )
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Share of GPU memory vLLM may take.")
    enforce_eager: bool = Field(False, description="Disable CUDA graphs (always on for CPU).")
    enable_prefix_caching: bool = Field(True, description="Automatic prefix caching (the router relies on it).")
    prefix_cache_retention: Literal["dense", "checkpoints"] = Field(
        "dense",
        description="Which sliding-window KV blocks stay reusable once they leave the window (vLLM's "
        "prefix_cache_retention_interval). checkpoints (vLLM's default, 0): only at a prompt's end and shared-"
        "prefix junctions, so a chat's next turn reuses the previous prompt but not the answer; dense (None): every "
        "unit, so it reuses prompt and answer (docs/known-issues.md). Retained blocks stay evictable.",
    )
    block_size: int | None = Field(None, ge=1, description="KV block size; None lets vLLM pick per model.")
    dtype: str = Field("auto", description="Weights/activations dtype (auto, bfloat16, float32, ...).")
    attention_backend: str | None = Field(
        None, description="The target's attention backend (e.g. triton_attn for Gemma-4 on Blackwell)."
    )
    seed: int = Field(0, description="Engine seed, so sampled outputs with a request seed are reproducible.")
    tensor_parallel_size: int = Field(
        1,
        ge=1,
        description="GPUs one engine shards the target over (the drafter runs on the same ranks, as vLLM does "
        "for DFlash). Above 1 the replica's placement group holds one bundle per GPU on one node.",
    )
    kv_cache_memory_gib: float | None = Field(
        None,
        gt=0,
        description="Fixed KV cache size per replica; overrides gpu_memory_utilization (which on CPU "
        "engines is a share of host RAM that must be free at start). Set it on CPU.",
    )
    chat_template_content_format: Literal["auto", "string", "openai"] = Field(
        "string",
        description="How vLLM hands message content to the chat template. Gemma-4's template prints a system "
        "message's content as is, so vLLM's auto-detected 'openai' (a list of parts, strings wrapped too) would put "
        "the list's repr in the prompt; 'string' joins text parts with newlines, as the ingress does when it "
        "renders, and puts an image's placeholder token in its place (vllm_plugins/gemma4_placeholders.py).",
    )
    reasoning_parser: str | None = Field("gemma4", description="vLLM reasoning parser splitting out thinking.")
    tool_call_parser: str | None = Field("gemma4", description="vLLM tool-call parser; None disables tools.")
    extra_engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other `vllm serve` option, by name (e.g. max_logprobs). Each goes through vLLM's own "
        "parser when the config loads: an unknown name, a bad value or an option the config sets itself is "
        "rejected there (config/engine_validation.py).",
    )

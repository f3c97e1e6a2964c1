"""One served model: target, drafter, engine, replicas and routing, checked together."""

from __future__ import annotations

from pydantic import Field, model_validator

from config.base import HubCommit, Strict
from config.engine import EngineConfig, SpeculativeConfig
from config.replicas import ReplicaConfig
from config.routing import RoutingConfig


class ModelConfig(Strict):
    """One served model: its own engine deployment, addressed by the request's ``model``."""

    id: str = Field(description="Served model id (the OpenAI `model` field).", min_length=1)
    target: str = Field(description="Target model source: Hugging Face id or local directory.")
    tokenizer: str | None = Field(None, description="Tokenizer source if not the target's.")
    revision: HubCommit | None = Field(
        None,
        description="The target's Hugging Face commit (40 hex digits; also the tokenizer's when `tokenizer` is "
        "unset): every replica, and the ingress's tokenizer, load exactly it. None: the main branch at download.",
    )
    tokenizer_revision: HubCommit | None = Field(
        None, description="The commit of a separate `tokenizer` repository (with `tokenizer` only)."
    )
    speculative: SpeculativeConfig | None = Field(None, description="DFlash drafter; None serves plain AR.")
    engine: EngineConfig = Field(default_factory=EngineConfig)
    replicas: ReplicaConfig = Field(default_factory=ReplicaConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)

    @model_validator(mode="after")
    def _tensor_parallel_needs_gpus(self) -> ModelConfig:
        if self.engine.tensor_parallel_size > 1 and self.replicas.num_gpus != 1:
            raise ValueError(
                f"model {self.id!r}: tensor_parallel_size={self.engine.tensor_parallel_size} needs "
                "replicas.num_gpus=1 (one whole GPU per tensor-parallel rank)"
            )
        if self.engine.tensor_parallel_size > 1 and self.replicas.max_replicas_per_node is not None:
            raise ValueError(
                f"model {self.id!r}: max_replicas_per_node needs tensor_parallel_size=1 (Ray Serve does not "
                "cap replicas per node for placement-group replicas; the node's GPUs cap them)"
            )
        return self

    @model_validator(mode="after")
    def _tokenizer_revision(self) -> ModelConfig:
        if self.tokenizer_revision is not None and self.tokenizer is None:
            raise ValueError(
                f"model {self.id!r}: tokenizer_revision pins a separate `tokenizer`; the target's tokenizer "
                "follows `revision`"
            )
        if self.revision and self.tokenizer and not _is_local(self.tokenizer) and not self.tokenizer_revision:
            raise ValueError(
                f"model {self.id!r}: with `revision` and a separate hub `tokenizer`, set `tokenizer_revision` too "
                "(vLLM would look for the target's commit in the tokenizer's repository)"
            )
        return self

    def tokenizer_source(self) -> tuple[str, str | None]:
        """Where the tokenizer comes from, and at which commit (None: the main branch)."""
        if self.tokenizer:
            return self.tokenizer, self.tokenizer_revision
        return self.target, self.revision

    def unpinned_sources(self) -> list[str]:
        """Hugging Face sources (not local directories) this model loads without a pinned commit."""
        sources = [(self.target, self.revision)]
        if self.tokenizer:
            sources.append((self.tokenizer, self.tokenizer_revision))
        if self.speculative is not None:
            sources.append((self.speculative.draft_model, self.speculative.draft_revision))
        return [src for src, rev in sources if rev is None and not _is_local(src)]

    @model_validator(mode="after")
    def _budget(self) -> ModelConfig:
        if self.speculative is not None:
            need = self.engine.max_num_seqs * (self.speculative.num_speculative_tokens + 1)
            if self.engine.max_num_batched_tokens < need:
                raise ValueError(
                    f"model {self.id!r}: max_num_batched_tokens={self.engine.max_num_batched_tokens} "
                    f"< max_num_seqs x (num_speculative_tokens + 1) = {need}; vLLM's drafter buffers "
                    "overflow (vllm#53970). Raise max_num_batched_tokens or lower max_num_seqs."
                )
        return self

    def deployment_name(self) -> str:
        """Serve deployment name: stable, readable, and unique per model id."""
        safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in self.id)
        return f"Engine-{safe}"


def _is_local(source: str) -> bool:
    """A directory path, not a hub id: absolute, relative (``./``, ``../``) or home-relative."""
    return source.startswith(("/", "./", "../", "~"))

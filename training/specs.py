"""The shapes of the tiny Gemma-4 target and its DFlash drafter, and the target's config from its shape.

Training (``training/``) and the builders (``tools/tiny_models.py``, ``tools/demo_pair.py``) share these:
a spec is the one definition of a tiny model's shape.
"""

from __future__ import annotations

from dataclasses import dataclass

# gemma-4-26B-A4B-it's attention in miniature: 5 sliding layers to 1 full one, sliding layers with 8 KV
# heads of width 256, full layers with 2 shared K=V heads of width 512 (``attention_k_eq_v``). Kept in
# those proportions (4:1 KV heads, 2x head width), a full layer stores half a sliding layer's bytes per
# token, as on the real model, so vLLM's hybrid allocator gives full-attention groups blocks twice the
# sliding groups' (64 vs 32 tokens on CPU) and prefix hits land on 64-token boundaries, not 512
# (docs/demo-pair.md, "KV geometry").
REAL_LAYER_PATTERN = ("sliding_attention",) * 5 + ("full_attention",)


@dataclass(frozen=True)
class TargetSpec:
    """Shape of the tiny Gemma-4 target (same config family and KV geometry as gemma-4-26B-A4B-it)."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 6
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int = 32
    global_head_dim: int = 64
    num_global_key_value_heads: int = 1
    attention_k_eq_v: bool = True
    sliding_window: int = 256
    layer_types: tuple[str, ...] = REAL_LAYER_PATTERN
    num_experts: int = 4
    top_k_experts: int = 2
    moe_intermediate_size: int = 32
    max_position_embeddings: int = 8192
    final_logit_softcapping: float = 30.0  # the real model's
    seed: int = 0


@dataclass(frozen=True)
class DrafterSpec:
    """Shape of the tiny DFlash drafter (same config family as z-lab's Gemma-4 drafter)."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 1
    num_attention_heads: int = 2
    # 2 KV heads of width 32: a drafter layer stores as many bytes per token as a target full layer, so
    # its KV group gets the same 64-token blocks instead of coarsening the cache-hit alignment.
    num_key_value_heads: int = 2
    head_dim: int = 32
    block_size: int = 16
    target_layer_ids: tuple[int, ...] = (1, 3)
    mask_token_id: int = 4  # "<mask>" in the Gemma-4 vocabulary, as in z-lab's drafter
    # z-lab's draft semantics, written into ``dflash_config`` as z-lab ships them when set: the block's
    # input embeddings are the target's table times ``input_embedding_scale``, the draft logits are
    # soft-capped with ``final_logit_softcapping``. Unset, a serving stack must derive them from the
    # target (vllm_plugins/draft_semantics.py), as for z-lab's drafters whose configs omit them.
    input_embedding_scale: float | None = None
    final_logit_softcapping: float | None = None
    seed: int = 1


def target_config(spec: TargetSpec, vocab_size: int, pad_id: int, bos_id: int, eos_id: int):  # noqa: ANN201
    """The ``Gemma4TextConfig`` of a target of this spec (training trains the text model as
    ``Gemma4ForCausalLM`` on a GPU; served, it is the text config of ``gemma4_layout.multimodal_config``)."""
    from transformers import Gemma4TextConfig

    return Gemma4TextConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        global_head_dim=spec.global_head_dim,
        num_global_key_value_heads=spec.num_global_key_value_heads,
        attention_k_eq_v=spec.attention_k_eq_v,
        hidden_size_per_layer_input=0,
        layer_types=list(spec.layer_types),
        sliding_window=spec.sliding_window,
        enable_moe_block=True,
        num_experts=spec.num_experts,
        top_k_experts=spec.top_k_experts,
        moe_intermediate_size=spec.moe_intermediate_size,
        max_position_embeddings=spec.max_position_embeddings,
        final_logit_softcapping=spec.final_logit_softcapping,
        architectures=["Gemma4ForCausalLM"],
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
    )

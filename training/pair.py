"""The demo pair's shapes and its compact on-disk format (what ships in ``assets/demo_pair/``).

A trained pair is three files:

* ``target.safetensors``: the target's weights under transformers' names, except the 262,144-row
  embedding: only its non-zero rows are stored (``embed_rows``, ids in ``keep_ids``), the rest are zero
  by construction (``training.target``), so the full table is rebuilt exactly;
* ``drafter.safetensors``: the drafter's weights under vLLM's names plus ``mask_embedding``;
* ``pair.json``: the specs, the seed and training settings, losses and measured acceptance.

``tools/demo_pair.py`` turns them into the model directories vLLM loads.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.specs import REAL_LAYER_PATTERN, DrafterSpec, TargetSpec

TARGET_FILE, DRAFTER_FILE, META_FILE = "target.safetensors", "drafter.safetensors", "pair.json"
EMBED_KEY = "model.embed_tokens.weight"

# Same config family and KV geometry as the random tiny target (tools/tiny_models.py): the real model's
# 5:1 sliding/full pattern twice, so that its two full layers make KV groups of two layers (a drafter may
# have at most that many: "All drafting layers should belong to the same kv cache group"); wider MLPs so
# it can learn GSM8K's answer format; hidden stays 64 because the 262k-row LM head is what a CPU pays per
# token.
DEMO_TARGET = TargetSpec(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=12,
    layer_types=REAL_LAYER_PATTERN * 2,
    num_experts=4,
    top_k_experts=2,
    moe_intermediate_size=128,
    seed=0,
)
# Uniform full attention (vLLM's CPU runner refuses mixed drafters); context from a shallow, a middle
# and a deep target layer, spread from 1 to n-3 as z-lab's drafters spread theirs. Trained z-lab's way:
# the target's embeddings times its normalizer sqrt(hidden) (8.0), draft logits soft-capped at the
# target's 30.0, both declared in its ``dflash_config`` (vllm_plugins/ makes vLLM run it so).
DEMO_DRAFTER = DrafterSpec(
    hidden_size=64,
    intermediate_size=1024,
    num_hidden_layers=2,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=32,
    block_size=16,
    target_layer_ids=(1, 5, 9),
    input_embedding_scale=DEMO_TARGET.hidden_size**0.5,
    final_logit_softcapping=DEMO_TARGET.final_logit_softcapping,
    seed=1,
)


def save_target(model: nn.Module, keep_ids: torch.Tensor, out: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    embed = state.pop(EMBED_KEY)
    state["embed_rows"] = embed[keep_ids].contiguous()
    state["keep_ids"] = keep_ids.long().cpu()
    save_file(state, str(out / TARGET_FILE))


def load_target_state(path: Path, vocab_size: int) -> dict[str, torch.Tensor]:
    """Transformers state dict of the target (full embedding rebuilt, LM head tied to it)."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    rows, ids = state.pop("embed_rows"), state.pop("keep_ids")
    embed = torch.zeros(vocab_size, rows.shape[1], dtype=rows.dtype)
    embed[ids] = rows
    state[EMBED_KEY] = embed
    return state


def save_drafter(tensors: dict[str, torch.Tensor], mask_embedding: torch.Tensor, out: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors | {"mask_embedding": mask_embedding.detach().float().cpu()}, str(out / DRAFTER_FILE))


def write_meta(out: Path, meta: dict[str, Any]) -> None:
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def spec_meta(target: TargetSpec, drafter: DrafterSpec) -> dict[str, Any]:
    return {"target_spec": asdict(target), "drafter_spec": asdict(drafter)}


def read_specs(meta: dict[str, Any]) -> tuple[TargetSpec, DrafterSpec]:
    """The specs stored in ``pair.json`` (JSON lists back to the tuples the dataclasses hold)."""

    def tuples(d: dict[str, Any]) -> dict[str, Any]:
        return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}

    return TargetSpec(**tuples(meta["target_spec"])), DrafterSpec(**tuples(meta["drafter_spec"]))

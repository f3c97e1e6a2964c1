"""Build the tiny Gemma-4 MoE target and its tiny DFlash drafter (random weights, real files).

The real pair (google/gemma-4-26B-A4B-it + z-lab/gemma-4-26B-A4B-it-DFlash) cannot be fetched here,
so tests and the local config serve a pair of the same families, small enough that a vLLM engine
starts in well under a minute on two CPU cores:

* target: ``Gemma4ForConditionalGeneration``, the production class (``training/gemma4_layout.py``: a text
  model with sliding + full attention layers in the real model's KV geometry and the MoE block, a
  one-layer vision tower, the real processor config), the real Gemma-4 tokenizer (vocab 262,144) and
  chat template, so thinking mode, image inputs, the Gemma-4 reasoning and tool parsers and the
  262k-row embedding behave as with the real model;
* drafter: ``DFlashDraftModel`` (Qwen3-style layers, ``dflash_config`` with ``target_layer_ids`` and
  ``mask_token_id``), uniform full-attention layers because vLLM's CPU runner refuses drafters that
  mix sliding and full layers; it shares the target's embedding and LM head as the real one does.

Special, unused and byte-fallback token rows of the (tied) embedding are zeroed: their logits are
then 0, never the greedy maximum, so random weights never emit tokens that vLLM's streaming and
non-streaming paths render differently.

Builds are deterministic from a seed and cached: a directory is rebuilt only when the spec that
produced it (hashed into ``spec.sha256``) changes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from training import gemma4_layout
from training.gemma4_layout import (
    TOKENIZER_DIR,
    load_tokenizer,
    multimodal_config,
    multimodal_token_ids,
    save_processor,
    save_tokenizer,
)
from training.specs import DrafterSpec, TargetSpec, target_config

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / ".cache" / "models"
SPEC_FILE = "spec.sha256"


@dataclass(frozen=True)
class PairSpec:
    target: TargetSpec = field(default_factory=TargetSpec)
    drafter: DrafterSpec = field(default_factory=DrafterSpec)
    version: int = 2  # bump when the build procedure changes in a way the specs don't show

    def digest(self) -> str:
        tokenizer_digest = hashlib.sha256((TOKENIZER_DIR / "tokenizer.model").read_bytes()).hexdigest()
        template_digest = hashlib.sha256((TOKENIZER_DIR / "chat_template.jinja").read_bytes()).hexdigest()
        layout_digest = hashlib.sha256(Path(gemma4_layout.__file__).read_bytes()).hexdigest()
        blob = json.dumps([asdict(self), tokenizer_digest, template_digest, layout_digest], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


def _silent_token_ids(tokenizer) -> list[int]:  # noqa: ANN001 - a transformers tokenizer
    """Ids whose embedding rows are zeroed: special/unused/multimodal tokens and byte fallbacks."""
    ids = set(tokenizer.all_special_ids) | set(multimodal_token_ids(tokenizer).values())
    ids.update(
        i
        for i, tok in enumerate(tokenizer.convert_ids_to_tokens(range(len(tokenizer))))
        if tok.startswith("<0x") and tok.endswith(">")
    )
    return sorted(ids)


def new_multimodal_target(spec: TargetSpec, tokenizer):  # noqa: ANN001, ANN201 - a transformers model
    """A randomly initialised ``Gemma4ForConditionalGeneration`` of this spec (seeded), silent rows zeroed."""
    import torch
    from transformers import Gemma4ForConditionalGeneration

    torch.manual_seed(spec.seed)
    text = target_config(spec, len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    model = Gemma4ForConditionalGeneration(multimodal_config(text, tokenizer))
    with torch.no_grad():
        model.get_input_embeddings().weight[_silent_token_ids(tokenizer)] = 0.0
    return model


def save_target(model, out: Path, tokenizer) -> None:  # noqa: ANN001 - a transformers model and tokenizer
    """The target directory vLLM loads: weights, config, tokenizer and processor in the real layout."""
    model.save_pretrained(out, safe_serialization=True)
    save_tokenizer(tokenizer, out)
    save_processor(out)


def drafter_config(spec: DrafterSpec, target: TargetSpec, vocab_size: int, draft_vocab_size: int | None = None) -> dict:
    """``config.json`` of a DFlash drafter in the layout vLLM's ``qwen3_dflash.py`` loads.

    ``draft_vocab_size`` set means the drafter has its own, smaller LM head over those target ids
    (``d2t`` in its weights, as EAGLE-3 drafters do); unset, it shares the target's LM head.
    """
    config = {
        "architectures": ["DFlashDraftModel"],
        "model_type": "qwen3",
        "vocab_size": vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "max_position_embeddings": target.max_position_embeddings,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "layer_types": ["full_attention"] * spec.num_hidden_layers,
        "block_size": spec.block_size,
        "num_target_layers": target.num_hidden_layers,
        "target_hidden_size": target.hidden_size,
        "dflash_config": {
            "target_layer_ids": list(spec.target_layer_ids),
            "mask_token_id": spec.mask_token_id,
        },
        "torch_dtype": "float32",
    }
    for key in ("input_embedding_scale", "final_logit_softcapping"):
        if (value := getattr(spec, key)) is not None:
            config["dflash_config"][key] = value
    if draft_vocab_size is not None:
        config["draft_vocab_size"] = draft_vocab_size
    return config


def build_drafter(spec: DrafterSpec, target: TargetSpec, out: Path, tokenizer) -> None:  # noqa: ANN001
    """Write a DFlash drafter in the layout vLLM's ``qwen3_dflash.py`` loads (no embed/LM head)."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(spec.seed)
    h, hd = spec.hidden_size, spec.head_dim
    q_out, kv_out = spec.num_attention_heads * hd, spec.num_key_value_heads * hd

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * 0.02

    tensors: dict[str, torch.Tensor] = {
        "fc.weight": rand(h, len(spec.target_layer_ids) * target.hidden_size),
        "hidden_norm.weight": torch.ones(h),
        "norm.weight": torch.ones(h),
    }
    for i in range(spec.num_hidden_layers):
        p = f"layers.{i}."
        tensors |= {
            p + "self_attn.q_proj.weight": rand(q_out, h),
            p + "self_attn.k_proj.weight": rand(kv_out, h),
            p + "self_attn.v_proj.weight": rand(kv_out, h),
            p + "self_attn.o_proj.weight": rand(h, q_out),
            p + "self_attn.q_norm.weight": torch.ones(hd),
            p + "self_attn.k_norm.weight": torch.ones(hd),
            p + "mlp.gate_proj.weight": rand(spec.intermediate_size, h),
            p + "mlp.up_proj.weight": rand(spec.intermediate_size, h),
            p + "mlp.down_proj.weight": rand(h, spec.intermediate_size),
            p + "input_layernorm.weight": torch.ones(h),
            p + "post_attention_layernorm.weight": torch.ones(h),
        }
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"))
    config = drafter_config(spec, target, len(tokenizer))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    save_tokenizer(tokenizer, out)


def ensure_models(out: Path = DEFAULT_OUT, spec: PairSpec | None = None, force: bool = False) -> tuple[Path, Path]:
    """Return (target_dir, drafter_dir), building them only when missing or out of date."""
    spec = spec or PairSpec()
    digest = spec.digest()
    target_dir, drafter_dir = out / "tiny-gemma4-target", out / "tiny-gemma4-dflash"
    stamp = out / SPEC_FILE
    if not force and stamp.exists() and stamp.read_text().strip() == digest:
        logger.info("tiny models up to date in %s", out)
        return target_dir, drafter_dir

    logger.info("building tiny models in %s (spec %s)", out, digest[:12])
    stamp.unlink(missing_ok=True)
    for d in (target_dir, drafter_dir):
        shutil.rmtree(d, ignore_errors=True)
    tokenizer = load_tokenizer()
    save_target(new_multimodal_target(spec.target, tokenizer), target_dir, tokenizer)
    build_drafter(spec.drafter, spec.target, drafter_dir, tokenizer)
    stamp.write_text(digest + "\n")
    return target_dir, drafter_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    target, drafter = ensure_models(args.out, force=args.force)
    print(f"target:  {target}\ndrafter: {drafter}")


if __name__ == "__main__":
    main()

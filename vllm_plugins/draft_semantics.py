"""Which draft-path semantics a DFlash drafter was trained with, resolved from its config and its target's.

z-lab's reference drafter (github z-lab/dflash, ``dflash/model.py``) embeds the block with the target's
raw embedding table times ``input_embedding_scale`` and turns its hidden states into logits with the
target's LM head, times ``output_multiplier``, then soft-caps them ``tanh(x / cap) * cap`` with
``final_logit_softcapping``; each value is read from the drafter's ``dflash_config`` first, then from its
top-level config. z-lab's Gemma-4 drafters were trained on the Gemma target's own embeddings, which
Gemma scales by ``sqrt(hidden_size)`` in the model dtype, and against its soft-capped logits (30.0).
vLLM 0.32's ``DFlashQwen3Model`` feeds the drafter the shared embedding table unscaled and caps nothing
(PR #41703's first item, unmerged): for a Gemma-4 target the residual stream starts ~53x too small.

Pure: plain values in, a :class:`DraftSemantics` out; ``vllm_plugins.zlab_dflash`` applies it inside
vLLM, and the tests check the same resolution without an engine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

DraftSemanticsMode = Literal["auto", "zlab", "vllm"]
# Where the serving stack puts the mode for the engine's processes: vLLM's --additional-config, which
# every process vLLM starts receives with the VllmConfig.
ADDITIONAL_CONFIG_KEY = "dflash_serve"


@dataclass(frozen=True)
class DraftSemantics:
    """What the draft path multiplies and caps; the identity (1, 1, None) is stock vLLM's forward."""

    input_embedding_scale: float = 1.0
    output_multiplier: float = 1.0
    final_logit_softcapping: float | None = None

    @property
    def is_identity(self) -> bool:
        return self.input_embedding_scale == 1.0 and self.output_multiplier == 1.0 and not self.final_logit_softcapping


STOCK = DraftSemantics()


def _draft_value(drafter: Mapping[str, Any], name: str) -> Any:
    """z-lab's lookup order: the drafter's ``dflash_config``, then its top-level config."""
    dflash = drafter.get("dflash_config") or {}
    return dflash[name] if name in dflash else drafter.get(name)


def is_gemma(target_text: Mapping[str, Any]) -> bool:
    return str(target_text.get("model_type", "")).startswith("gemma")


def gemma_normalizer(hidden_size: int, round_to_dtype: Any = None) -> float:
    """Gemma's embedding normalizer ``sqrt(hidden_size)``, rounded as the model dtype holds it.

    ``round_to_dtype`` is a callable that rounds a float through the model dtype (vLLM's Gemma-4 keeps
    the normalizer as a tensor of that dtype: 53.07 becomes 53.0 in bfloat16); None keeps float64.
    """
    value = math.sqrt(hidden_size)
    return value if round_to_dtype is None else float(round_to_dtype(value))


def resolve(
    mode: DraftSemanticsMode,
    drafter: Mapping[str, Any],
    target_text: Mapping[str, Any],
    round_to_dtype: Any = None,
) -> DraftSemantics:
    """The semantics the drafter was trained with (``auto``/``zlab``) or stock vLLM's (``vllm``).

    Args:
        mode: the config's ``speculative.draft_semantics``.
        drafter: the drafter's config (``config.json`` as a dict).
        target_text: the target's text config (for a multimodal target, its ``text_config``).
        round_to_dtype: rounds a float through the model dtype (see :func:`gemma_normalizer`).
    """
    if mode == "vllm":
        return STOCK
    scale = _draft_value(drafter, "input_embedding_scale")
    if scale is None and is_gemma(target_text):
        scale = gemma_normalizer(int(target_text["hidden_size"]), round_to_dtype)
    multiplier = _draft_value(drafter, "output_multiplier")
    cap = _draft_value(drafter, "final_logit_softcapping")
    if cap is None:
        cap = target_text.get("final_logit_softcapping")
    return DraftSemantics(
        input_embedding_scale=1.0 if scale is None else float(scale),
        output_multiplier=1.0 if multiplier is None else float(multiplier),
        final_logit_softcapping=float(cap) if cap else None,
    )


def mode_from_additional_config(additional_config: Any) -> DraftSemanticsMode:
    """The mode the serving stack passed through ``--additional-config`` (``auto`` when absent)."""
    section = additional_config.get(ADDITIONAL_CONFIG_KEY, {}) if isinstance(additional_config, Mapping) else {}
    mode = section.get("draft_semantics", "auto")
    if mode not in ("auto", "zlab", "vllm"):
        raise ValueError(f"--additional-config {ADDITIONAL_CONFIG_KEY}.draft_semantics must be auto, zlab or vllm")
    return mode

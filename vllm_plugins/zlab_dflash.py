"""vLLM's DFlash drafter with z-lab's draft semantics (``draft_semantics.resolve``), as a registered subclass.

The drafter architecture ``DFlashDraftModel`` is re-registered in vLLM's ``ModelRegistry`` to
:class:`ZLabDFlashQwen3ForCausalLM` (``vllm_plugins.register``); vLLM's files are not touched.
Two overrides, each a no-op when the resolved value is the identity:

* ``ZLabDFlashQwen3Model.embed_input_ids``: vLLM's embedding of the block (shared target table, the
  optional ``mask_embedding.pt`` swapped in for mask slots) times ``input_embedding_scale``: the mask
  slots are scaled too, as z-lab scales the mask token's row;
* the logits processor: vLLM's draft logits times ``output_multiplier``, then ``tanh(x / cap) * cap``,
  before the ``d2t`` scatter to the target vocabulary (so ids outside the draft vocabulary stay -inf).

It steps aside (logs once, changes nothing) when the running vLLM already applies a value: the
embedding scale is probed on vLLM's own ``embed_input_ids`` at construction, the soft cap read from
its logits processor. If vLLM's classes no longer look as this code expects, construction fails with
a message that says what changed and how to serve anyway (``speculative.draft_semantics: vllm``).
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any

import torch
from torch import nn
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.models.qwen3_dflash import DFlashQwen3ForCausalLM, DFlashQwen3Model

from vllm_plugins.draft_semantics import DraftSemantics, mode_from_additional_config, resolve

# Under vLLM's logger, so its handlers print these lines in every engine process (INFO, as vLLM logs).
logger = logging.getLogger(f"vllm.{__name__}")


@functools.cache
def _log_once(message: str) -> None:
    logger.info(message)


class DraftLayoutChanged(RuntimeError):
    """vLLM's DFlash classes changed under the plugin: refuse rather than run a half-applied forward."""

    def __init__(self, what: str) -> None:
        import vllm

        super().__init__(
            f"dflash-serve's z-lab draft semantics cannot be applied to vLLM {vllm.__version__}: {what}. "
            "The plugin was written against vllm==0.32.0 (qwen3_dflash.py). Pin that version, or set "
            "speculative.draft_semantics: vllm to serve with vLLM's own draft forward."
        )


def semantics_for(vllm_config: Any) -> DraftSemantics:
    """The drafter's semantics from the engine's configs (the mode from ``--additional-config``)."""
    draft_hf = vllm_config.speculative_config.draft_model_config.hf_config
    target_text = vllm_config.model_config.hf_config.get_text_config()
    dtype = vllm_config.model_config.dtype
    return resolve(
        mode_from_additional_config(vllm_config.additional_config),
        draft_hf.to_dict(),
        target_text.to_dict(),
        round_to_dtype=lambda x: torch.tensor(x, dtype=dtype).item(),
    )


def _applied_embedding_scale(model: DFlashQwen3Model) -> float:
    """What vLLM's own ``embed_input_ids`` multiplies a table row by (a row set to ones, then restored)."""
    weight = model.embed_tokens.weight
    probe = 1 if model.mask_token_id == 0 else 0
    saved = weight.data[probe].clone()
    try:
        weight.data[probe] = 1.0
        out = DFlashQwen3Model.embed_input_ids(model, torch.tensor([probe], device=weight.device))
    finally:
        weight.data[probe] = saved
    return float(out.float().mean())


class ZLabDFlashQwen3Model(DFlashQwen3Model):
    """vLLM's drafter body with the block's input embeddings scaled as z-lab's reference scales them."""

    def __init__(self, *, vllm_config: Any, start_layer_id: int = 0, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, start_layer_id=start_layer_id, prefix=prefix)
        for name in ("embed_tokens", "mask_token_id"):
            if not hasattr(self, name):
                raise DraftLayoutChanged(f"DFlashQwen3Model has no attribute {name!r}")
        wanted = semantics_for(vllm_config).input_embedding_scale
        self.input_embedding_scale = 1.0
        if wanted == 1.0:
            return
        applied = _applied_embedding_scale(self)
        if math.isclose(applied, 1.0, rel_tol=1e-3):
            self.input_embedding_scale = wanted
            _log_once(f"DFlash drafter: input embeddings x {wanted:g} (z-lab's input_embedding_scale)")
        elif math.isclose(applied, wanted, rel_tol=1e-2):
            _log_once(f"DFlash drafter: vLLM already scales the input embeddings by {applied:g}; plugin steps aside")
        else:
            raise DraftLayoutChanged(f"its draft embedding multiplies by {applied:g}, expected 1 or {wanted:g}")

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = super().embed_input_ids(input_ids)
        return embeds if self.input_embedding_scale == 1.0 else embeds * self.input_embedding_scale


class ZLabDraftLogits(nn.Module):
    """vLLM's logits processor, then z-lab's ``compute_logits``: times the multiplier, then the soft cap."""

    def __init__(self, inner: LogitsProcessor, multiplier: float, softcap: float | None) -> None:
        super().__init__()
        self.inner, self.multiplier, self.softcap = inner, multiplier, softcap

    def forward(self, lm_head: nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        logits = self.inner(lm_head, hidden_states, *args, **kwargs)
        if logits is None:  # a tensor-parallel rank that does not gather
            return None
        if self.multiplier != 1.0:
            logits = logits * self.multiplier
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


class ZLabDFlashQwen3ForCausalLM(DFlashQwen3ForCausalLM):
    """``DFlashDraftModel`` as vLLM runs it, with z-lab's embedding scale and logit soft cap."""

    model_cls = ZLabDFlashQwen3Model

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        inner = getattr(self, "logits_processor", None)
        if not isinstance(inner, LogitsProcessor) or not hasattr(inner, "soft_cap"):
            raise DraftLayoutChanged("DFlashQwen3ForCausalLM.logits_processor is not a LogitsProcessor with soft_cap")
        if not isinstance(self.model, ZLabDFlashQwen3Model):
            raise DraftLayoutChanged("DFlashQwen3ForCausalLM no longer builds its body from model_cls")
        semantics = semantics_for(vllm_config)
        cap = semantics.final_logit_softcapping
        if cap and inner.soft_cap:
            if not math.isclose(inner.soft_cap, cap):
                raise DraftLayoutChanged(f"its draft logits are soft-capped at {inner.soft_cap:g}, expected {cap:g}")
            _log_once(f"DFlash drafter: vLLM already soft-caps the draft logits at {cap:g}; plugin steps aside")
            cap = None
        if semantics.output_multiplier != 1.0 or cap:
            self.logits_processor = ZLabDraftLogits(inner, semantics.output_multiplier, cap)
            _log_once(f"DFlash drafter: draft logits x {semantics.output_multiplier:g}, soft cap {cap}")
        if semantics.is_identity:
            _log_once("DFlash drafter: stock vLLM draft semantics (nothing to scale or cap)")

"""The draft semantics the plugin applies, resolved from plain configs (no engine)."""

from __future__ import annotations

import math

import pytest
import torch

from vllm_plugins.draft_semantics import STOCK, DraftSemantics, mode_from_additional_config, resolve

GEMMA4_26B_TEXT = {"model_type": "gemma4_text", "hidden_size": 2816, "final_logit_softcapping": 30.0}
QWEN3_TEXT = {"model_type": "qwen3", "hidden_size": 4096}
ZLAB_GEMMA_DRAFTER = {"dflash_config": {"target_layer_ids": [1, 6, 11, 17, 22, 27], "mask_token_id": 4}}


def _bf16(x: float) -> float:
    return torch.tensor(x, dtype=torch.bfloat16).item()


def test_gemma_target_gets_its_normalizer_and_soft_cap():
    s = resolve("auto", ZLAB_GEMMA_DRAFTER, GEMMA4_26B_TEXT)
    assert math.isclose(s.input_embedding_scale, 53.0660, rel_tol=1e-5)  # sqrt(2816)
    assert s.final_logit_softcapping == 30.0 and s.output_multiplier == 1.0


def test_normalizer_in_the_model_dtype_as_gemma_keeps_it():
    s = resolve("auto", ZLAB_GEMMA_DRAFTER, GEMMA4_26B_TEXT, round_to_dtype=_bf16)
    assert s.input_embedding_scale == 53.0  # bfloat16 holds sqrt(2816) = 53.07 as 53.0


def test_drafter_config_wins_dflash_config_first():
    drafter = {
        "input_embedding_scale": 2.0,
        "dflash_config": {"input_embedding_scale": 8.0, "output_multiplier": 0.5, "final_logit_softcapping": 15.0},
    }
    assert resolve("zlab", drafter, GEMMA4_26B_TEXT) == DraftSemantics(8.0, 0.5, 15.0)
    top_level_only = {"input_embedding_scale": 2.0, "dflash_config": {}}
    assert resolve("zlab", top_level_only, QWEN3_TEXT) == DraftSemantics(2.0, 1.0, None)


def test_non_gemma_target_without_declared_values_is_stock():
    assert resolve("auto", {"dflash_config": {}}, QWEN3_TEXT) == STOCK
    assert resolve("auto", {"dflash_config": {}}, QWEN3_TEXT).is_identity


def test_vllm_mode_is_stock_whatever_the_configs_say():
    assert resolve("vllm", {"dflash_config": {"input_embedding_scale": 8.0}}, GEMMA4_26B_TEXT) == STOCK


def test_mode_travels_in_vllms_additional_config():
    assert mode_from_additional_config({}) == "auto"
    assert mode_from_additional_config({"dflash_serve": {"draft_semantics": "vllm"}}) == "vllm"
    with pytest.raises(ValueError, match="auto, zlab or vllm"):
        mode_from_additional_config({"dflash_serve": {"draft_semantics": "both"}})

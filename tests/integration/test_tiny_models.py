"""The tiny pair is the families vLLM serves for Gemma-4 + DFlash, built deterministically and cached."""

from __future__ import annotations

import json

from tools.tiny_models import SPEC_FILE, PairSpec, ensure_models


def test_pair_configs():
    target, drafter = ensure_models()
    mm = json.loads((target / "config.json").read_text())
    d = json.loads((drafter / "config.json").read_text())
    assert mm["architectures"] == ["Gemma4ForConditionalGeneration"]  # the production class
    assert mm["vision_config"]["model_type"] == "gemma4_vision"
    assert (mm["boi_token_id"], mm["image_token_id"], mm["eoi_token_id"]) == (255999, 258880, 258882)
    t = mm["text_config"]
    assert t["enable_moe_block"] is True
    assert t["layer_types"] == ["sliding_attention"] * 5 + ["full_attention"]  # the real 5:1 pattern
    assert t["attention_k_eq_v"] is True and t["final_logit_softcapping"] == 30.0
    assert t["vocab_size"] == 262144  # the real Gemma-4 tokenizer
    assert d["architectures"] == ["DFlashDraftModel"]
    assert d["dflash_config"]["mask_token_id"] == 4
    assert max(d["dflash_config"]["target_layer_ids"]) < t["num_hidden_layers"]
    assert len(set(d["layer_types"])) == 1  # uniform: vLLM's CPU runner refuses mixed drafters
    assert (target / "chat_template.jinja").exists() and (target / "tokenizer.json").exists()
    assert (target / "processor_config.json").exists()


def test_processor_renders_an_image_chat():
    """The real Gemma4Processor loads from the target (torchvision or not) and expands an image into soft tokens."""
    from PIL import Image
    from transformers import AutoProcessor

    from training.gemma4_layout import IMAGE_SOFT_TOKENS
    from vllm_plugins import gemma4_processor

    gemma4_processor.install()  # what the vLLM plugin does in every engine process
    target, _ = ensure_models()
    processor = AutoProcessor.from_pretrained(target)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=text, images=[Image.new("RGB", (48, 32), (200, 30, 30))], return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    assert 0 < ids.count(processor.image_token_id) <= IMAGE_SOFT_TOKENS  # 60 for this aspect ratio
    assert len(processor.tokenizer) == 262144  # <|video|> named in the vocabulary, not appended


def test_drafter_weights_match_vllm_names():
    from safetensors import safe_open

    _, drafter = ensure_models()
    with safe_open(str(drafter / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        fc = f.get_tensor("fc.weight")
    d = json.loads((drafter / "config.json").read_text())
    assert {"fc.weight", "hidden_norm.weight", "norm.weight", "layers.0.self_attn.q_proj.weight"} <= names
    assert not any("embed_tokens" in n or "lm_head" in n for n in names)  # shared with the target
    assert tuple(fc.shape) == (d["hidden_size"], len(d["dflash_config"]["target_layer_ids"]) * d["target_hidden_size"])


def test_special_tokens_never_win_greedy():
    """Zeroed embedding rows (tied LM head) give special tokens logit 0, below random top logits."""
    from safetensors import safe_open
    from transformers import AutoTokenizer

    target, _ = ensure_models()
    tok = AutoTokenizer.from_pretrained(target)
    with safe_open(str(target / "model.safetensors"), "pt") as f:
        key = next(k for k in f.keys() if k.endswith("embed_tokens.weight"))
        emb = f.get_tensor(key)
    for tid in (tok.eos_token_id, tok.convert_tokens_to_ids("<|channel>"), tok.convert_tokens_to_ids("<unused417>")):
        assert float(emb[tid].abs().sum()) == 0.0
    assert float(emb[tok.convert_tokens_to_ids("Hello")].abs().sum()) > 0


def test_cached_until_spec_changes(tmp_path):
    target, _ = ensure_models(tmp_path)
    stamp = tmp_path / SPEC_FILE
    mtime = (target / "model.safetensors").stat().st_mtime_ns
    ensure_models(tmp_path)  # same spec: nothing rebuilt
    assert (target / "model.safetensors").stat().st_mtime_ns == mtime
    changed = PairSpec(version=PairSpec().version + 1)
    ensure_models(tmp_path, changed)
    assert stamp.read_text().strip() == changed.digest()
    assert (target / "model.safetensors").stat().st_mtime_ns != mtime

"""The shipped demo pair: small in git, rebuilt exactly, and its target answers in GSM8K's shape."""

from __future__ import annotations

import json

import torch

from tools.demo_pair import DEMO_ASSETS, ensure_demo_pair
from training.corpus import prompt_ids
from training.gemma4_layout import text_to_multimodal_keys
from training.pair import META_FILE, TARGET_FILE, load_target_state
from training.target import VOCAB_SIZE


def test_assets_are_small():
    sizes = {p.name: p.stat().st_size for p in DEMO_ASSETS.iterdir()}
    assert sum(sizes.values()) < 40 * 2**20, sizes


def test_rebuilt_target_is_the_trained_one():
    from safetensors.torch import load_file

    target, drafter = ensure_demo_pair()
    shipped = text_to_multimodal_keys(load_target_state(DEMO_ASSETS / TARGET_FILE, VOCAB_SIZE))
    rebuilt = load_file(str(target / "model.safetensors"))
    assert set(shipped) <= set(rebuilt)  # the rest is the (untrained) vision tower
    assert all(k.startswith(("model.vision_tower.", "model.embed_vision.")) for k in set(rebuilt) - set(shipped))
    for name, tensor in shipped.items():
        assert torch.equal(rebuilt[name], tensor), name
    hidden = json.loads((target / "config.json").read_text())["text_config"]["hidden_size"]
    assert shipped["model.language_model.embed_tokens.weight"].shape == (VOCAB_SIZE, hidden)
    config = json.loads((drafter / "config.json").read_text())
    meta = json.loads((DEMO_ASSETS / META_FILE).read_text())
    assert config["dflash_config"]["target_layer_ids"] == meta["drafter_spec"]["target_layer_ids"]


def test_target_answers_like_gsm8k():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target, _ = ensure_demo_pair()
    tokenizer = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    question = "Mia buys 4 packs of 6 stickers and gives 5 stickers to her brother. How many stickers does she have?"
    ids = torch.tensor([prompt_ids(tokenizer, question)])
    out = model.generate(ids, max_new_tokens=160, do_sample=False)[0, ids.shape[1] :]
    answer = tokenizer.decode(out, skip_special_tokens=True)
    assert "<<" in answer and "\n#### " in answer, answer  # calculator annotations and the final-answer line

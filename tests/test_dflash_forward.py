"""The drafter's training forward (``training/dflash.py``) is the one vLLM runs.

The demo pair is served by a real vLLM engine on CPU; its first draft after the prefill is captured
(``tests/vllm_draft_capture.py``) and recomputed with the training code from the same weights: the
target's aux hidden states (HF ``Gemma4ForCausalLM`` layer outputs vs vLLM's) and the 15 draft logit
rows must agree within float32 tolerance, and their argmax exactly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tools.demo_pair import ensure_demo_pair
from training.corpus import load_tokenizer, prompt_ids
from training.dflash import MASK_EMBEDDING_FILE, DFlashDrafter, block_inputs, block_mask
from training.pair import META_FILE, read_specs
from training.target import VOCAB_SIZE, layer_outputs

CAPTURE = Path(__file__).with_name("vllm_draft_capture.py")
QUESTION = "Tom has 3 boxes of 12 pencils and gives away 7 pencils. How many pencils does he have left?"


@pytest.fixture(scope="module")
def pair() -> tuple[Path, Path]:
    return ensure_demo_pair()


@pytest.fixture(scope="module")
def prompt() -> list[int]:
    return prompt_ids(load_tokenizer(), QUESTION)


@pytest.fixture(scope="module")
def vllm_draft(pair, prompt, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("capture") / "draft.pt"
    target, drafter = pair
    subprocess.run(
        [sys.executable, str(CAPTURE), str(target), str(drafter), json.dumps(prompt), str(out)], check=True, timeout=240
    )
    return torch.load(out)


def _training_models(pair):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    target_dir, drafter_dir = pair
    target = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32).eval()
    meta = json.loads((Path("assets/demo_pair") / META_FILE).read_text())
    target_spec, drafter_spec = read_specs(meta)
    tensors = load_file(str(drafter_dir / "model.safetensors"))
    mask = torch.load(drafter_dir / MASK_EMBEDDING_FILE)["embedding"]
    drafter = DFlashDrafter(drafter_spec, target_spec, torch.zeros(len(tensors["d2t"]), dtype=torch.long))
    drafter.load_vllm_tensors(tensors, mask)
    return target, drafter.eval()


def test_draft_logits_match_vllm(pair, prompt, vllm_draft):
    target, drafter = _training_models(pair)
    spec = drafter.spec
    ids = torch.tensor(prompt)
    query_ids, query_positions = vllm_draft["forward"]
    n = len(prompt)
    # vLLM's context: every prompt position, the first block: [sampled token, masks] right after it.
    assert torch.equal(vllm_draft["precompute_and_store_context_kv"].long(), torch.arange(n))
    assert torch.equal(query_positions.long(), torch.arange(n, n + spec.block_size))
    assert (query_ids[1:] == spec.mask_token_id).all()

    with torch.no_grad():
        aux = layer_outputs(target, ids[None], spec.target_layer_ids)
        torch.testing.assert_close(aux[0], vllm_draft["combine_hidden_states"], rtol=1e-4, atol=1e-4)

        tokens = torch.cat([ids, query_ids[:1].long()])[None]
        anchors = torch.tensor([[n]])
        embeds, positions = block_inputs(
            tokens, anchors, spec.block_size, target.get_input_embeddings().weight, drafter.mask_embedding
        )
        hidden = drafter(aux, torch.arange(n)[None], embeds, positions, block_mask(anchors, n, spec.block_size))
        logits = drafter.full_logits(hidden[0, 1:], VOCAB_SIZE)

    ref = vllm_draft["compute_logits"]
    finite = torch.isfinite(ref)
    assert torch.equal(finite, torch.isfinite(logits))  # same draft vocabulary (d2t)
    torch.testing.assert_close(logits[finite], ref[finite], rtol=1e-3, atol=1e-3)
    assert torch.equal(logits.argmax(-1), ref.argmax(-1))

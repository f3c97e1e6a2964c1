"""The drafter vLLM runs (with this package's plugin) is z-lab's reference forward; stock vLLM's is not.

The demo pair's drafter was trained z-lab's way (``training/dflash.py``: the target's embeddings times
its normalizer, soft-capped logits). It is served by a real vLLM engine on CPU; its first draft after
the prefill is captured (``tests/integration/vllm_draft_capture.py``) under ``draft_semantics`` auto (the plugin) and
vllm (stock), and recomputed with the training code from the same weights. With the plugin, the target's
aux hidden states (HF layer outputs vs vLLM's) and the 15 draft logit rows agree within 1e-3 and their
argmax exactly; stock vLLM's logits differ.
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


def _capture(pair, prompt, out: Path, semantics: str) -> dict:
    target, drafter = pair
    subprocess.run(
        [sys.executable, str(CAPTURE), str(target), str(drafter), json.dumps(prompt), str(out), semantics],
        check=True,
        timeout=300,
    )
    return torch.load(out)


@pytest.fixture(scope="module")
def vllm_drafts(pair, prompt, tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("capture")
    return {s: _capture(pair, prompt, out / f"{s}.pt", s) for s in ("auto", "vllm")}


@pytest.fixture(scope="module")
def reference(pair, prompt, vllm_drafts) -> tuple[torch.Tensor, torch.Tensor]:
    """(aux hidden states, draft logits) of the first block, from the training code (z-lab's semantics)."""
    from safetensors.torch import load_file
    from transformers import Gemma4ForConditionalGeneration

    target_dir, drafter_dir = pair
    target = Gemma4ForConditionalGeneration.from_pretrained(target_dir, dtype=torch.float32).eval()
    target_spec, spec = read_specs(json.loads((Path("assets/demo_pair") / META_FILE).read_text()))
    assert spec.input_embedding_scale == target_spec.hidden_size**0.5 and spec.final_logit_softcapping == 30.0
    tensors = load_file(str(drafter_dir / "model.safetensors"))
    mask = torch.load(drafter_dir / MASK_EMBEDDING_FILE)["embedding"]
    drafter = DFlashDrafter(spec, target_spec, torch.zeros(len(tensors["d2t"]), dtype=torch.long))
    drafter.load_vllm_tensors(tensors, mask)
    drafter.eval()

    ids, n = torch.tensor(prompt), len(prompt)
    query_ids = vllm_drafts["auto"]["forward"][0]
    with torch.no_grad():
        aux = layer_outputs(target, ids[None], spec.target_layer_ids)
        tokens = torch.cat([ids, query_ids[:1].long()])[None]
        anchors = torch.tensor([[n]])
        embeds, positions = block_inputs(
            tokens, anchors, spec.block_size, target.get_input_embeddings().weight, drafter.mask_embedding,
            drafter.embedding_scale,
        )  # fmt: skip
        hidden = drafter(aux, torch.arange(n)[None], embeds, positions, block_mask(anchors, n, spec.block_size))
        return aux[0], drafter.full_logits(hidden[0, 1:], VOCAB_SIZE)


def test_plugin_builds_the_drafter(vllm_drafts):
    assert {d["class"] for d in vllm_drafts.values()} == {"ZLabDFlashQwen3ForCausalLM"}


def test_draft_logits_match_zlab_reference(prompt, vllm_drafts, reference):
    aux, logits = reference
    draft = vllm_drafts["auto"]
    n = len(prompt)
    query_ids, query_positions = draft["forward"]
    # vLLM's context: every prompt position, the first block: [sampled token, masks] right after it.
    assert torch.equal(draft["precompute_and_store_context_kv"].long(), torch.arange(n))
    assert torch.equal(query_positions.long(), torch.arange(n, n + len(query_ids)))
    assert (query_ids[1:] == 4).all()
    torch.testing.assert_close(aux, draft["combine_hidden_states"], rtol=1e-4, atol=1e-4)

    ref = draft["compute_logits"]
    finite = torch.isfinite(ref)
    assert torch.equal(finite, torch.isfinite(logits))  # same draft vocabulary (d2t), -inf kept outside it
    torch.testing.assert_close(logits[finite], ref[finite], rtol=1e-3, atol=1e-3)
    assert torch.equal(logits.argmax(-1), ref.argmax(-1))


def test_stock_vllm_draft_logits_differ(vllm_drafts, reference):
    _aux, logits = reference
    stock = vllm_drafts["vllm"]["compute_logits"]
    finite = torch.isfinite(stock)
    diff = (logits[finite] - stock[finite]).abs().max().item()
    assert diff > 0.1, f"stock vLLM's draft logits equal z-lab's reference (max |diff| {diff})"

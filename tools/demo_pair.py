"""Rebuild the trained demo pair (``assets/demo_pair/``) as the model directories vLLM loads.

The repository ships the pair compactly (``training.pair``: the target's non-zero embedding rows
only, float32 weights); this writes ``.cache/models/demo-gemma4-target`` (a transformers
``Gemma4ForConditionalGeneration`` directory, the production class: the trained text model, a seeded
random one-layer vision tower, the real tokenizer, chat template and processor config, stopping at
``<turn|>`` as the real model does) and ``.cache/models/demo-gemma4-dflash`` (the drafter: weights under vLLM's names,
its own LM head over ``draft_vocab_size`` ids, and ``mask_embedding.pt``). Rebuilt only when the
assets change (their hash is kept in ``demo.sha256``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
from pathlib import Path

from tools import tiny_models
from tools.tiny_models import DEFAULT_OUT, REPO_ROOT, drafter_config, new_multimodal_target, save_target
from training import gemma4_layout
from training.gemma4_layout import TOKENIZER_DIR, load_tokenizer, save_tokenizer, text_to_multimodal_keys

logger = logging.getLogger(__name__)

DEMO_ASSETS = REPO_ROOT / "assets" / "demo_pair"
TARGET_NAME, DRAFTER_NAME = "demo-gemma4-target", "demo-gemma4-dflash"
STAMP_FILE = "demo.sha256"


def _digest(assets: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(assets.iterdir()):
        h.update(path.name.encode() + hashlib.sha256(path.read_bytes()).digest())
    layout = (Path(__file__), Path(tiny_models.__file__), Path(gemma4_layout.__file__))
    for path in (TOKENIZER_DIR / "tokenizer.model", TOKENIZER_DIR / "chat_template.jinja", *layout):
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def materialize(assets: Path, out: Path, tokenizer) -> tuple[Path, Path]:  # noqa: ANN001 - a transformers tokenizer
    """Write the target and drafter directories for the pair in ``assets``; returns their paths."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import GenerationConfig

    from training.dflash import MASK_EMBEDDING_FILE
    from training.pair import DRAFTER_FILE, META_FILE, TARGET_FILE, load_target_state, read_specs
    from training.target import STOP_IDS

    meta = json.loads((assets / META_FILE).read_text())
    target_spec, drafter_spec = read_specs(meta)
    vocab = len(tokenizer)
    target_dir, drafter_dir = out / TARGET_NAME, out / DRAFTER_NAME
    for d in (target_dir, drafter_dir):
        shutil.rmtree(d, ignore_errors=True)

    model = new_multimodal_target(target_spec, tokenizer)  # the vision tower keeps its seeded random weights
    text_state = text_to_multimodal_keys(load_target_state(assets / TARGET_FILE, vocab))
    missing, unexpected = model.load_state_dict(text_state, strict=False)
    untrained = [k for k in missing if not k.startswith(("model.vision_tower.", "model.embed_vision.", "lm_head."))]
    if untrained or unexpected:
        raise ValueError(f"demo target weights do not fit the model: missing {untrained}, unexpected {unexpected}")
    model.tie_weights()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=list(STOP_IDS), pad_token_id=tokenizer.pad_token_id
    )
    save_target(model, target_dir, tokenizer)

    tensors = load_file(str(assets / DRAFTER_FILE))
    mask_embedding = tensors.pop("mask_embedding")
    drafter_dir.mkdir(parents=True)
    save_file(tensors, str(drafter_dir / "model.safetensors"))
    torch.save(
        {"mask_token_id": drafter_spec.mask_token_id, "embedding": mask_embedding}, drafter_dir / MASK_EMBEDDING_FILE
    )
    config = drafter_config(drafter_spec, target_spec, vocab, draft_vocab_size=len(tensors["d2t"]))
    (drafter_dir / "config.json").write_text(json.dumps(config, indent=2))
    save_tokenizer(tokenizer, drafter_dir)
    return target_dir, drafter_dir


def ensure_demo_pair(assets: Path = DEMO_ASSETS, out: Path = DEFAULT_OUT, force: bool = False) -> tuple[Path, Path]:
    """Return (target_dir, drafter_dir) of the demo pair, rebuilding them only when the assets changed."""
    digest = _digest(assets)
    stamp = out / STAMP_FILE
    if not force and stamp.exists() and stamp.read_text().strip() == digest:
        logger.info("demo pair up to date in %s", out)
        return out / TARGET_NAME, out / DRAFTER_NAME
    logger.info("rebuilding the demo pair in %s from %s", out, assets)
    stamp.unlink(missing_ok=True)
    dirs = materialize(assets, out, load_tokenizer())
    stamp.write_text(digest + "\n")
    return dirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=Path, default=DEMO_ASSETS, help="compact pair (training.pair format)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    target, drafter = ensure_demo_pair(args.assets, args.out, force=args.force)
    print(f"target:  {target}\ndrafter: {drafter}")


if __name__ == "__main__":
    main()

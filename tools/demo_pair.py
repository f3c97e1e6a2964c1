"""Rebuild the trained demo pair (``assets/demo_pair/``) as the model directories vLLM loads.

The repository ships the pair compactly (``training.pair``: the target's non-zero embedding rows
only, float32 weights); this writes ``.cache/models/demo-gemma4-target`` (a transformers
``Gemma4ForCausalLM`` directory with the real tokenizer and chat template, stopping at ``<turn|>`` as
the real model does) and ``.cache/models/demo-gemma4-dflash`` (the drafter: weights under vLLM's names,
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

from tools.tiny_models import DEFAULT_OUT, REPO_ROOT, TOKENIZER_DIR, drafter_config, target_config

logger = logging.getLogger(__name__)

DEMO_ASSETS = REPO_ROOT / "assets" / "demo_pair"
TARGET_NAME, DRAFTER_NAME = "demo-gemma4-target", "demo-gemma4-dflash"
STAMP_FILE = "demo.sha256"


def _digest(assets: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(assets.iterdir()):
        h.update(path.name.encode() + hashlib.sha256(path.read_bytes()).digest())
    for path in (TOKENIZER_DIR / "tokenizer.model", TOKENIZER_DIR / "chat_template.jinja", Path(__file__)):
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def materialize(assets: Path, out: Path, tokenizer) -> tuple[Path, Path]:  # noqa: ANN001 - a transformers tokenizer
    """Write the target and drafter directories for the pair in ``assets``; returns their paths."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import Gemma4ForCausalLM, GenerationConfig

    from training.dflash import MASK_EMBEDDING_FILE
    from training.pair import DRAFTER_FILE, META_FILE, TARGET_FILE, load_target_state, read_specs
    from training.target import STOP_IDS

    meta = json.loads((assets / META_FILE).read_text())
    target_spec, drafter_spec = read_specs(meta)
    vocab = len(tokenizer)
    target_dir, drafter_dir = out / TARGET_NAME, out / DRAFTER_NAME
    for d in (target_dir, drafter_dir):
        shutil.rmtree(d, ignore_errors=True)

    cfg = target_config(target_spec, vocab, tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    with torch.device("meta"):
        model = Gemma4ForCausalLM(cfg)
    model.load_state_dict(load_target_state(assets / TARGET_FILE, vocab), assign=True, strict=False)
    model.tie_weights()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=list(STOP_IDS), pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(target_dir, safe_serialization=True)

    tensors = load_file(str(assets / DRAFTER_FILE))
    mask_embedding = tensors.pop("mask_embedding")
    drafter_dir.mkdir(parents=True)
    save_file(tensors, str(drafter_dir / "model.safetensors"))
    torch.save(
        {"mask_token_id": drafter_spec.mask_token_id, "embedding": mask_embedding}, drafter_dir / MASK_EMBEDDING_FILE
    )
    config = drafter_config(drafter_spec, target_spec, vocab, draft_vocab_size=len(tensors["d2t"]))
    (drafter_dir / "config.json").write_text(json.dumps(config, indent=2))
    for d in (target_dir, drafter_dir):
        tokenizer.save_pretrained(d)
        shutil.copy(TOKENIZER_DIR / "chat_template.jinja", d / "chat_template.jinja")
    return target_dir, drafter_dir


def ensure_demo_pair(assets: Path = DEMO_ASSETS, out: Path = DEFAULT_OUT, force: bool = False) -> tuple[Path, Path]:
    """Return (target_dir, drafter_dir) of the demo pair, rebuilding them only when the assets changed."""
    digest = _digest(assets)
    stamp = out / STAMP_FILE
    if not force and stamp.exists() and stamp.read_text().strip() == digest:
        logger.info("demo pair up to date in %s", out)
        return out / TARGET_NAME, out / DRAFTER_NAME
    from transformers import AutoTokenizer

    logger.info("rebuilding the demo pair in %s from %s", out, assets)
    stamp.unlink(missing_ok=True)
    dirs = materialize(assets, out, AutoTokenizer.from_pretrained(TOKENIZER_DIR))
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

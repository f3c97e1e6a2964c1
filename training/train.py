"""Train the demo pair end to end: target, its greedy answers, drafter, offline acceptance.

    python -m training.train --corpus .cache/train/corpus.npz --out .cache/train/run

Runs on a GPU when there is one (bf16 autocast), else on CPU; ``--smoke`` shrinks every count so the
whole pipeline runs in seconds on CPU. Everything random comes from ``--seed`` (and the specs' own
seeds); CPU runs are bit-reproducible, GPU runs up to CUDA's non-deterministic kernels. The target is
saved as soon as it is trained and the drafter every few hundred steps, so an interrupted run still
leaves weights in ``--out`` (the compact format of ``training.pair``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from training.drafter import acceptance_length, draft_vocab, new_drafter, train_drafter
from training.pair import (
    DEMO_DRAFTER,
    DEMO_TARGET,
    META_FILE,
    TARGET_FILE,
    load_target_state,
    save_drafter,
    save_target,
    spec_meta,
    write_meta,
)
from training.target import VOCAB_SIZE, greedy_continuations, new_target, train_target

logger = logging.getLogger(__name__)

SMOKE = {
    "target_steps": 3,
    "drafter_steps": 3,
    "target_batch": 2,
    "drafter_batch": 2,
    "anchors": 4,
    "gen_prompts": 2,
    "num_eval": 2,
    "max_new_tokens": 8,
    "draft_vocab": 512,
}


def split(tokens: np.ndarray, offsets: np.ndarray) -> list[torch.Tensor]:
    flat = torch.from_numpy(tokens.astype(np.int64))
    return [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True, help="corpus .npz from training.corpus")
    parser.add_argument("--out", type=Path, required=True, help="output directory (compact pair format)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--target-steps", type=int, default=1500)
    parser.add_argument("--target-lr", type=float, default=3e-3)
    parser.add_argument("--drafter-steps", type=int, default=3500)
    parser.add_argument("--drafter-lr", type=float, default=2e-3)
    parser.add_argument("--target-batch", type=int, default=128, help="conversations per target step")
    parser.add_argument("--drafter-batch", type=int, default=96, help="answers per drafter step")
    parser.add_argument("--anchors", type=int, default=32, help="blocks per answer per drafter step")
    parser.add_argument("--gamma", type=float, default=7.0, help="decay of the per-slot loss weight")
    parser.add_argument("--gen-prompts", type=int, default=0, help="train prompts the target answers (0: all)")
    parser.add_argument("--gen-batch", type=int, default=1024)
    parser.add_argument("--max-new-tokens", type=int, default=320)
    parser.add_argument("--num-eval", type=int, default=64, help="held-out prompts for the offline acceptance")
    parser.add_argument("--draft-vocab", type=int, default=8192, help="ids in the drafter's own LM head")
    parser.add_argument("--target-from", type=Path, help="take the trained target from this pair directory")
    parser.add_argument("--target-only", action="store_true", help="stop once the target is trained")
    parser.add_argument("--smoke", action="store_true", help="a few steps of everything (CPU test)")
    args = parser.parse_args()
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    return args


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    corpus = np.load(args.corpus)
    seqs = split(corpus["tokens"], corpus["offsets"])
    prompt_lens = corpus["prompt_lens"].tolist()
    keep_ids = torch.from_numpy(corpus["keep_ids"])
    evals = {
        name: split(corpus[f"{name}_tokens"], corpus[f"{name}_offsets"])[: args.num_eval]
        for name in ("eval", "long_eval")
    }
    target_spec = dataclasses.replace(DEMO_TARGET, seed=DEMO_TARGET.seed + args.seed)
    drafter_spec = dataclasses.replace(DEMO_DRAFTER, seed=DEMO_DRAFTER.seed + args.seed)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    meta: dict = spec_meta(target_spec, drafter_spec) | {"settings": settings, "device": str(device)}
    if device.type == "cuda":
        import transformers

        versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
        meta["gpu"] = f"{torch.cuda.get_device_name(device)} ({versions})"
    meta["corpus"] = {"conversations": len(seqs), "tokens": len(corpus["tokens"]), "kept_ids": len(keep_ids)}
    logger.info("device %s, %d conversations, %d kept ids", device, len(seqs), len(keep_ids))

    t0 = time.time()
    target = new_target(target_spec, keep_ids)
    if args.target_from:
        earlier = json.loads((args.target_from / META_FILE).read_text())
        meta |= {k: earlier[k] for k in ("target_loss", "target_train_s")}
        meta["settings"] |= {k: earlier["settings"][k] for k in ("target_steps", "target_lr", "target_batch", "seed")}
        target.load_state_dict(load_target_state(args.target_from / TARGET_FILE, VOCAB_SIZE), strict=False)
        target.tie_weights()
        target.to(device).eval()
    else:
        meta["target_loss"] = train_target(
            target, seqs, keep_ids, steps=args.target_steps, batch_size=args.target_batch, lr=args.target_lr,
            seed=args.seed, device=device,
        )  # fmt: skip
        meta["target_train_s"] = round(time.time() - t0, 1)
    save_target(target, keep_ids, args.out)
    write_meta(args.out, meta)
    if args.target_only:
        return

    t0 = time.time()
    n_gen = args.gen_prompts or len(seqs)
    prompts = [s[:p] for s, p in zip(seqs[:n_gen], prompt_lens[:n_gen], strict=True)]
    answers = greedy_continuations(target, prompts, args.max_new_tokens, args.gen_batch, device)
    eval_answers = {
        name: greedy_continuations(target, prompts, args.max_new_tokens, args.gen_batch, device)
        for name, prompts in evals.items()
    }
    meta["generate_s"] = round(time.time() - t0, 1)
    meta["answer_tokens_mean"] = round(float(np.mean([len(a) for a in answers])), 1)
    (args.out / "eval_answers.json").write_text(
        json.dumps({name: [a.tolist() for a in answers] for name, answers in eval_answers.items()})
    )
    logger.info("generated %d answers (mean %.1f tokens)", len(answers), meta["answer_tokens_mean"])

    t0 = time.time()
    draft_ids = draft_vocab(answers, args.draft_vocab)
    drafter = new_drafter(drafter_spec, target_spec, draft_ids, target)
    draft_seqs = [torch.cat([p, a]) for p, a in zip(prompts, answers, strict=True)]

    def checkpoint() -> None:
        save_drafter(drafter.vllm_tensors(), drafter.mask_embedding, args.out)

    meta["drafter_loss"] = train_drafter(
        drafter, target, draft_seqs, [len(p) for p in prompts], steps=args.drafter_steps, batch_size=args.drafter_batch,
        anchors_per_seq=args.anchors, lr=args.drafter_lr, gamma=args.gamma, seed=args.seed, device=device,
        checkpoint=checkpoint,
    )  # fmt: skip
    meta["drafter_train_s"] = round(time.time() - t0, 1)
    checkpoint()
    for name, prompts in evals.items():  # offline_tau_eval: single-turn, offline_tau_long_eval: after 8 turns
        seqs_eval = [torch.cat([p, a]) for p, a in zip(prompts, eval_answers[name], strict=True)]
        tau = acceptance_length(drafter, target, seqs_eval, [len(p) for p in prompts], k=drafter_spec.block_size - 1)
        meta[f"offline_tau_{name}"] = round(tau, 3)
        logger.info("offline acceptance length on %d %s prompts: %.3f", len(prompts), name, tau)
    write_meta(args.out, meta)


if __name__ == "__main__":
    main()

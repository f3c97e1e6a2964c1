"""Training of the DFlash drafter against the frozen target, and its offline acceptance length.

Data are the target's own greedy answers (prompt + answer), as in the DFlash paper: the drafter learns
to predict what the target will say, which is what verification accepts. Each step samples ``anchors``
positions per answer; the block at anchor ``a`` is ``[x_a, mask * (B-1)]`` and slot ``k`` is trained to
give ``x_{a+k}`` with weight ``exp(-(k-1)/gamma)`` (early slots matter most: a miss there ends the
accepted run). Labels outside the draft vocabulary are skipped.

``acceptance_length`` replays greedy speculative decoding on answers the target generated: from the
prompt's end, draft a block, accept the longest prefix equal to the target's tokens, add the target's
own next token, repeat. Its ``1 + accepted / drafts`` is what vLLM reports for the same text.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from training.dflash import DFlashDrafter, block_inputs, block_mask
from training.specs import DrafterSpec, TargetSpec
from training.target import VOCAB_SIZE, batches, cosine_lr, layer_outputs, optimizer_step, pad_right

logger = logging.getLogger(__name__)


def draft_vocab(answers: list[torch.Tensor], size: int) -> torch.Tensor:
    """The ``size`` most frequent ids of the answers (ascending), the drafter's output vocabulary."""
    counts = torch.bincount(torch.cat(answers), minlength=VOCAB_SIZE)
    top = torch.topk(counts, size).indices
    covered = counts[top].sum().item() / counts.sum().item()
    logger.info("draft vocabulary: %d ids cover %.4f of answer tokens", size, covered)
    return top.sort().values


def sample_anchors(lengths: torch.Tensor, prompt_lens: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """[B, n] anchors uniform in ``[prompt_len, length - 2]`` (an answer token with at least one after it)."""
    span = (lengths - 1 - prompt_lens).clamp(min=1).float()
    u = torch.rand(len(lengths), n, generator=gen)
    return prompt_lens[:, None] + (u * span[:, None]).long()


def block_labels(
    tokens: torch.Tensor, lengths: torch.Tensor, anchors: torch.Tensor, block_size: int, to_draft: torch.Tensor
) -> torch.Tensor:
    """[B, n, B-1] draft-vocabulary labels ``x_{a+k}``, -100 past the end or outside the draft vocabulary."""
    pos = anchors[..., None] + torch.arange(1, block_size, device=anchors.device)
    valid = pos < lengths[:, None, None].to(pos.device)
    ids = tokens.gather(1, pos.clamp(max=tokens.shape[1] - 1).flatten(1)).view_as(pos)
    labels = to_draft[ids]
    return torch.where(valid & (labels >= 0), labels, -100)


def drafter_loss(
    drafter: DFlashDrafter,
    target: nn.Module,
    tokens: torch.Tensor,
    lengths: torch.Tensor,
    prompt_lens: torch.Tensor,
    to_draft: torch.Tensor,
    *,
    anchors_per_seq: int,
    gamma: float,
    gen: torch.Generator,
) -> torch.Tensor:
    spec = drafter.spec
    bs = spec.block_size
    device = tokens.device
    with torch.no_grad(), torch.autocast(device.type, enabled=False):  # float32, as the CPU engine serves it
        target_hidden = layer_outputs(target, tokens, spec.target_layer_ids)
    anchors = sample_anchors(lengths, prompt_lens, anchors_per_seq, gen).to(device)
    embeds, positions = block_inputs(
        tokens, anchors, bs, target.get_input_embeddings().weight.detach(), drafter.mask_embedding,
        drafter.embedding_scale,
    )  # fmt: skip
    ctx_positions = torch.arange(tokens.shape[1], device=device).expand(tokens.shape[0], -1)
    mask = block_mask(anchors, tokens.shape[1], bs)
    hidden = drafter(target_hidden, ctx_positions, embeds, positions, mask)
    hidden = hidden.view(*anchors.shape, bs, -1)[:, :, 1:]
    logits = drafter.draft_logits(hidden).float()
    labels = block_labels(tokens, lengths.to(device), anchors, bs, to_draft)
    ce = F.cross_entropy(logits.flatten(0, 2), labels.flatten(), ignore_index=-100, reduction="none")
    weights = torch.exp(-torch.arange(bs - 1, device=device) / gamma).expand_as(labels) * (labels >= 0)
    return (ce * weights.flatten()).sum() / weights.sum().clamp(min=1e-6)


def train_drafter(
    drafter: DFlashDrafter,
    target: nn.Module,
    seqs: list[torch.Tensor],
    prompt_lens: list[int],
    *,
    steps: int,
    batch_size: int,
    anchors_per_seq: int,
    lr: float,
    gamma: float,
    seed: int,
    device: torch.device,
    checkpoint: Callable[[], None] | None = None,
    checkpoint_every: int = 500,
) -> list[float]:
    """Block-diffusion training of the drafter; the target stays frozen. Returns the loss every 50 steps.

    ``checkpoint`` is called every ``checkpoint_every`` steps, so a run cut short still leaves weights.
    """
    drafter.to(device).train()
    target.to(device).eval().requires_grad_(False)
    to_draft = torch.full((VOCAB_SIZE,), -1, dtype=torch.long, device=device)
    to_draft[drafter.draft_ids] = torch.arange(len(drafter.draft_ids), device=device)
    opt = torch.optim.AdamW(drafter.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    plen = {id(s): p for s, p in zip(seqs, prompt_lens, strict=True)}
    data = batches(seqs, batch_size, gen)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    history: list[float] = []
    for step in (bar := tqdm(range(steps), desc="drafter", mininterval=10)):
        batch = next(data)
        tokens = pad_right(batch).to(device)
        lengths = torch.tensor([len(s) for s in batch])
        prompts = torch.tensor([plen[id(s)] for s in batch])
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, warmup=min(200, steps // 10 + 1))
        with autocast:
            loss = drafter_loss(
                drafter,
                target,
                tokens,
                lengths,
                prompts,
                to_draft,
                anchors_per_seq=anchors_per_seq,
                gamma=gamma,
                gen=gen,
            )
        optimizer_step(opt, drafter, loss, step, steps, history, bar, "drafter")
        if checkpoint is not None and step % checkpoint_every == checkpoint_every - 1:
            checkpoint()
    drafter.eval()
    return history


@torch.no_grad()
def block_drafts(drafter: DFlashDrafter, target: nn.Module, seq: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """[n, B-1] greedy draft ids (target ids) of the blocks at ``anchors`` of one sequence."""
    spec = drafter.spec
    tokens = seq[None]
    target_hidden = layer_outputs(target, tokens, spec.target_layer_ids)
    embeds, positions = block_inputs(
        tokens, anchors[None], spec.block_size, target.get_input_embeddings().weight, drafter.mask_embedding,
        drafter.embedding_scale,
    )  # fmt: skip
    ctx_positions = torch.arange(len(seq), device=seq.device)[None]
    mask = block_mask(anchors[None], len(seq), spec.block_size)
    hidden = drafter(target_hidden, ctx_positions, embeds, positions, mask)
    hidden = hidden.view(len(anchors), spec.block_size, -1)[:, 1:]
    return drafter.draft_ids[drafter.draft_logits(hidden).argmax(-1)]


def acceptance_length(
    drafter: DFlashDrafter, target: nn.Module, seqs: list[torch.Tensor], prompt_lens: list[int], k: int
) -> float:
    """Mean acceptance length ``1 + accepted / drafts`` of greedy DFlash decoding with ``k`` drafted tokens."""
    device = next(drafter.parameters()).device
    drafts_total = accepted_total = 0
    for seq, p in zip(seqs, prompt_lens, strict=True):
        seq = seq.to(device)
        if len(seq) - p < 2:
            continue
        drafts = block_drafts(drafter, target, seq, torch.arange(p, len(seq) - 1, device=device)).cpu()
        seq = seq.cpu()
        a = p
        while a < len(seq) - 1:
            want = seq[a + 1 : a + 1 + k]
            match = (drafts[a - p, : len(want)] == want).long()
            accepted = int(match.cumprod(0).sum())
            drafts_total += 1
            accepted_total += accepted
            a += accepted + 1
    return 1.0 + accepted_total / max(1, drafts_total)


def new_drafter(
    drafter_spec: DrafterSpec, target_spec: TargetSpec, draft_ids: torch.Tensor, target: nn.Module
) -> DFlashDrafter:
    """A drafter whose LM head starts as the target's (tied) LM head rows of its vocabulary."""
    torch.manual_seed(drafter_spec.seed)
    drafter = DFlashDrafter(drafter_spec, target_spec, draft_ids)
    embed = target.get_input_embeddings().weight.detach().float().cpu()
    with torch.no_grad():
        drafter.lm_head.weight.copy_(embed[draft_ids])
        drafter.mask_embedding.normal_(0.0, float(embed[draft_ids].std()))
    return drafter

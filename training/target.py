"""Training of the tiny Gemma-4 target, capture of its hidden states, and its greedy continuations.

Only the embedding rows of ids that occur in the corpus (``keep_ids``) train; all others stay exactly
zero (their gradient is masked, and AdamW leaves zero weights at zero), so the shipped model, which
stores the kept rows only, is the trained model bit for bit. With the tied LM head those ids all
have logit 0, which makes the softmax over the 262,144-id vocabulary exact and cheap:
``logsumexp = log(sum_kept exp(l) + n_zero)``, one matmul against the kept rows instead of all rows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import torch
from torch import nn
from tqdm import tqdm

from training.specs import TargetSpec, target_config

logger = logging.getLogger(__name__)

# Ids of the Gemma-4 tokenizer the trainer needs without loading it (the GPU machine has no copy).
VOCAB_SIZE = 262_144
PAD_ID, EOS_ID, BOS_ID = 0, 1, 2
END_OF_TURN_ID = 106  # "<turn|>": ends the model's turn; vLLM stops there (generation_config eos ids)
STOP_IDS = (EOS_ID, END_OF_TURN_ID)


def new_target(spec: TargetSpec, keep_ids: torch.Tensor) -> nn.Module:
    """A freshly initialised target whose embedding rows outside ``keep_ids`` are zero and frozen."""
    from transformers import Gemma4ForCausalLM

    torch.manual_seed(spec.seed)
    cfg = target_config(spec, VOCAB_SIZE, PAD_ID, BOS_ID, EOS_ID)
    cfg._attn_implementation = "sdpa"
    model = Gemma4ForCausalLM(cfg)
    weight = model.get_input_embeddings().weight
    keep = torch.zeros(VOCAB_SIZE, dtype=torch.bool)
    keep[keep_ids] = True
    with torch.no_grad():
        weight[~keep] = 0.0
    weight.register_hook(lambda g: g * keep.to(g.device, g.dtype)[:, None])
    return model


def layer_outputs(model: nn.Module, input_ids: torch.Tensor, layer_ids: tuple[int, ...]) -> torch.Tensor:
    """[B, T, len(layer_ids) * H]: outputs of decoder layers ``layer_ids``, concatenated (vLLM's aux states).

    ``model`` is a Gemma-4 text-only or multimodal model; its text decoder runs on ``input_ids`` alone.
    """
    decoder = model.get_decoder()
    captured: dict[int, torch.Tensor] = {}

    def keep(i: int):  # noqa: ANN202 - a forward hook
        return lambda _m, _a, out: captured.__setitem__(i, out[0] if isinstance(out, tuple) else out)

    hooks = [decoder.layers[i].register_forward_hook(keep(i)) for i in layer_ids]
    try:
        decoder(input_ids=input_ids, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    return torch.cat([captured[i] for i in layer_ids], dim=-1)


def sparse_vocab_loss(
    hidden: torch.Tensor, embed: torch.Tensor, keep_ids: torch.Tensor, labels: torch.Tensor, softcap: float | None
) -> torch.Tensor:
    """Mean next-token cross-entropy over the full vocabulary, computed on the kept rows only.

    Logits are soft-capped (``tanh(x / cap) * cap``) as Gemma's ``final_logit_softcapping`` caps them when
    served; a zero row's logit stays 0 under the cap, so the shortcut below still holds.

    Args:
        hidden: [N, H] final hidden states.
        embed: [V, H] tied embedding / LM head, zero outside ``keep_ids``.
        keep_ids: [K] ascending ids of the non-zero rows.
        labels: [N] positions into ``keep_ids`` (every label id is kept by construction).
    """
    logits = (hidden @ embed[keep_ids].T).float()  # [N, K]
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    n_zero = embed.shape[0] - keep_ids.numel()
    lse = torch.logsumexp(torch.cat([logits, logits.new_full((logits.shape[0], 1), math.log(n_zero))], -1), -1)
    return (lse - logits.gather(1, labels[:, None]).squeeze(1)).mean()


def batches(
    seqs: list[torch.Tensor], batch_size: int, gen: torch.Generator, bucket: int = 50
) -> Iterator[list[torch.Tensor]]:
    """Endless shuffled batches; sequences of similar length go together (less padding)."""
    while True:
        order = torch.randperm(len(seqs), generator=gen).tolist()
        chunk = batch_size * bucket
        groups = []
        for start in range(0, len(order), chunk):
            part = sorted(order[start : start + chunk], key=lambda i: len(seqs[i]))
            groups += [part[i : i + batch_size] for i in range(0, len(part) - batch_size + 1, batch_size)]
        for g in torch.randperm(len(groups), generator=gen).tolist():
            yield [seqs[i] for i in groups[g]]


def pad_right(seqs: list[torch.Tensor], value: int = PAD_ID) -> torch.Tensor:
    return nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=value)


def optimizer_step(
    opt: torch.optim.Optimizer,
    model: nn.Module,
    loss: torch.Tensor,
    step: int,
    steps: int,
    history: list[float],
    bar: tqdm,
    label: str,
) -> None:
    """One clipped update, with the loss sampled into ``history`` and shown on the progress bar."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if step % 50 == 0 or step == steps - 1:
        history.append(round(loss.item(), 4))
        bar.set_postfix(loss=history[-1])
    if step % 250 == 0 or step == steps - 1:
        logger.info("%s step %d loss %.4f", label, step, history[-1])


def cosine_lr(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))


def train_target(
    model: nn.Module,
    seqs: list[torch.Tensor],
    keep_ids: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
) -> list[float]:
    """Next-token training on whole conversations; returns the loss every 50 steps."""
    model.to(device).train()
    keep_ids = keep_ids.to(device)
    index = torch.full((VOCAB_SIZE,), -1, dtype=torch.long, device=device)
    index[keep_ids] = torch.arange(len(keep_ids), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    data = batches(seqs, batch_size, gen)
    embed = model.get_input_embeddings().weight
    history: list[float] = []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    for step in (bar := tqdm(range(steps), desc="target", mininterval=10)):
        batch = pad_right(next(data)).to(device)
        inputs, labels = batch[:, :-1], batch[:, 1:]
        valid = (labels != PAD_ID).reshape(-1)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, warmup=min(200, steps // 10 + 1))
        with autocast:
            hidden = model.model(input_ids=inputs, use_cache=False).last_hidden_state
            loss = sparse_vocab_loss(
                hidden.reshape(-1, hidden.shape[-1])[valid], embed, keep_ids, index[labels.reshape(-1)[valid]],
                model.config.final_logit_softcapping,
            )  # fmt: skip
        optimizer_step(opt, model, loss, step, steps, history, bar, "target")
    model.eval()
    return history


@torch.no_grad()
def greedy_continuations(
    model: nn.Module, prompts: list[torch.Tensor], max_new_tokens: int, batch_size: int, device: torch.device
) -> list[torch.Tensor]:
    """The target's greedy answer to each prompt, up to and including its first stop id."""
    out: list[torch.Tensor] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="generate", mininterval=10):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), PAD_ID, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, p in enumerate(chunk):  # left padding: the answers start in one column
            ids[i, width - len(p) :] = p
            attn[i, width - len(p) :] = 1
        gen = model.generate(
            input_ids=ids.to(device),
            attention_mask=attn.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=list(STOP_IDS),
            pad_token_id=PAD_ID,
        )[:, width:].cpu()
        for row in gen:
            stops = torch.isin(row, torch.tensor(STOP_IDS)).nonzero()
            out.append(row[: int(stops[0]) + 1] if len(stops) else row)
    return out

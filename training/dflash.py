"""The DFlash drafter's forward pass: z-lab's reference semantics on vLLM 0.32's layer layout (``qwen3_dflash.py``).

Inference in vLLM, for one request whose verified tokens are ``x_0..x_{a-1}`` and whose next token
``x_a`` the target has just sampled:

* context: the target's hidden states after layers ``target_layer_ids`` (the output of decoder layer
  ``i``, vLLM's aux layer ``i + 1``) at positions ``0..a-1``, concatenated, go through ``fc`` then
  ``hidden_norm`` and, in every drafter layer, through that layer's ``k_proj``/``v_proj``, ``k_norm`` and
  RoPE at their own positions: keys/values only, no query, no ``input_layernorm``;
* block: ``[x_a, mask, ..., mask]`` (``block_size`` tokens, positions ``a..a+block_size-1``), embedded
  with the target's raw embedding table and, for the masks, the drafter's own ``mask_embedding``, all
  times ``input_embedding_scale`` (z-lab's ``_raw_input_embeddings``; for a Gemma target the target's
  ``sqrt(hidden)`` normalizer; 1 when the spec declares none, which is what stock vLLM 0.32 runs); each
  layer is a Qwen3 pre-norm block whose attention sees all the context and the whole block (non-causal);
* logits: ``lm_head(norm(h))`` at the mask slots, soft-capped ``tanh(x / cap) * cap`` when the spec
  declares ``final_logit_softcapping`` (z-lab's ``compute_logits``; stock vLLM 0.32 caps nothing); slot
  ``k`` proposes ``x_{a+k}``. With its own LM head over ``draft_vocab_size`` target ids (``d2t``
  offsets), other ids get ``-inf``, after the cap.

Training runs many blocks of one sequence in one pass: the mask lets block ``j`` (anchor ``a_j``) see
context positions ``< a_j`` and its own block only, which is what each block sees at inference.
Parameter names are vLLM's checkpoint names, so ``vllm_tensors`` is the drafter's ``model.safetensors``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.specs import DrafterSpec, TargetSpec

RMS_EPS = 1e-6
ROPE_THETA = 1_000_000.0
MASK_EMBEDDING_FILE = "mask_embedding.pt"  # vLLM reads it beside the weights (qwen3_dflash._read_mask_embedding)


class RMSNorm(nn.Module):
    """Qwen3 RMSNorm (``x / rms(x) * weight``, computed in float32 as vLLM does)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + RMS_EPS)
        return (xf * self.weight.float()).to(x.dtype)


def rope(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Neox-style rotary embedding over the whole head; x: [B, S, heads, hd], positions: [B, S]."""
    hd = x.shape[-1]
    inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, hd, 2, device=x.device, dtype=torch.float32) / hd))
    angles = positions.float()[..., None] * inv_freq  # [B, S, hd/2]
    cos, sin = angles.cos()[:, :, None, :], angles.sin()[:, :, None, :]
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, spec: DrafterSpec) -> None:
        super().__init__()
        h, hd = spec.hidden_size, spec.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = spec.num_attention_heads, spec.num_key_value_heads, hd
        self.q_proj = nn.Linear(h, self.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(h, self.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(h, self.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(self.num_heads * hd, h, bias=False)
        self.q_norm = RMSNorm(hd)
        self.k_norm = RMSNorm(hd)

    def keys_values(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normed, rotated keys and values [B, kv_heads, S, hd] of already-normed inputs x [B, S, H]."""
        b, s, _ = x.shape
        k = self.k_norm(self.k_proj(x).view(b, s, self.num_kv_heads, self.head_dim))
        v = self.v_proj(x).view(b, s, self.num_kv_heads, self.head_dim)
        return rope(k, positions).transpose(1, 2), v.transpose(1, 2)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, ctx_kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor
    ) -> torch.Tensor:
        b, s, _ = x.shape
        q = rope(self.q_norm(self.q_proj(x).view(b, s, self.num_heads, self.head_dim)), positions).transpose(1, 2)
        k, v = self.keys_values(x, positions)
        k = torch.cat([ctx_kv[0], k], dim=2)
        v = torch.cat([ctx_kv[1], v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class MLP(nn.Module):
    def __init__(self, spec: DrafterSpec) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(spec.hidden_size, spec.intermediate_size, bias=False)
        self.up_proj = nn.Linear(spec.hidden_size, spec.intermediate_size, bias=False)
        self.down_proj = nn.Linear(spec.intermediate_size, spec.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, spec: DrafterSpec) -> None:
        super().__init__()
        self.self_attn = Attention(spec)
        self.mlp = MLP(spec)
        self.input_layernorm = RMSNorm(spec.hidden_size)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size)

    def forward(
        self, h: torch.Tensor, positions: torch.Tensor, ctx_kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor
    ) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), positions, ctx_kv, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class DFlashDrafter(nn.Module):
    """DFlash drafter with its own LM head over ``draft_ids`` (target ids, ascending)."""

    def __init__(self, spec: DrafterSpec, target: TargetSpec, draft_ids: torch.Tensor) -> None:
        super().__init__()
        self.spec = spec
        h = spec.hidden_size
        self.fc = nn.Linear(len(spec.target_layer_ids) * target.hidden_size, h, bias=False)
        self.hidden_norm = RMSNorm(h)
        self.layers = nn.ModuleList(Layer(spec) for _ in range(spec.num_hidden_layers))
        # One k_norm weight for all layers: vLLM's CPU rms_norm kernel ignores the per-layer rows of the
        # grouped weight it normalises the context keys with and applies layer 0's to every layer
        # (docs/known-issues.md). Tied, the CPU engine, the GPU engine and this code agree.
        for layer in self.layers[1:]:
            layer.self_attn.k_norm.weight = self.layers[0].self_attn.k_norm.weight
        self.norm = RMSNorm(h)
        self.lm_head = nn.Linear(h, len(draft_ids), bias=False)
        self.mask_embedding = nn.Parameter(torch.zeros(h))
        self.register_buffer("draft_ids", draft_ids.long(), persistent=False)

    @property
    def embedding_scale(self) -> float:
        """What the block's input embeddings are multiplied by (z-lab's ``input_embedding_scale``)."""
        return 1.0 if self.spec.input_embedding_scale is None else self.spec.input_embedding_scale

    def draft_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the draft vocabulary, soft-capped as z-lab's ``compute_logits`` caps them."""
        logits = self.lm_head(hidden)
        cap = self.spec.final_logit_softcapping
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def context(self, target_hidden: torch.Tensor) -> torch.Tensor:
        """``hidden_norm(fc(.))`` of the concatenated target hidden states [B, T, L*H_target]."""
        return self.hidden_norm(self.fc(target_hidden))

    def forward(
        self,
        target_hidden: torch.Tensor,
        ctx_positions: torch.Tensor,
        block_embeds: torch.Tensor,
        block_positions: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """Final-normed hidden states of the block slots.

        Args:
            target_hidden: [B, T, L*H_target] target hidden states (context keys/values).
            ctx_positions: [B, T] their positions.
            block_embeds: [B, S, H] input embeddings of the block slots (token or mask embedding).
            block_positions: [B, S] their positions.
            mask: [B, S, T + S] bool, True where a block slot may attend (context keys first).
        """
        ctx = self.context(target_hidden)
        h = block_embeds
        for layer in self.layers:
            ctx_kv = layer.self_attn.keys_values(ctx, ctx_positions)
            h = layer(h, block_positions, ctx_kv, mask)
        return self.norm(h)

    def full_logits(self, hidden: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """Logits over the target vocabulary, ``-inf`` outside the draft vocabulary (vLLM's compute_logits)."""
        logits = self.draft_logits(hidden)
        full = logits.new_full((*logits.shape[:-1], vocab_size), float("-inf"))
        full[..., self.draft_ids] = logits
        return full

    def vllm_tensors(self) -> dict[str, torch.Tensor]:
        """Weights under vLLM's checkpoint names (``d2t`` holds target_id - draft_id offsets)."""
        tensors = {k: v.detach().float().cpu().clone() for k, v in self.state_dict().items()}
        del tensors["mask_embedding"]
        ids = self.draft_ids.cpu()
        tensors["d2t"] = ids - torch.arange(len(ids))
        return tensors

    def load_vllm_tensors(self, tensors: dict[str, torch.Tensor], mask_embedding: torch.Tensor) -> None:
        state = {k: v for k, v in tensors.items() if k != "d2t"}
        state["mask_embedding"] = mask_embedding
        self.load_state_dict(state)
        ids = tensors["d2t"] + torch.arange(len(tensors["d2t"]))
        self.draft_ids.copy_(ids.to(self.draft_ids.device))


def block_inputs(
    tokens: torch.Tensor,
    anchors: torch.Tensor,
    block_size: int,
    embed: torch.Tensor,
    mask_embedding: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings [B, n*bs, H], positions [B, n*bs]) of blocks ``[x_a, mask, ...]`` at anchors [B, n].

    Every slot's embedding, the mask's too, is multiplied by ``scale`` (the drafter's ``embedding_scale``).
    """
    b, n = anchors.shape
    positions = (anchors[..., None] + torch.arange(block_size, device=anchors.device)).reshape(b, n * block_size)
    first = F.embedding(tokens.gather(1, anchors), embed)  # [B, n, H]
    embeds = mask_embedding.to(first.dtype).expand(b, n, block_size, -1).clone()
    embeds[:, :, 0] = first
    return embeds.reshape(b, n * block_size, -1) * scale, positions


def block_mask(anchors: torch.Tensor, ctx_len: int, block_size: int) -> torch.Tensor:
    """[B, n*bs, T + n*bs] bool: block j sees context positions < a_j and its own block."""
    b, n = anchors.shape
    device = anchors.device
    ctx = torch.arange(ctx_len, device=device)[None, None, :] < anchors[..., None]  # [B, n, T]
    same = torch.eye(n, dtype=torch.bool, device=device)  # [n, n]
    own = same[:, None, :, None].expand(n, block_size, n, block_size).reshape(n * block_size, n * block_size)
    ctx = ctx[:, :, None, :].expand(b, n, block_size, ctx_len).reshape(b, n * block_size, ctx_len)
    return torch.cat([ctx, own.expand(b, -1, -1)], dim=-1)

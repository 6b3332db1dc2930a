"""Attention over short sequences on CPU, as a transformers attention implementation.

PyTorch's CPU flash-attention kernel works in blocks sized for long sequences: on the tiny Llama's shapes (64
rows, 46 tokens, head width 16) it ran at about 4 GFLOP/s, and attention took a fifth of a PPO iteration.
Materialising the ``(q, k)`` scores with batched matmuls, query heads grouped under their shared key/value head
(grouped-query attention without copying keys), is faster up to about 64 keys and slower beyond (BENCHMARKS.md,
issue 18). The backward pass is written out (``dS = P * (dP - rowsum(dP * P))``) rather than left to autograd,
which would keep the scaled, masked and normalised score arrays separately.

``model.set_attn_implementation(SHORT_CAUSAL)`` selects it. It serves unpadded causal rows, SDPA's boolean
padding masks (a left-padded prefill) and one-token decoding steps on a cache; every other call (more than 64
keys, a chunk after a cache without a mask, dropout in training, a sliding window, attention sinks, a GPU) goes
to transformers' SDPA path, so the model behaves as with ``sdpa``, up to float rounding where this path runs."""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

SHORT_CAUSAL = "short_causal"
# Above this many tokens the CPU flash kernel is faster (measured at head widths 16 and 64).
SHORT_CAUSAL_MAX_TOKENS = 64
# What a call adds to its scores, besides a tensor or None: the causal triangle, or nothing this path serves.
CAUSAL, UNSERVED = object(), object()


def short_causal_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' attention-function contract: ``query (B, H, q, D)``, ``key``/``value`` ``(B, KV, k, D)``,
    ``attention_mask`` None (causal) or SDPA's boolean ``(B, 1, q, k)`` mask; returns ``((B, q, H, D), None)``."""
    length, keys = query.shape[2], key.shape[2]
    if attention_mask is not None:
        bias = attention_mask  # padding (and causality) spelled out: a left-padded prefill, a cached decode
    elif length == keys:
        bias = CAUSAL  # unpadded prefix: the causal triangle
    elif length == 1:
        bias = None  # one new token attends to the whole cache
    else:
        bias = UNSERVED  # a chunk after a cache: causal with an offset, left to SDPA
    served = (
        bias is not UNSERVED
        and query.device.type == "cpu"
        and keys <= SHORT_CAUSAL_MAX_TOKENS
        and (attention_mask is None or attention_mask.dtype == torch.bool)
        and (dropout == 0.0 or not module.training)
        and kwargs.get("is_causal", getattr(module, "is_causal", True))
        and kwargs.get("sliding_window") is None
        and kwargs.get("s_aux") is None
        and kwargs.get("softcap") is None
        and query.shape[1] % key.shape[1] == 0
    )
    if not served:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if bias is CAUSAL:
        bias = torch.full((length, keys), float("-inf"), dtype=query.dtype, device=query.device).triu_(1)
    elif bias is not None:
        # (B, 1, q, k) -> (B, 1, 1, q, k) against scores viewed as (B, KV, G, q, k). The most negative finite
        # value rather than -inf: a query row with no allowed key then gets finite weights, not NaN.
        bias = torch.zeros(bias.shape, dtype=query.dtype, device=query.device).masked_fill_(
            ~bias, torch.finfo(query.dtype).min
        )
        bias = bias.unsqueeze(2)
    scale = query.shape[3] ** -0.5 if scaling is None else scaling
    output = _ShortAttention.apply(query, key, value, bias, scale)
    return output.transpose(1, 2).contiguous(), None


class _ShortAttention(torch.autograd.Function):
    """softmax(Q K^T * scale + bias) V with the ``G = H / KV`` query heads of each key/value head stacked as
    one ``(G * q, D)`` matrix, so grouped-query attention needs no copy of the keys and values."""

    @staticmethod
    def forward(ctx, query, key, value, bias, scale):
        batch, heads, length, width = query.shape
        kv_heads, keys = key.shape[1], key.shape[2]
        groups = heads // kv_heads
        q = query.reshape(batch * kv_heads, groups * length, width)
        k = key.reshape(batch * kv_heads, keys, width)
        v = value.reshape(batch * kv_heads, keys, width)
        scores = torch.bmm(q, k.transpose(1, 2)).mul_(scale)
        if bias is not None:
            scores.view(batch, kv_heads, groups, length, keys).add_(bias)
        probs = torch.softmax(scores, dim=-1)
        ctx.save_for_backward(q, k, v, probs)
        ctx.scale = scale
        ctx.shapes = (query.shape, key.shape)
        return torch.bmm(probs, v).view(batch, heads, length, width)

    @staticmethod
    def backward(ctx, grad_output):
        q, k, v, probs = ctx.saved_tensors
        query_shape, key_shape = ctx.shapes
        grad_output = grad_output.reshape(q.shape)
        grad_value = torch.bmm(probs.transpose(1, 2), grad_output)
        grad_probs = torch.bmm(grad_output, v.transpose(1, 2))
        grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype).mul_(ctx.scale)
        grad_query = torch.bmm(grad_scores, k)
        grad_key = torch.bmm(grad_scores.transpose(1, 2), q)
        return grad_query.view(query_shape), grad_key.view(key_shape), grad_value.view(key_shape), None, None


def use_short_causal_attention(model) -> None:
    """Switch a model that runs SDPA attention to `short_causal_attention` (others are left as they are)."""
    if getattr(model.config, "_attn_implementation", None) == "sdpa":
        model.set_attn_implementation(SHORT_CAUSAL)


AttentionInterface.register(SHORT_CAUSAL, short_causal_attention)
# The same masks as SDPA: None (is_causal) where no row has padding, else a boolean mask.
ALL_MASK_ATTENTION_FUNCTIONS.register(SHORT_CAUSAL, sdpa_mask)

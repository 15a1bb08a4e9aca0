"""Decoder shapes for a target parameter count, by our presets' shape rules.

The presets (model/config.py) follow a few rules that this module applies at any size:
head_dim 64 (128 from d_model 2048), num_heads = d_model / head_dim, grouped-query
attention with num_kv_heads = num_heads / 2 (/ 4 from 16 heads), d_ff = 4·d_model
(SwiGLU), MoE experts with the preset's expert_hidden / d_ff ratio. Depth follows an
aspect ratio d_model / num_layers (default 64, as Chinchilla's and Kaplan et al.'s
models sit between 32 and 128, where loss is flat in shape).

N is counted as **non-embedding active parameters** by default (Kaplan et al.; the
clean variable at small sizes, where an 8k-vocabulary embedding would dominate),
or all active parameters with `count='total'` (Chinchilla's convention at scale).
"""
from __future__ import annotations

import dataclasses
import math

from model import flops
from model.config import TransformerConfig

COUNTS = ("non_embedding", "total")


def _embedding_params(cfg: TransformerConfig) -> int:
    return cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)


def count_params(cfg: TransformerConfig, count: str = "non_embedding") -> int:
    """Active parameters of the text decoder (media encoders excluded)."""
    if count not in COUNTS:
        raise ValueError(f"count={count!r}: choose one of {COUNTS}")
    text = dataclasses.replace(cfg, image=None, video=None, audio=None)
    active = flops.param_counts(text)[1]
    return active - _embedding_params(cfg) if count == "non_embedding" else active


def shape(base: TransformerConfig, d_model: int, num_layers: int) -> TransformerConfig:
    """`base` resized to (d_model, num_layers) by the preset rules (media dropped)."""
    head_dim = 128 if d_model >= 2048 else 64
    if d_model % head_dim:
        raise ValueError(f"d_model={d_model} must be a multiple of head_dim={head_dim}")
    heads = d_model // head_dim
    kv = max(1, heads // 4 if heads >= 16 else heads // 2)
    while heads % kv:  # grouped-query attention needs kv | heads
        kv -= 1
    d_ff = 4 * d_model
    moe = base.moe
    if moe is not None:
        ratio = moe.expert_hidden / base.d_ff
        moe = dataclasses.replace(
            moe, expert_hidden=max(64, int(round(ratio * d_ff / 64)) * 64),
            shared_hidden=max(64, int(round(moe.shared_hidden / base.d_ff * d_ff / 64)) * 64)
            if moe.shared_hidden else 0)
    return dataclasses.replace(base, d_model=d_model, num_layers=num_layers, num_heads=heads,
                               num_kv_heads=kv, head_dim=head_dim, d_ff=d_ff, moe=moe,
                               image=None, video=None, audio=None)


def candidates(base: TransformerConfig, aspect: float = 64.0, max_layers: int = 128
               ) -> list[TransformerConfig]:
    """Every shape whose d_model / num_layers is within 2x of `aspect` (d_model a multiple
    of 64, of 128 from 2048), sorted by parameter count."""
    out = []
    for layers in range(1, max_layers + 1):
        lo, hi = aspect * layers / 2, aspect * layers * 2
        d = 64
        while d <= hi:
            if d >= lo:
                out.append(shape(base, d, layers))
            d += 128 if d >= 2048 else 64
    return sorted(out, key=lambda c: (count_params(c), c.num_layers))


def closest_shape(base: TransformerConfig, n_target: float, *, aspect: float = 64.0,
                  count: str = "non_embedding") -> TransformerConfig:
    """The candidate nearest n_target in log parameters (ties: nearest the aspect ratio)."""
    if n_target <= 0:
        raise ValueError(f"target parameter count {n_target} must be positive")
    return min(candidates(base, aspect), key=lambda c: (
        round(abs(math.log(max(count_params(c, count), 1) / n_target)), 2),
        abs(math.log(c.d_model / c.num_layers / aspect))))

"""The decoder stack: embeddings -> [media merge] -> N pre-norm blocks -> logits.

Each block is attention + feed-forward (dense SwiGLU or MoE, chosen by the
config's layer pattern), sequential (x + attn, then + ffn) or parallel
(x + attn(norm x) + ffn(norm x)). Legend: B batch, T length, D model width,
V vocab, M media items per row, S slots per item.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.attention import Attention
from model.config import TransformerConfig
from model.encoders import MediaEncoders, merge_media
from model.layers import DenseGeneral, Embed, RMSNorm, SwiGLU, constrain, rope_tables
from model.moe import MoE

MoEMetrics = dict[str, jax.Array]


class DecoderBlock(nn.Module):
    """One pre-norm block; `moe` is None for a dense SwiGLU block."""
    num_heads: int
    num_kv_heads: int
    head_dim: int
    d_ff: int
    norm_eps: float
    parallel: bool = False
    moe: Any = None  # model.config.MoEConfig or None
    attention_backend: str = "xla"
    block_q: int = 512
    block_kv: int = 512
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    train: bool = False
    mode: str = "full"
    cache_len: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, sin: jax.Array, cos: jax.Array, segment_ids: jax.Array,
                 step_positions: jax.Array | None = None
                 ) -> tuple[jax.Array, MoEMetrics | None]:
        norm = lambda name: RMSNorm(self.norm_eps, self.dtype, self.param_dtype, name=name)
        attn = Attention(self.num_heads, self.num_kv_heads, self.head_dim,
                         self.attention_backend, self.block_q, self.block_kv, self.dtype,
                         self.param_dtype, self.mode, self.cache_len, name="attention")
        h = norm("pre_attention_norm")(x)
        a = attn(h, sin, cos, segment_ids, step_positions)
        if not self.parallel:
            x = x + a
            h = norm("pre_ffn_norm")(x)
        metrics = None
        if self.moe is None:
            f = SwiGLU(self.d_ff, self.dtype, self.param_dtype, name="mlp")(h)
        else:
            cfg = self.moe
            f, metrics = MoE(
                cfg.num_experts, cfg.top_k, cfg.expert_hidden, cfg.num_shared_experts,
                cfg.shared_hidden,
                cfg.capacity_factor_train if self.train else cfg.capacity_factor_eval,
                cfg.dispatch, self.dtype, self.param_dtype, name="moe")(h, segment_ids != 0)
        x = x + f + (a if self.parallel else 0)
        return constrain(x, ("batch", "length", "embed")), metrics


_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Transformer(nn.Module):
    """Multimodal decoder-only transformer; returns logits and per-MoE-layer metrics."""
    config: TransformerConfig
    train: bool = False
    mode: str = "full"  # 'full' | 'prefill' | 'step'
    cache_len: int = 0
    return_hidden: bool = False  # final normed hidden [B,T,D] instead of logits (chunked loss)

    @nn.compact
    def __call__(self, tokens: jax.Array, segment_ids: jax.Array, positions: jax.Array,
                 media: dict[str, dict[str, jax.Array]] | None = None,
                 step_positions: jax.Array | None = None
                 ) -> tuple[jax.Array, list[MoEMetrics]]:
        """tokens/segment_ids/positions [B,T] -> (logits [B,T,V] float32, metrics).

        `media` maps modality -> raw arrays from the batch (see model/models.py);
        their encodings replace the embeddings of that modality's placeholder tokens.
        """
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        embed = Embed(cfg.vocab_size, cfg.d_model, dtype, pdtype,
                      init_std=cfg.d_model ** -0.5 if cfg.tie_embeddings else 1.0, name="embed")
        x = embed(tokens)
        if cfg.scale_embeddings:
            x = x * jnp.asarray(cfg.d_model ** 0.5, dtype)
        if media:
            encoded = MediaEncoders(cfg, name="encoders")(media)
            for modality, (slots, valid) in encoded.items():
                x = merge_media(x, tokens, modality, slots, valid)
        x = constrain(x, ("batch", "length", "embed"))
        self.sow("intermediates", "decoder_inputs", x)  # embeddings after the media merge
        sin, cos = rope_tables(positions, cfg.head_dim, cfg.rope_base)

        block_cls = DecoderBlock
        if cfg.remat != "none" and self.mode == "full":
            block_cls = nn.remat(DecoderBlock, policy=_REMAT_POLICIES[cfg.remat])
        all_metrics: list[MoEMetrics] = []
        for i in range(cfg.num_layers):
            moe = cfg.moe if cfg.is_moe_layer(i) else None
            x, metrics = block_cls(
                cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.d_ff, cfg.norm_eps,
                cfg.parallel_block, moe, cfg.attention_backend, cfg.block_q, cfg.block_kv,
                dtype, pdtype, self.train, self.mode, self.cache_len,
                name=f"layer_{i}")(x, sin, cos, segment_ids, step_positions)
            if metrics is not None:
                all_metrics.append(metrics)
        x = RMSNorm(cfg.norm_eps, dtype, pdtype, name="final_norm")(x)
        if self.return_hidden and not self.is_initializing():
            return x, all_metrics
        if cfg.tie_embeddings:
            logits = embed.attend(x)
        else:
            logits = DenseGeneral((cfg.vocab_size,), ("embed", "vocab"), dtype, pdtype,
                                  name="logits")(x)
        logits = constrain(logits, ("batch", "length", "vocab"))
        return logits.astype(jnp.float32), all_metrics

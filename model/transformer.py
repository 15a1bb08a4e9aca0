"""The decoder stack: embeddings -> [media merge] -> N pre-norm blocks -> logits.

Each block is attention + feed-forward (dense SwiGLU or MoE, chosen by the
config's layer pattern), sequential (x + attn, then + ffn) or parallel
(x + attn(norm x) + ffn(norm x)). Layers are unrolled (params `layer_{i}`) or, with
`scan_layers`, one pattern period scanned R = num_layers / P times (params
`layers/layer_{j}` with a leading [R] axis; layer i = r * P + j).
Legend: B batch, T length, D model width, V vocab, M media items per row,
S slots per item, P pattern period, R repeats.
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
from model.nn import gating
from model.nn.memory import attend_with_memory

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
    memory: Any = None  # model.nn.memory_config.LayerMemory or None (no long-range memory)

    @nn.compact
    def __call__(self, x: jax.Array, sin: jax.Array, cos: jax.Array, segment_ids: jax.Array,
                 step_positions: jax.Array | None = None, positions: jax.Array | None = None
                 ) -> tuple[jax.Array, MoEMetrics | None]:
        norm = lambda name: RMSNorm(self.norm_eps, self.dtype, self.param_dtype, name=name)
        attn = Attention(self.num_heads, self.num_kv_heads, self.head_dim,
                         self.attention_backend, self.block_q, self.block_kv, self.dtype,
                         self.param_dtype, self.mode, self.cache_len, name="attention")
        pre_norm = norm("pre_attention_norm")
        h = pre_norm(x)
        if self.memory is None:
            a = attn(h, sin, cos, segment_ids, step_positions)
        else:  # positions [B,T]: where x's states go in the memory
            a = attend_with_memory(self, attn, pre_norm, self.memory, x, h, sin, cos,
                                   segment_ids, positions, step_positions, self.mode,
                                   self.norm_eps)
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


# config.REMAT_POLICIES name -> jax.checkpoint policy (None: save nothing).
REMAT_POLICIES = {
    "full": None,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}
SCAN_NAME = "layers"  # the scanned stack's module name and its params' logical axis


def _block_class(cfg: TransformerConfig, mode: str) -> type[nn.Module]:
    """DecoderBlock (or cfg.block_type's gated block, model/nn/gating.py), rematerialised
    per cfg.remat in training / scoring ('full' mode)."""
    block = DecoderBlock if cfg.block_type == "pre_norm" else gating.GatedDecoderBlock
    if cfg.remat == "none" or mode != "full":
        return block
    # Inside nn.scan the loop already keeps XLA from merging recomputation away.
    return nn.remat(block, policy=REMAT_POLICIES[cfg.remat],
                    prevent_cse=not cfg.scan_layers)


def _block(cfg: TransformerConfig, i: int, train: bool, mode: str, cache_len: int,
           name: str) -> nn.Module:
    """Decoder layer i (dense or MoE by the layer pattern)."""
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    moe = cfg.moe if cfg.is_moe_layer(i) else None
    memory = (None if cfg.memory is None
              else cfg.memory.for_layer(i, cfg.num_layers, cfg.rope_base))
    return _block_class(cfg, mode)(
        cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.d_ff, cfg.norm_eps,
        cfg.parallel_block, moe, cfg.attention_backend, cfg.block_q, cfg.block_kv,
        dtype, pdtype, train, mode, cache_len, **gating.block_fields(cfg), memory=memory, name=name)


class PatternPeriod(nn.Module):
    """Layers 0..P-1 of the layer pattern (P = len(pattern)): the body `nn.scan` repeats.

    x [B,T,D] -> (x, per-MoE-layer metrics of this period, in pattern order).
    """
    config: TransformerConfig
    train: bool = False
    mode: str = "full"
    cache_len: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, *args: jax.Array | None
                 ) -> tuple[jax.Array, tuple[MoEMetrics, ...]]:
        metrics = []
        for j in range(len(self.config.layer_pattern)):
            x, m = _block(self.config, j, self.train, self.mode, self.cache_len,
                          f"layer_{j}")(x, *args)
            if m is not None:
                metrics.append(m)
        return x, tuple(metrics)


def scanned_stack(cfg: TransformerConfig, train: bool, mode: str, cache_len: int
                  ) -> nn.Module:
    """`nn.scan` of PatternPeriod over R = num_layers / P repeats.

    Params and KV caches get a leading [R] axis (logical name 'layers', which the
    partition rules leave unsharded); the non-carry inputs are broadcast; each MoE
    metric comes back stacked [R, ...].
    """
    repeats = cfg.num_layers // len(cfg.layer_pattern)
    scan = nn.scan(PatternPeriod, variable_axes={"params": 0, "cache": 0},
                   split_rngs={"params": True}, in_axes=nn.broadcast, length=repeats,
                   metadata_params={nn.PARTITION_NAME: SCAN_NAME})
    return scan(cfg, train, mode, cache_len, name=SCAN_NAME)


def _layer_path(cfg: TransformerConfig, i: int) -> tuple[str, int]:
    """Unrolled layer i -> (its module name in the scanned period, its repeat index)."""
    p = len(cfg.layer_pattern)
    return f"layer_{i % p}", i // p


def stack_layers(params: dict, cfg: TransformerConfig) -> dict:
    """Unrolled params (layer_0..layer_{L-1}) -> the scan_layers layout (plain or boxed)."""
    out = {k: v for k, v in params.items() if not k.startswith("layer_")}
    p = len(cfg.layer_pattern)
    stacked = {}
    for j in range(p):
        layers = [params[f"layer_{i}"] for i in range(j, cfg.num_layers, p)]
        plain = [nn.meta.unbox(t) for t in layers]
        values = jax.tree.map(lambda *xs: jnp.stack(xs), *plain)
        boxed = nn.meta.add_axis(layers[0], 0, {nn.PARTITION_NAME: SCAN_NAME})
        stacked[f"layer_{j}"] = nn.meta.replace_boxed(boxed, values)
    out[SCAN_NAME] = stacked
    return out


def unstack_layers(params: dict, cfg: TransformerConfig) -> dict:
    """The scan_layers layout -> unrolled params (layer_0..layer_{L-1}); inverse of stack."""
    out = {k: v for k, v in params.items() if k != SCAN_NAME}
    for i in range(cfg.num_layers):
        name, r = _layer_path(cfg, i)
        tree = params[SCAN_NAME][name]
        values = jax.tree.map(lambda x: x[r], nn.meta.unbox(tree))
        unboxed = nn.meta.remove_axis(tree, 0, {nn.PARTITION_NAME: SCAN_NAME})
        out[f"layer_{i}"] = nn.meta.replace_boxed(unboxed, values)
    return out


def output_logits(cfg: TransformerConfig, embed: Embed, x: jax.Array) -> jax.Array:
    """Final hidden [B,T,D] -> float32 logits [B,T,V]: the tied embedding, or a `logits`
    projection created in the calling module's scope."""
    if cfg.tie_embeddings:
        logits = embed.attend(x)
    else:
        logits = DenseGeneral((cfg.vocab_size,), ("embed", "vocab"), jnp.dtype(cfg.dtype),
                              jnp.dtype(cfg.param_dtype), name="logits")(x)
    return constrain(logits, ("batch", "length", "vocab")).astype(jnp.float32)


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

        block_args = (sin, cos, segment_ids, step_positions)
        if cfg.memory is not None:  # memory layers store states at their positions
            block_args += (positions,)
        all_metrics: list[MoEMetrics] = []
        if cfg.scan_layers:
            x, stacked = scanned_stack(cfg, self.train, self.mode, self.cache_len)(
                x, *block_args)
            # Back to one dict per MoE layer, in layer order (layer i = r * P + j).
            for r in range(cfg.num_layers // len(cfg.layer_pattern)):
                all_metrics.extend({k: v[r] for k, v in m.items()} for m in stacked)
        else:
            for i in range(cfg.num_layers):
                x, metrics = _block(cfg, i, self.train, self.mode, self.cache_len,
                                    f"layer_{i}")(x, *block_args)
                if metrics is not None:
                    all_metrics.append(metrics)
        x = RMSNorm(cfg.norm_eps, dtype, pdtype, name="final_norm")(x)
        if self.return_hidden and not self.is_initializing():
            return x, all_metrics
        return output_logits(cfg, embed, x), all_metrics

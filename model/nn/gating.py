"""GTrXL (Parisotto et al. 2019): identity-map reordering and gated residuals.

    model_config.overrides = {'block_type': 'gtrxl', 'gate': 'gru', 'gate_bias': 2.0}

Block types (TransformerConfig.block_type; model/transformer.py picks the class):
  'pre_norm'  today's block: x + attn(norm x), then + ffn(norm ·)  (DecoderBlock)
  'trxl_i'    identity-map reordering (TrXL-I): x + relu(attn(norm x)), then
              + relu(ffn(norm ·)): a ReLU on each sub-layer's output
  'gtrxl'     TrXL-I with each residual sum replaced by a gate g(x, y), y = relu(sublayer)
  'post_norm' the original Transformer: norm(x + attn(x)), then norm(· + ffn(·)), no gate
              (the baseline GTrXL is compared against)

Gates g(x, y), x the stream entering the sub-layer, y its (ReLU'd) output; b the gate
bias (`gate_bias`, 2 by default, as in the paper):
  'gru'           r = σ(W_r y + U_r x), z = σ(W_z y + U_z x - b),
                  h = tanh(W_g y + U_g (r ⊙ x)),  g = (1 - z) ⊙ x + z ⊙ h
  'input'         g = σ(W_g x) ⊙ x + y
  'output'        g = x + σ(W_g x - b) ⊙ y
  'highway'       c = σ(W_g x + b),  g = c ⊙ x + (1 - c) ⊙ y
  'sigmoid_tanh'  g = x + σ(W_g y - b) ⊙ tanh(U_g y)
With b large, every gate except 'input' starts as the identity map g(x, y) = x, so a
deep stack starts as a shallow one (the paper's argument for stable RL training).
Long-range memory (TransformerConfig.memory: Transformer-XL / compressive, model/nn/
memory.py) works with every block type: attention reads [memory; segment] as in
DecoderBlock.
Legend: B batch, T length, D model width.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.attention import Attention
from model.layers import DenseGeneral, RMSNorm, SwiGLU, constrain
from model.moe import MoE
from model.nn.memory import attend_with_memory

from model.config import BLOCK_TYPES, GATES  # noqa: F401  (the names config validates)


class Gate(nn.Module):
    """g(x, y) for x, y [B,T,D] (see the module docstring); float32 inside."""
    kind: str = "gru"
    bias: float = 2.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        if self.kind not in GATES:
            raise ValueError(f"Gate.kind={self.kind!r}: choose one of {GATES}")
        d = x.shape[-1]
        lin = lambda name: (lambda v: DenseGeneral((d,), ("embed", "mlp"), self.dtype,
                                                   self.param_dtype, name=name)(v)
                            .astype(jnp.float32))
        xf, yf = x.astype(jnp.float32), y.astype(jnp.float32)
        b = self.bias
        if self.kind == "gru":
            r = nn.sigmoid(lin("w_r")(y) + lin("u_r")(x))
            z = nn.sigmoid(lin("w_z")(y) + lin("u_z")(x) - b)
            h = jnp.tanh(lin("w_g")(y) + lin("u_g")((r * xf).astype(x.dtype)))
            out = (1.0 - z) * xf + z * h
        elif self.kind == "input":
            out = nn.sigmoid(lin("w_g")(x)) * xf + yf
        elif self.kind == "output":
            out = xf + nn.sigmoid(lin("w_g")(x) - b) * yf
        elif self.kind == "highway":
            c = nn.sigmoid(lin("w_g")(x) + b)
            out = c * xf + (1.0 - c) * yf
        else:  # sigmoid_tanh
            out = xf + nn.sigmoid(lin("w_g")(y) - b) * jnp.tanh(lin("u_g")(y))
        return out.astype(x.dtype)


class GatedDecoderBlock(nn.Module):
    """A TrXL-I, GTrXL or post-norm decoder block, constructed like model.transformer.DecoderBlock
    (same leading fields, so `_block` builds either) plus the block type and gate."""
    num_heads: int
    num_kv_heads: int
    head_dim: int
    d_ff: int
    norm_eps: float
    parallel: bool = False
    moe: Any = None
    attention_backend: str = "xla"
    block_q: int = 512
    block_kv: int = 512
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    train: bool = False
    mode: str = "full"
    cache_len: int = 0
    memory: Any = None  # model.nn.memory_config.LayerMemory or None
    block_type: str = "gtrxl"
    gate: str = "gru"
    gate_bias: float = 2.0

    def _residual(self, x: jax.Array, y: jax.Array, name: str) -> jax.Array:
        if self.block_type == "post_norm":
            return RMSNorm(self.norm_eps, self.dtype, self.param_dtype,
                           name=name.replace("_gate", "_post_norm"))(x + y)
        y = nn.relu(y)
        if self.block_type == "trxl_i":
            return x + y
        return Gate(self.gate, self.gate_bias, self.dtype, self.param_dtype, name=name)(x, y)

    @nn.compact
    def __call__(self, x: jax.Array, sin: jax.Array, cos: jax.Array, segment_ids: jax.Array,
                 step_positions: jax.Array | None = None, positions: jax.Array | None = None
                 ) -> tuple[jax.Array, dict[str, jax.Array] | None]:
        if self.parallel:
            raise ValueError(f"block_type={self.block_type!r} does not support parallel_block; "
                             "use block_type='pre_norm'")
        norm = lambda name: RMSNorm(self.norm_eps, self.dtype, self.param_dtype, name=name)
        attn = Attention(self.num_heads, self.num_kv_heads, self.head_dim,
                         self.attention_backend, self.block_q, self.block_kv, self.dtype,
                         self.param_dtype, self.mode, self.cache_len, name="attention")
        pre = (lambda name: (lambda v: v)) if self.block_type == "post_norm" else norm
        pre_norm = pre("pre_attention_norm")
        h = pre_norm(x)
        if self.memory is None:
            a = attn(h, sin, cos, segment_ids, step_positions)
        else:  # long-range memory (model/nn/memory.py), as in DecoderBlock
            a = attend_with_memory(self, attn, pre_norm, self.memory, x, h, sin, cos,
                                   segment_ids, positions, step_positions, self.mode,
                                   self.norm_eps)
        x = self._residual(x, a, "attention_gate")
        h = pre("pre_ffn_norm")(x)
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
        x = self._residual(x, f, "ffn_gate")
        return constrain(x, ("batch", "length", "embed")), metrics


def block_fields(cfg: Any) -> dict[str, Any]:
    """The extra constructor fields of cfg's block class ({} for 'pre_norm')."""
    if cfg.block_type == "pre_norm":
        return {}
    return {"block_type": cfg.block_type, "gate": cfg.gate, "gate_bias": cfg.gate_bias}

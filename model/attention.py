"""Grouped-query self-attention with rotary positions, three backends and a KV cache.

Backends (gin: `model_config.overrides = {'attention_backend': ...}`):
  'xla'       jax.nn.dot_product_attention(implementation='xla'): materialises
              [B, N, T, S] logits; fastest on CPU at short lengths.
  'blockwise' pure-JAX flash attention (model/blockwise_attention.py): memory
              linear in length, recomputation in the backward pass; any device.
  'cudnn'     jax.nn.dot_product_attention(implementation='cudnn'): GPU, bf16/fp16.
  'context'   context parallelism (model/nn/context_parallel.py): the row split over
              the mesh's 'context' axis; ring or all-gathered K/V.

Modes: 'full' (training / scoring), 'prefill' (full pass that also writes the KV
cache), 'step' (one new token per row at its own position, reading the cache).

Legend: B batch, T query length, S key length, D model width, N query heads,
K kv heads, H head dim.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.blockwise_attention import blockwise_attention
from model.layers import DenseGeneral, Dtype, apply_rope, constrain
from model.nn import memory_attention
from model.nn.context_parallel import context_parallel_attention

MODES = ("full", "prefill", "step")


def segment_causal_mask(segment_ids: jax.Array) -> jax.Array:
    """[B, T, T] bool: same packed segment and key index <= query index."""
    t = segment_ids.shape[1]
    causal = jnp.arange(t)[None, :] <= jnp.arange(t)[:, None]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return same & causal[None]


def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                  implementation: str = "xla") -> jax.Array:
    """q [B,T,N,H], k/v [B,S,K,H], mask [B,T,S] bool -> [B,T,N,H]."""
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation=implementation)


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array
                    ) -> jax.Array:
    """cuDNN fused attention (GPU, bf16/fp16): q [B,T,N,H], k/v [B,T,K,H] -> [B,T,N,H].

    The causal structure is cuDNN's own; packed segments go in as a [B,1,T,T] mask,
    so memory is quadratic in T (use 'blockwise' for very long rows).
    """
    same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
    return jax.nn.dot_product_attention(q, k, v, mask=same, is_causal=True,
                                        implementation="cudnn")


class Attention(nn.Module):
    """Multi-head / multi-query / grouped-query attention (num_kv_heads 1..num_heads)."""
    num_heads: int
    num_kv_heads: int
    head_dim: int
    backend: str = "xla"
    block_q: int = 512
    block_kv: int = 512
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    mode: str = "full"
    cache_len: int = 0  # KV-cache length for 'prefill' / 'step'

    @nn.compact
    def __call__(self, x: jax.Array, sin: jax.Array, cos: jax.Array,
                 segment_ids: jax.Array, step_positions: jax.Array | None = None,
                 context: memory_attention.Context | None = None
                 ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """x [B,T,D]; sin/cos [B,T,H/2]; segment_ids [B,T]; step_positions [B] ('step').

        With `context` (long-range memory, model/nn/memory.py) the keys are [context; x]
        and the result is (out, attention mass per key [B, C + S])."""
        if self.mode not in MODES:
            raise ValueError(f"Attention.mode={self.mode!r}: choose one of {MODES}")
        d = x.shape[-1]
        n, nkv, h = self.num_heads, self.num_kv_heads, self.head_dim
        proj = lambda feats, axes, name: DenseGeneral(feats, axes, self.dtype, self.param_dtype,
                                                      name=name)
        q = proj((n, h), ("embed", "heads", "head_dim"), "query")(x)
        key = proj((nkv, h), ("embed", "kv_heads", "head_dim"), "key")
        value = proj((nkv, h), ("embed", "kv_heads", "head_dim"), "value")
        k, v = key(x), value(x)
        q = apply_rope(q, sin, cos)
        k = apply_rope(k, sin, cos)
        q = constrain(q, ("batch", "length", "heads", "head_dim"))
        k = constrain(k, ("batch", "length", "kv_heads", "head_dim"))
        v = constrain(v, ("batch", "length", "kv_heads", "head_dim"))

        usage = None
        if context is not None:
            ck = apply_rope(key(context.h), context.sin, context.cos)
            out, usage = self._with_context(q, k, v, segment_ids, step_positions, ck,
                                            value(context.h), context.seg)
        elif self.mode == "step":
            out = self._step(q, k, v, step_positions)
        else:
            if self.mode == "prefill":
                self._write_prefill(k, v)
            out = self._self_attention(q, k, v, segment_ids)
        out = constrain(out, ("batch", "length", "heads", "head_dim"))
        y = DenseGeneral((d,), ("heads", "head_dim", "embed"), self.dtype, self.param_dtype,
                         in_axes=2, name="out")(out)
        return y if context is None else (y, usage)

    def _with_context(self, q, k, v, segment_ids, step_positions, ck, cv, ctx_seg):
        """Attention over [context; segment (or KV cache)], explicit softmax."""
        if self.mode == "step":
            k, v, self_mask = self._step_write(k, v, step_positions)
        else:
            if self.mode == "prefill":
                self._write_prefill(k, v)
            self_mask = segment_causal_mask(segment_ids)
        ctx_mask = memory_attention.context_mask(segment_ids, ctx_seg, self.mode == "full")
        ctx_mask = jnp.broadcast_to(ctx_mask, self_mask.shape[:2] + ctx_mask.shape[2:])
        return memory_attention.attend(q, jnp.concatenate([ck, k], axis=1),
                                       jnp.concatenate([cv, v], axis=1),
                                       jnp.concatenate([ctx_mask, self_mask], axis=-1))

    def _self_attention(self, q, k, v, segment_ids):
        if self.backend == "blockwise":
            return blockwise_attention(q, k, v, segment_ids, block_q=self.block_q,
                                       block_kv=self.block_kv)
        if self.backend == "cudnn":
            return cudnn_attention(q, k, v, segment_ids)
        if self.backend == "context":  # one sequence split over the mesh's 'context' axis
            return context_parallel_attention(q, k, v, segment_ids)
        return xla_attention(q, k, v, segment_causal_mask(segment_ids))

    def _cache_vars(self, b: int, dtype):
        shape = (b, self.cache_len, self.num_kv_heads, self.head_dim)
        ck = self.variable("cache", "cached_key", jnp.zeros, shape, dtype)
        cv = self.variable("cache", "cached_value", jnp.zeros, shape, dtype)
        return ck, cv

    def _write_prefill(self, k, v):
        b, t = k.shape[:2]
        if t > self.cache_len:
            raise ValueError(f"prompt length {t} exceeds the KV cache length {self.cache_len}")
        ck, cv = self._cache_vars(b, k.dtype)
        ck.value = jax.lax.dynamic_update_slice_in_dim(ck.value, k, 0, axis=1)
        cv.value = jax.lax.dynamic_update_slice_in_dim(cv.value, v, 0, axis=1)

    def _step_write(self, k, v, positions):
        """k/v [B,1,K,H] written at each row's position -> (cache k, cache v, mask [B,1,S])."""
        ck, cv = self._cache_vars(k.shape[0], k.dtype)
        write = lambda cache, new, p: jax.lax.dynamic_update_slice_in_dim(cache, new, p, axis=0)
        ck.value = jax.vmap(write)(ck.value, k, positions)
        cv.value = jax.vmap(write)(cv.value, v, positions)
        mask = jnp.arange(self.cache_len)[None, None, :] <= positions[:, None, None]  # [B,1,S]
        return ck.value, cv.value, mask

    def _step(self, q, k, v, positions):
        """q [B,1,N,H], k/v [B,1,K,H]: write at each row's position, attend keys <= it."""
        ck, cv, mask = self._step_write(k, v, positions)
        impl = "cudnn" if self.backend == "cudnn" else "xla"
        if impl == "cudnn":  # cuDNN decode: lengths instead of a mask
            return jax.nn.dot_product_attention(
                q, ck, cv, key_value_seq_lengths=(positions + 1).astype(jnp.int32),
                implementation="cudnn")
        return xla_attention(q, ck, cv, mask)

"""Memory compressors of the Compressive Transformer (Rae et al. 2019), rate c.

old memories [B, n, D] -> compressed [B, n / c, D]:
  'max_pool' / 'mean_pool'  pool each run of c states;
  'conv'                    1-D convolution with kernel = stride = c (a learned [c*D, D]
                            map of each run; trained by the attention-reconstruction loss);
  'most_used'               keep the n / c states with the most attention (usage), in order;
  'identity'                c = 1 only (tests: compressive memory equals plain memory).
A compressed slot belongs to a document only if all c of its sources did (segment id
kept), else it is dropped (segment id 0): compression never mixes documents.
Legend: B batch, n old states, D width, c rate.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.layers import DenseGeneral


def group(x: jax.Array, c: int) -> jax.Array:
    """[B, n, ...] -> [B, n / c, c, ...]."""
    b, n = x.shape[:2]
    if n % c:
        raise ValueError(f"{n} states leave the memory per segment, not a multiple of "
                         f"compression_rate={c}: make the segment length a multiple of it")
    return x.reshape(b, n // c, c, *x.shape[2:])


def compress_ids(seg: jax.Array, pos: jax.Array, c: int) -> tuple[jax.Array, jax.Array]:
    """seg/pos [B, n] -> [B, n/c]: the last source's position; seg 0 unless all agree."""
    gs, gp = group(seg, c), group(pos, c)
    same = jnp.all(gs == gs[:, :, :1], axis=-1)
    return jnp.where(same, gs[:, :, -1], 0), gp[:, :, -1]


def most_used(x: jax.Array, seg: jax.Array, pos: jax.Array, usage: jax.Array, c: int
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Keep the n / c most-attended states of each row, in their original order."""
    k = x.shape[1] // c
    score = jnp.where(seg != 0, usage, -1.0)
    _, idx = jax.lax.top_k(score, k)
    idx = jnp.sort(idx, axis=-1)
    take = lambda a: jnp.take_along_axis(a, idx.reshape(idx.shape + (1,) * (a.ndim - 2)), 1)
    return take(x), take(seg), take(pos)


class Compressor(nn.Module):
    """old [B, n, D] (+ seg/pos [B, n], usage [B, n]) -> ([B, n/c, D], seg, pos)."""
    rate: int
    kind: str
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, old: jax.Array, seg: jax.Array, pos: jax.Array,
                 usage: jax.Array | None = None):
        c = self.rate
        if self.kind == "most_used":
            return most_used(old, seg, pos, usage, c)
        cseg, cpos = compress_ids(seg, pos, c)
        if self.kind == "identity":
            if c != 1:
                raise ValueError("the identity compressor needs compression_rate=1")
            return old, cseg, cpos
        g = group(old, c)  # [B, n/c, c, D]
        if self.kind == "max_pool":
            out = jnp.max(g, axis=2)
        elif self.kind == "mean_pool":
            out = jnp.mean(g, axis=2)
        elif self.kind == "conv":
            out = DenseGeneral((old.shape[-1],), (None, None, "embed"), self.dtype,
                               self.param_dtype, in_axes=2, name="conv")(g)
        else:
            raise ValueError(f"unknown compressor {self.kind!r}")
        return out.astype(old.dtype), cseg, cpos

"""Attention over [memory; segment]: explicit softmax, with the attention mass per key.

The memory path's attention is the plain [B, N, T, S] computation (float32 softmax,
scale H^-0.5, as jax.nn.dot_product_attention), because the 'most_used' compressor
needs how much attention each key received. Memories are short (mem + cmem keys per
query), so the quadratic form costs S = ctx + T per query, not the book's length.
Legend: B batch, T queries, S keys (context + segment), N query heads, K kv heads,
G = N / K, H head dim, C context (memory) length.
"""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class Context:
    """Earlier states a layer attends besides its segment: normed h [B,C,D], their rotary
    tables sin/cos [B,C,H/2] and segment (document) ids seg [B,C] (0 = empty slot)."""
    h: jax.Array
    sin: jax.Array
    cos: jax.Array
    seg: jax.Array


def context_mask(q_seg: jax.Array, ctx_seg: jax.Array, match_segments: bool) -> jax.Array:
    """[B,T,C] bool: a query sees a memory slot of its own document (match_segments), or
    any filled slot (decoding, where each row is one document)."""
    filled = (ctx_seg != 0)[:, None, :]
    if not match_segments:
        return jnp.broadcast_to(filled, (q_seg.shape[0], q_seg.shape[1], ctx_seg.shape[1]))
    return filled & (q_seg[:, :, None] == ctx_seg[:, None, :])


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array
           ) -> tuple[jax.Array, jax.Array]:
    """q [B,T,N,H], k/v [B,S,K,H], mask [B,T,S] -> (out [B,T,N,H], usage [B,S]).

    usage: attention probability each key received, summed over queries, mean over heads.
    """
    b, t, n, h = q.shape
    kh = k.shape[2]
    qg = q.reshape(b, t, kh, n // kh, h).astype(jnp.float32)
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", qg, k.astype(jnp.float32)) * h ** -0.5
    logits = jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v.astype(jnp.float32))
    usage = jnp.sum(probs, axis=(1, 2, 3)) / n
    return out.reshape(b, t, n, h).astype(q.dtype), usage

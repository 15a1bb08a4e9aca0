"""Context parallelism: one sequence split over the mesh axis 'context'.

With `Partitioner(mesh_shape=(data, expert, model, context))` and the logical rule
('length', 'context') (gin/experiments/cp_*.gin), every [B, L, ...] activation is split
along L over the context axis, so each device holds L / n positions of every row:
embeddings, norms, projections, feed-forward and loss are position-wise and need no
communication. Attention is the one place a position needs the others' keys and
values; the 'context' attention backend (model/attention.py) runs it under
`jax.shard_map` in one of two ways:

  'allgather'  all-gather K, V and segment ids along the axis, attend locally:
               one collective, but [B, L, K, H] per device (fine for short rows);
  'ring'       ring attention: n steps, each attends the K/V block it holds (flash-style
               running max / sum) and passes it to the next device (`ppermute`), so
               per-device memory stays [B, L / n, ...] (rows longer than one device holds);
  'auto'       'allgather' while L <= allgather_max_len, else 'ring'.
Without a 'context' axis in the current mesh (or of size 1) it is plain attention.

Causal masking uses global positions (shard i holds i*L/n ... (i+1)*L/n - 1), packed
segments use the segment ids that travel with K/V. Blocks are not zig-zag balanced:
the last shard does the most work (n steps of which only the ones at or below the
diagonal contribute).
Legend: B batch, t = L / n local length, N query heads, K kv heads, G = N / K, H head dim.
"""
from __future__ import annotations

import functools

import gin
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

CONTEXT_AXIS = "context"
STRATEGIES = ("auto", "ring", "allgather")
_NEG = -1e30


@gin.configurable
def context_parallel_settings(strategy: str = "auto", allgather_max_len: int = 8192
                              ) -> tuple[str, int]:
    """gin: context_parallel_settings.strategy = 'ring' (see the module doc)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"context_parallel_settings.strategy={strategy!r}: choose one of "
                         f"{STRATEGIES}")
    return strategy, allgather_max_len


def _block_scores(q, k, mask):
    """q [B,t,K,G,H], k [B,s,K,H], mask [B,t,s] -> logits [B,K,G,t,s] float32 (masked)."""
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, k.astype(jnp.float32)) * q.shape[-1] ** -0.5
    return jnp.where(mask[:, None, None], logits, _NEG)


def _mask(q_pos, k_pos, q_seg, k_seg):
    return (q_pos[:, None] >= k_pos[None, :])[None] & (q_seg[:, :, None] == k_seg[:, None, :])


def allgather_attention(q, k, v, seg, axis: str, n: int):
    """Local shards q [B,t,N,H], k/v [B,t,K,H], seg [B,t] -> out [B,t,N,H]."""
    b, t, nh, h = q.shape
    kh = k.shape[2]
    i = jax.lax.axis_index(axis)
    k_all = jax.lax.all_gather(k, axis, axis=1, tiled=True)
    v_all = jax.lax.all_gather(v, axis, axis=1, tiled=True)
    seg_all = jax.lax.all_gather(seg, axis, axis=1, tiled=True)
    q_pos = i * t + jnp.arange(t)
    qg = q.reshape(b, t, kh, nh // kh, h).astype(jnp.float32)
    logits = _block_scores(qg, k_all, _mask(q_pos, jnp.arange(n * t), seg, seg_all))
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v_all.astype(jnp.float32))
    return out.reshape(b, t, nh, h).astype(q.dtype)


def ring_attention(q, k, v, seg, axis: str, n: int):
    """Local shards q [B,t,N,H], k/v [B,t,K,H], seg [B,t] -> out [B,t,N,H]; K/V blocks
    travel around the ring, the softmax is accumulated online."""
    b, t, nh, h = q.shape
    kh = k.shape[2]
    i = jax.lax.axis_index(axis)
    q_pos = i * t + jnp.arange(t)
    qg = q.reshape(b, t, kh, nh // kh, h).astype(jnp.float32)
    perm = [(j, (j + 1) % n) for j in range(n)]

    @jax.checkpoint  # the backward pass recomputes each block's scores: O(t) saved per step
    def body(s, carry):
        m, l, acc, k, v, kseg = carry
        src = (i - s) % n  # the shard this K/V block came from
        mask = _mask(q_pos, src * t + jnp.arange(t), seg, kseg)
        logits = _block_scores(qg, k, mask)
        m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
        p = jnp.exp(logits - m_new[..., None]) * mask[:, None, None]
        corr = jnp.exp(m - m_new)
        l = l * corr + jnp.sum(p, axis=-1)
        acc = acc * corr[..., None] + jnp.einsum("BKGTS,BSKH->BKGTH", p, v.astype(jnp.float32))
        k, v, kseg = (jax.lax.ppermute(x, axis, perm) for x in (k, v, kseg))
        return m_new, l, acc, k, v, kseg

    shape = (b, kh, nh // kh, t)
    init = (jnp.full(shape, _NEG, jnp.float32), jnp.zeros(shape, jnp.float32),
            jnp.zeros(shape + (h,), jnp.float32), k, v, seg)
    _, l, acc, *_ = jax.lax.fori_loop(0, n, body, init)
    out = acc / jnp.maximum(l, 1e-30)[..., None]  # [B,K,G,t,H]
    return jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(b, t, nh, h).astype(q.dtype)


def _local_attention(q, k, v, seg):
    b, t, nh, h = q.shape
    kh = k.shape[2]
    qg = q.reshape(b, t, kh, nh // kh, h).astype(jnp.float32)
    pos = jnp.arange(t)
    probs = jax.nn.softmax(_block_scores(qg, k, _mask(pos, pos, seg, seg)), axis=-1)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v.astype(jnp.float32))
    return out.reshape(b, t, nh, h).astype(q.dtype)


def context_parallel_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                               segment_ids: jax.Array, strategy: str | None = None,
                               allgather_max_len: int | None = None) -> jax.Array:
    """Causal packed attention of global q [B,L,N,H], k/v [B,L,K,H], segment_ids [B,L],
    split over the current mesh's 'context' axis (jax.set_mesh, as Partitioner.jit does)."""
    default_strategy, default_max = context_parallel_settings()
    strategy = strategy or default_strategy
    allgather_max_len = allgather_max_len or default_max
    mesh = jax.sharding.get_abstract_mesh()
    if CONTEXT_AXIS not in mesh.axis_names or mesh.shape[CONTEXT_AXIS] == 1:
        # No split (e.g. jax.eval_shape outside the mesh, or one device): plain attention.
        return _local_attention(q, k, v, segment_ids)
    n = mesh.shape[CONTEXT_AXIS]
    length = q.shape[1]
    if length % n:
        raise ValueError(f"sequence length {length} must be a multiple of the context axis "
                         f"size {n}")
    if strategy == "auto":
        strategy = "allgather" if length <= allgather_max_len else "ring"
    batch = tuple(a for a in ("data", "expert") if a in mesh.axis_names)
    heads = "model" if ("model" in mesh.axis_names and k.shape[2] % mesh.shape["model"] == 0
                        and q.shape[2] % mesh.shape["model"] == 0) else None
    qkv = P(batch, CONTEXT_AXIS, heads, None)
    kernel = ring_attention if strategy == "ring" else allgather_attention
    fn = jax.shard_map(functools.partial(kernel, axis=CONTEXT_AXIS, n=n), mesh=mesh,
                       in_specs=(qkv, qkv, qkv, P(batch, CONTEXT_AXIS)), out_specs=qkv,
                       check_vma=False)
    return fn(q, k, v, segment_ids)

"""Per-layer long-range memory: FIFO state, the [memory; segment] attention step, compression.

A decoder layer with memory (model/nn/memory_config.py: LayerMemory) keeps, in the flax
collection 'memory', its last `mem_len` input hidden states x (pre-norm, stop-gradient)
with their document (segment) ids and absolute positions, and optionally `cmem_len`
compressed ones. Per segment of T tokens:

    ctx   = [cmem; mem]                          [B, C, D]   C = cmem_len + mem_len
    attn  = Attention(q = norm(x), kv = norm([ctx; x]))   (RoPE at each state's position)
    [mem; x] -> mem keeps the last mem_len; the T oldest leave it,
    leaving -> Compressor (rate c) -> appended to cmem (keeps the last cmem_len).

A query sees a memory slot only if it is of the same document (segment id), so packed
rows that start a new document never read the previous one's memory: memory is reset at
document boundaries by construction. Segment ids that continue across steps must name
the same document (tasks/long_books.py uses book ids). Gradients never flow into
memories (Transformer-XL's SG). The conv compressor is trained by the attention-
reconstruction loss: content attention of norm(x) over the leaving states vs over their
compression, with the layer's weights stop-gradiented; sown into 'memory_losses'.
Legend: B batch, T segment length, C memory slots, D width, n = T leaving states.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.layers import rope_tables
from model.nn.compress import Compressor
from model.nn.memory_attention import Context, attend
from model.nn.memory_config import LayerMemory

MEMORY = "memory"            # flax collection of the FIFO state
LOSSES = "memory_losses"     # flax collection of sown reconstruction losses


def _fifo(old: jax.Array, new: jax.Array, keep: int) -> tuple[jax.Array, jax.Array]:
    """[old; new] along axis 1 -> (last `keep`, the rest that leaves)."""
    both = jnp.concatenate([old, new], axis=1)
    cut = both.shape[1] - keep
    return both[:, cut:], both[:, :cut]


class _Empty:
    """An empty memory slot array where the caller passed no 'memory' (read-only use)."""
    def __init__(self, shape, dtype):
        self.value = jnp.zeros(shape, dtype)


def memory_state(module: nn.Module, spec: LayerMemory, b: int, d: int, dtype: Any
                 ) -> dict[str, Any]:
    """The layer's memory variables (created empty: segment id 0 = empty slot)."""
    def var(name, shape, dt):
        if module.is_mutable_collection(MEMORY) or module.has_variable(MEMORY, name):
            return module.variable(MEMORY, name, jnp.zeros, shape, dt)
        return _Empty(shape, dt)

    out = {}
    for prefix, length in (("mem", spec.mem_len), ("cmem", spec.cmem_len)):
        if not length:
            continue
        out[prefix] = var(prefix, (b, length, d), dtype)
        out[prefix + "_seg"] = var(prefix + "_seg", (b, length), jnp.int32)
        out[prefix + "_pos"] = var(prefix + "_pos", (b, length), jnp.int32)
    if spec.compressor == "most_used" and spec.cmem_len and spec.mem_len:
        out["mem_usage"] = var("mem_usage", (b, spec.mem_len), jnp.float32)
    return out


def _rms(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return y * scale.astype(jnp.float32)


def reconstruction_loss(attn_params: dict, norm_scale: jax.Array, eps: float,
                        h: jax.Array, q_seg: jax.Array, old: jax.Array, old_seg: jax.Array,
                        comp: jax.Array, comp_seg: jax.Array) -> jax.Array:
    """Mean squared difference of content attention (no positions) of queries norm(x)
    [B,T,D] over the leaving states [B,n,D] vs over their compression [B,n/c,D].

    Only `comp` carries gradient (into the compressor): the layer's projections and
    norm scale, the queries and the old states are stop-gradiented."""
    sg = jax.lax.stop_gradient
    w = {k: sg(nn.meta.unbox(attn_params[k]["kernel"])).astype(jnp.float32)
         for k in ("query", "key", "value")}
    scale = sg(nn.meta.unbox(norm_scale))
    q = jnp.einsum("BTD,DNH->BTNH", sg(h).astype(jnp.float32), w["query"])

    def over(states, seg):
        hs = _rms(states, scale, eps)
        k = jnp.einsum("BSD,DKH->BSKH", hs, w["key"])
        v = jnp.einsum("BSD,DKH->BSKH", hs, w["value"])
        mask = (q_seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)
        return attend(q, k, v, mask)[0], jnp.any(mask, axis=-1)

    target, has_old = over(sg(old), old_seg)
    approx, has_comp = over(comp, comp_seg)
    valid = (has_old & has_comp).astype(jnp.float32)  # [B,T]
    err = jnp.mean((target - approx) ** 2, axis=(2, 3))
    return jnp.sum(err * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def attend_with_memory(block: nn.Module, attn: nn.Module, pre_norm: nn.Module,
                       spec: LayerMemory, x: jax.Array, h: jax.Array, sin: jax.Array,
                       cos: jax.Array, segment_ids: jax.Array, positions: jax.Array,
                       step_positions: jax.Array | None, mode: str, norm_eps: float
                       ) -> jax.Array:
    """One layer's attention over [cmem; mem; segment]; in 'full' mode also advances the
    memory. x [B,T,D] layer input, h = pre_norm(x); positions/segment_ids [B,T]."""
    b, t, d = x.shape
    state = memory_state(block, spec, b, d, x.dtype)
    names = [p for p in ("cmem", "mem") if p in state]
    sg = jax.lax.stop_gradient
    ctx_x = sg(jnp.concatenate([state[p].value for p in names], axis=1))
    ctx_seg = jnp.concatenate([state[p + "_seg"].value for p in names], axis=1)
    ctx_pos = jnp.concatenate([state[p + "_pos"].value for p in names], axis=1)
    ctx_sin, ctx_cos = rope_tables(ctx_pos, attn.head_dim, spec.rope_base)
    context = Context(pre_norm(ctx_x), ctx_sin, ctx_cos, ctx_seg)
    out, usage = attn(h, sin, cos, segment_ids, step_positions, context=context)
    if mode != "full":  # decoding reads the memory; the caller advances it per segment
        return out

    new = (sg(x), segment_ids, positions)
    if "mem" in state:
        leaving = []
        for suffix, value in zip(("", "_seg", "_pos"), new):
            kept, gone = _fifo(state["mem" + suffix].value, value, spec.mem_len)
            state["mem" + suffix].value = kept
            leaving.append(gone)
    else:  # compressive memory only: the whole segment leaves at once
        leaving = list(new)
    if "cmem" not in state:
        return out
    leave_usage = None
    if spec.compressor == "most_used":  # attention mass each state received while in mem
        c = ctx_x.shape[1]
        leave_usage = sg(usage[:, c:])
        if "mem_usage" in state:
            mem_usage = state["mem_usage"].value + sg(usage[:, spec.cmem_len:c])
            kept, leave_usage = _fifo(mem_usage, leave_usage, spec.mem_len)
            state["mem_usage"].value = kept
    compressor = Compressor(spec.compression_rate, spec.compressor, block.dtype,
                            block.param_dtype, name="memory_compressor")
    comp, comp_seg, comp_pos = compressor(*leaving, leave_usage)
    for suffix, value in zip(("", "_seg", "_pos"), (comp, comp_seg, comp_pos)):
        state["cmem" + suffix].value = _fifo(state["cmem" + suffix].value, sg(value),
                                             spec.cmem_len)[0]
    if spec.compressor == "conv":
        loss = reconstruction_loss(attn.variables["params"],
                                   pre_norm.variables["params"]["scale"], norm_eps,
                                   h, segment_ids, leaving[0], leaving[1], comp, comp_seg)
        block.sow(LOSSES, "reconstruction", loss)
    return out


def empty_memory(model: Any, params: Any, batch: Any) -> Any:
    """The 'memory' collection of `model` (a DecoderOnlyModel with memory) for batch's
    shapes, every slot empty: what a fresh document or a resumed run starts from."""
    shapes = jax.eval_shape(lambda p: model._forward(model.module(), p, batch)[1]["memory"],
                            params)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

"""Mixture-of-experts feed-forward: float32 top-k router, two dispatch paths.

Routing: logits = x W_r in float32; the k largest logits per token are chosen
and their gates are softmax over those k. Losses (returned unscaled):
  aux    = E^2 * mean_e(f_e * P_e), f_e = share of routed assignments to expert e,
           P_e = mean full-softmax router probability of e (1.0 when balanced);
  z      = mean_t logsumexp(logits_t)^2.
Padding tokens (token_mask False) are not routed and count nowhere.

Dispatch paths behind one interface:
  'capacity': per group (one batch row), assignments are ranked choice-major
     (all first choices before any second choice, then by position) and the
     first C_b per expert kept, C_b = ceil(cf * T_b * k / E) with T_b the row's
     real (unpadded) tokens, so padding never changes what real tokens get: eval
     scores do not depend on the bucket length. Buffers are sized by the padded
     length (C = ceil(cf * T * k / E) >= C_b); kept tokens are gathered into
     [E, B*C, D] buffers, experts run as one batched einsum, results are gathered
     back and gate-weighted. Overflow is dropped (the residual carries the token).
     Gathers instead of one-hot dispatch einsums: O(T*k*D), not O(T*E*C*D).
  'dropless': assignments sorted by expert and run through
     `jax.lax.ragged_dot` (grouped matmul); nothing is dropped. On CPU
     ragged_dot lowers to a dense masked product (~E x FLOPs): use on GPU.
On a mesh whose 'expert' axis is larger than one, both paths exchange tokens with
explicit all-to-all and keep E/n experts per device (model/moe_parallel.py).

Legend: B batch (groups), T tokens per group, D model width, E experts,
C capacity per expert and group, F expert hidden, K top-k, A assignments (B*T*K).
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from model import moe_parallel
from model.layers import Dtype, SwiGLU, constrain, default_init, param_with_axes

DISPATCH_MODES = ("capacity", "dropless")


def route(logits: jax.Array, top_k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """logits [..., E] float32 -> (experts [..., K] int32, gates [..., K], probs [..., E])."""
    probs = jax.nn.softmax(logits, axis=-1)
    top_logits, experts = jax.lax.top_k(logits, top_k)
    gates = jax.nn.softmax(top_logits, axis=-1)
    return experts.astype(jnp.int32), gates, probs


def load_balance_loss(experts: jax.Array, probs: jax.Array, token_mask: jax.Array
                      ) -> tuple[jax.Array, jax.Array]:
    """(E^2 * mean_e(f_e * P_e), f [E]) over valid tokens. experts [..., K], probs [..., E]."""
    num_experts = probs.shape[-1]
    m = token_mask.astype(jnp.float32)
    counts = jnp.sum(jax.nn.one_hot(experts, num_experts, dtype=jnp.float32)
                     * m[..., None, None], axis=tuple(range(experts.ndim)))  # [E]
    f = counts / jnp.maximum(counts.sum(), 1.0)
    p = jnp.sum(probs * m[..., None], axis=tuple(range(probs.ndim - 1))) / jnp.maximum(
        m.sum(), 1.0)
    return num_experts ** 2 * jnp.mean(f * p), f


@functools.lru_cache(maxsize=64)
def _capacity_table(tokens: int, capacity_factor: float, top_k: int, num_experts: int
                    ) -> np.ndarray:
    """[tokens + 1] int32: entry n = max(1, ceil(cf * n * k / E)), in float64 as
    MoEConfig.capacity (a lookup keeps it exact; float32 in-graph could be off by one)."""
    return np.array([max(1, math.ceil(capacity_factor * n * top_k / num_experts))
                     for n in range(tokens + 1)], np.int32)


def capacities(token_mask: jax.Array, capacity_factor: float, top_k: int, num_experts: int
               ) -> tuple[int, jax.Array]:
    """(C for the buffers from the padded length T, C_b [B] int32 from each row's real
    tokens): ceil(cf * tokens * k / E), at least 1."""
    table = _capacity_table(token_mask.shape[-1], capacity_factor, top_k, num_experts)
    real = jnp.sum(token_mask, axis=-1, dtype=jnp.int32)
    return int(table[-1]), jnp.asarray(table)[real]


def capacity_slots(experts: jax.Array, token_mask: jax.Array, num_experts: int,
                   capacity: int, row_capacity: jax.Array | None = None
                   ) -> tuple[jax.Array, jax.Array]:
    """Buffer slot per assignment: experts [B,T,K] -> (slot [B,T,K] in [0, E*C], kept [B,T,K]).

    Slot E*C is the "dropped" sink. Priority is choice-major, then position. A row keeps
    at most row_capacity [B] (<= capacity; default capacity) assignments per expert.
    """
    b, t, k = experts.shape
    valid = jnp.broadcast_to(token_mask[..., None], experts.shape)
    onehot = jax.nn.one_hot(jnp.where(valid, experts, num_experts), num_experts,
                            dtype=jnp.int32)  # [B,T,K,E]; invalid rows all zero
    order = jnp.swapaxes(onehot, 1, 2).reshape(b, k * t, num_experts)  # choice-major
    position = jnp.cumsum(order, axis=1) - 1  # rank within the expert
    position = jnp.sum(position * order, axis=-1).reshape(b, k, t).swapaxes(1, 2)  # [B,T,K]
    limit = capacity if row_capacity is None else row_capacity[:, None, None]
    kept = valid & (position < limit)
    slot = jnp.where(kept, experts * capacity + position, num_experts * capacity)
    return slot.astype(jnp.int32), kept


@jax.custom_vjp
def batched_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """[E, N, I] @ [E, I, O] per expert; the backward transposes the narrower operand
    (as model.layers.matmul), which XLA:CPU does not choose by itself."""
    return jnp.einsum("ENI,EIO->ENO", x, w)


def _bmm_fwd(x, w):
    return batched_matmul(x, w), (x, w)


def _bmm_bwd(res, g):
    x, w = res
    dx = jnp.einsum("ENO,EIO->ENI", g, w)
    if x.shape[-1] <= g.shape[-1]:
        dw = jnp.einsum("EIN,ENO->EIO", jnp.swapaxes(x, 1, 2), g)
    else:
        dw = jnp.swapaxes(jnp.einsum("EON,ENI->EOI", jnp.swapaxes(g, 1, 2), x), 1, 2)
    return dx, dw


batched_matmul.defvjp(_bmm_fwd, _bmm_bwd)


def expert_init(key: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
    """lecun_normal per expert on the flattened [in, out] matrix of shape [E, in, *out]."""
    out = math.prod(shape[2:])
    keys = jax.random.split(key, shape[0])
    return jax.vmap(lambda k: default_init(k, (shape[1], out), dtype))(keys).reshape(shape)


def _with_zero_row(x: jax.Array) -> jax.Array:
    """[N, ...] -> [N+1, ...]: a zero row at index N (the sink of empty/dropped slots)."""
    return jnp.concatenate([x, jnp.zeros((1,) + x.shape[1:], x.dtype)])


def buffer_indices(slot: jax.Array, kept: jax.Array, num_experts: int, capacity: int
                   ) -> tuple[jax.Array, jax.Array]:
    """Maps between assignments and expert buffer rows, laid out (expert, batch row, pos).

    slot/kept [B,T,K] from `capacity_slots` -> (flat_idx [B,T,K]: each assignment's
    buffer row, E*B*C if dropped; owner [E, B*C]: the assignment (flattened b, t, k)
    each buffer row holds, B*T*K if empty).
    """
    b, t, k = slot.shape
    e, c = num_experts, capacity
    rows = jnp.arange(b)[:, None, None]
    flat_idx = jnp.where(kept, (slot // c) * (b * c) + rows * c + slot % c, e * b * c)
    n = b * t * k
    owner = jnp.full((e * b * c + 1,), n, jnp.int32).at[flat_idx.reshape(-1)].set(
        jnp.arange(n, dtype=jnp.int32))[:e * b * c]
    return flat_idx.astype(jnp.int32), owner.reshape(e, b * c)


# Dispatch and combine are gathers whose transposes are gathers too: every kept
# assignment owns one buffer row. Written as custom VJPs so the backward pass gathers
# instead of scatter-adding (XLA:CPU runs a scatter as a serial loop).

@jax.custom_vjp
def _dispatch(x: jax.Array, flat_idx: jax.Array, owner: jax.Array) -> jax.Array:
    """x [B,T,D] -> buffers [E,N,D]: row (e, n) is its owner's token (zeros if empty)."""
    tokens = owner // flat_idx.shape[-1]  # empty rows: B*T, the zero row
    return _with_zero_row(x.reshape(-1, x.shape[-1]))[tokens]


def _dispatch_fwd(x, flat_idx, owner):
    return _dispatch(x, flat_idx, owner), (flat_idx, x.shape)


def _dispatch_bwd(res, g):
    flat_idx, shape = res
    # A token's gradient is the sum over its kept assignments' buffer rows.
    dx = jnp.sum(_with_zero_row(g.reshape(-1, g.shape[-1]))[flat_idx], axis=2)
    return dx.reshape(shape), None, None


_dispatch.defvjp(_dispatch_fwd, _dispatch_bwd)


@jax.custom_vjp
def _combine(yb: jax.Array, flat_idx: jax.Array, owner: jax.Array) -> jax.Array:
    """Buffers yb [E,N,D] -> [B,T,K,D]: each assignment's row (zeros if dropped)."""
    return _with_zero_row(yb.reshape(-1, yb.shape[-1]))[flat_idx]


def _combine_fwd(yb, flat_idx, owner):
    return _combine(yb, flat_idx, owner), (owner, yb.shape)


def _combine_bwd(res, g):
    owner, shape = res
    dyb = _with_zero_row(g.reshape(-1, g.shape[-1]))[owner]
    return dyb.reshape(shape), None, None


_combine.defvjp(_combine_fwd, _combine_bwd)


def expert_ffn(xb: jax.Array, wi: list[jax.Array], wo: jax.Array) -> jax.Array:
    """SwiGLU per expert: buffers [E, N, D] -> [E, N, D]."""
    h = nn.silu(batched_matmul(xb, wi[0])) * batched_matmul(xb, wi[1])  # [E, N, F]
    return batched_matmul(h, wo)


def capacity_moe(x: jax.Array, experts: jax.Array, gates: jax.Array, token_mask: jax.Array,
                 wi: list[jax.Array], wo: jax.Array, num_experts: int, capacity_factor: float,
                 to_experts: Callable[[jax.Array], jax.Array],
                 from_experts: Callable[[jax.Array], jax.Array]
                 ) -> tuple[jax.Array, jax.Array]:
    """Capacity dispatch -> experts -> combine: (y [B,T,D], kept [B,T,K]).

    x [B,T,D]; experts/gates [B,T,K]; wi/wo the experts this program holds. Buffers are
    laid out [E, B*C, D] (expert-major: each expert's tokens one contiguous matrix);
    `to_experts`/`from_experts` move them to and from the experts' devices (identity plus
    a sharding constraint on one program; all-to-all under expert parallelism).
    """
    c, row_c = capacities(token_mask, capacity_factor, experts.shape[-1], num_experts)
    slot, kept = capacity_slots(experts, token_mask, num_experts, c, row_c)
    flat_idx, owner = buffer_indices(slot, kept, num_experts, c)
    yb = from_experts(expert_ffn(to_experts(_dispatch(x, flat_idx, owner)), wi, wo))
    ya = _combine(yb, flat_idx, owner)  # [B, T, K, D]; dropped assignments read zeros
    y = jnp.einsum("BTKD,BTK->BTD", ya, (gates * kept).astype(ya.dtype))
    return y, kept


def _buffers_on_experts(xb: jax.Array) -> jax.Array:
    return constrain(xb, ("expert", "batch", "embed"))


class MoE(nn.Module):
    """Top-k routed SwiGLU experts (+ optional always-on shared experts)."""
    num_experts: int
    top_k: int
    hidden: int
    num_shared_experts: int = 0
    shared_hidden: int = 0
    capacity_factor: float = 1.25
    dispatch: str = "capacity"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, token_mask: jax.Array
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """x [B,T,D], token_mask [B,T] bool (False: padding) -> (y [B,T,D], metrics)."""
        if self.dispatch not in DISPATCH_MODES:
            raise ValueError(f"MoE.dispatch={self.dispatch!r}: choose one of {DISPATCH_MODES}")
        b, t, d = x.shape
        e, f = self.num_experts, self.hidden
        w_router = param_with_axes(self, "router", default_init, (d, e), ("embed", None),
                                   jnp.float32)
        logits = jnp.einsum("BTD,DE->BTE", x.astype(jnp.float32), w_router)
        experts, gates, probs = route(logits, self.top_k)
        aux, usage = load_balance_loss(experts, probs, token_mask)
        m = token_mask.astype(jnp.float32)
        denom = jnp.maximum(m.sum(), 1.0)
        z = jnp.sum(jax.nn.logsumexp(logits, axis=-1) ** 2 * m) / denom
        confidence = jnp.sum(probs.max(-1) * m) / denom

        wi = [param_with_axes(self, f"wi_{i}", expert_init, (e, d, f), ("expert", "embed", "mlp"),
                              self.param_dtype).astype(self.dtype) for i in range(2)]
        wo = param_with_axes(self, "wo", expert_init, (e, f, d), ("expert", "mlp", "embed"),
                             self.param_dtype).astype(self.dtype)
        xc = x.astype(self.dtype)
        ep = moe_parallel.plan(e, b, f)
        if self.dispatch == "capacity":
            if ep is None:
                y, kept = capacity_moe(xc, experts, gates, token_mask, wi, wo, e,
                                       self.capacity_factor, _buffers_on_experts,
                                       _buffers_on_experts)
            else:
                def body(x, experts, gates, token_mask, wi0, wi1, wo):
                    return capacity_moe(x, experts, gates, token_mask, [wi0, wi1], wo, e,
                                        self.capacity_factor, ep.to_experts, ep.from_experts)
                y, kept = ep.run(body, xc, experts, gates, token_mask, wi, wo)
            total = jnp.maximum(jnp.sum(m) * self.top_k, 1.0)
            dropped = 1.0 - jnp.sum(kept.astype(jnp.float32)) / total
        else:
            if ep is None:
                y = self._dropless(xc, experts, gates, token_mask, wi, wo)
            else:
                y, _ = ep.run(moe_parallel.dropless_body(ep, e), xc, experts, gates,
                              token_mask, wi, wo)
            dropped = jnp.zeros((), jnp.float32)
        if self.num_shared_experts:
            shared = self.num_shared_experts * (self.shared_hidden or self.hidden)
            y = y + SwiGLU(shared, self.dtype, self.param_dtype, name="shared")(x)
        metrics = {"aux_loss": aux, "router_z_loss": z, "expert_usage": usage,
                   "drop_fraction": dropped, "router_confidence": confidence}
        return y.astype(x.dtype), metrics

    def _dropless(self, x, experts, gates, token_mask, wi, wo):
        b, t, d = x.shape
        e, k, f = self.num_experts, self.top_k, self.hidden
        flat = jnp.where(token_mask[..., None], experts, e).reshape(-1)  # [A]; e = unrouted
        order = jnp.argsort(flat, stable=True)
        group_sizes = jnp.bincount(flat, length=e + 1)[:e].astype(jnp.int32)
        xs = x.reshape(b * t, d)[order // k]  # [A, D]
        h = nn.silu(jax.lax.ragged_dot(xs, wi[0], group_sizes)) * jax.lax.ragged_dot(
            xs, wi[1], group_sizes)
        ys = jax.lax.ragged_dot(h, wo, group_sizes)  # rows past sum(group_sizes) are 0
        ya = jnp.zeros_like(ys).at[order].set(ys).reshape(b, t, k, d)
        g = gates * token_mask[..., None]
        return jnp.einsum("BTKD,BTK->BTD", ya, g.astype(ya.dtype))

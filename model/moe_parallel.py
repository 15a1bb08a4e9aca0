"""Expert parallelism: MoE token exchange over the 'expert' mesh axis by all-to-all.

Placement (mesh ('data', 'expert', 'model'), default logical axis rules): expert
weights [E, D, F] live E/n per device of the n-way expert axis (F split over 'model'),
and are never gathered. Token rows are split over ('data', 'expert'). Inside one
`jax.shard_map` each device routes its own rows, then

  capacity:  buffers [E, b*C, D] --all_to_all(split E, concat rows)--> [E/n, n*b*C, D]
             -> its E/n experts (batched matmul) -> all_to_all back -> combine.
  dropless:  assignments sorted by expert; the run for each destination shard is sent
             in a fixed [n, A, D] buffer (A = local assignments, the worst case, so
             nothing is ever dropped) -> receivers group rows by local expert and run
             `jax.lax.ragged_dot` -> all_to_all back -> unsort -> combine.

With 'mlp' on 'model', each model shard computes a partial sum over its F slice; one
psum over 'model' of the combined [b, T, D] output finishes it (cheaper than summing
the k*cf times larger expert buffers). Groups are batch rows on every path, so the
result equals the replicated layer (up to float summation order).

`plan()` decides, at trace time, from the mesh set by `jax.set_mesh` and the flax
logical axis rules in context: expert parallelism runs when logical 'expert' maps to
one mesh axis of size n > 1 that also splits the batch, n divides E and the batch
divides over its shards. Otherwise (one device, expert axis 1, 'expert' -> None in the
rules, a batch too small to split) the caller keeps the single-program path and XLA
places the computation (replicated experts when the rule maps 'expert' to None).

Legend: b local rows, T tokens per row, D model width, E experts, n expert shards,
C capacity per expert and row, K top-k, A = b*T*K local assignments, F expert hidden.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


def _axes(part) -> tuple[str, ...]:
    """A PartitionSpec entry -> tuple of mesh axis names."""
    if part is None:
        return ()
    return tuple(part) if isinstance(part, (tuple, list)) else (part,)


@dataclasses.dataclass(frozen=True)
class ExpertParallel:
    """How one MoE layer's experts and tokens are laid out over the mesh."""
    axis: str                     # mesh axis of the experts (size n)
    size: int                     # n
    batch_axes: tuple[str, ...]   # mesh axes of the token rows (contain `axis`)
    hidden_axes: tuple[str, ...]  # mesh axes of the expert hidden dim F (psum'd)

    # -- the exchange -----------------------------------------------------
    def to_experts(self, xb: jax.Array) -> jax.Array:
        """[E, N, D] per source -> [E/n, n*N, D]: each device's experts, all sources."""
        return jax.lax.all_to_all(xb, self.axis, 0, 1, tiled=True)

    def from_experts(self, yb: jax.Array) -> jax.Array:
        """Inverse of `to_experts`: [E/n, n*N, D] -> [E, N, D] back at the source."""
        return jax.lax.all_to_all(yb, self.axis, 1, 0, tiled=True)

    # -- running a per-device body ----------------------------------------
    def run(self, body: Callable, x: jax.Array, experts: jax.Array, gates: jax.Array,
            token_mask: jax.Array, wi: list[jax.Array], wo: jax.Array
            ) -> tuple[jax.Array, jax.Array]:
        """shard_map of body(x, experts, gates, token_mask, wi0, wi1, wo) -> (y, extra).

        Arrays are global: x [B,T,D], experts/gates [B,T,K], token_mask [B,T],
        wi [E,D,F] x2, wo [E,F,D]; body sees its local block of each and returns y
        [b,T,D] (partial over the hidden axes, summed here) and extra [b,T,K].
        """
        rows = P(self.batch_axes)
        hidden = self.hidden_axes or None
        w_in, w_out = P(self.axis, None, hidden), P(self.axis, hidden, None)

        def local(x, experts, gates, token_mask, wi0, wi1, wo):
            y, extra = body(x, experts, gates, token_mask, wi0, wi1, wo)
            if self.hidden_axes:
                y = jax.lax.psum(y, self.hidden_axes)
            return y, extra

        # check_vma=False: the MoE's custom VJPs (gather-only backward passes) return
        # per-device cotangents; shard_map's transpose then sums them over the mesh axes
        # an input is replicated on (e.g. weight gradients over 'data').
        return jax.shard_map(local, in_specs=(rows, rows, rows, rows, w_in, w_in, w_out),
                             out_specs=(rows, rows), check_vma=False)(
                                 x, experts, gates, token_mask, *wi, wo)


def plan(num_experts: int, batch_size: int, hidden: int) -> ExpertParallel | None:
    """The expert-parallel layout for the mesh and logical rules in context, or None."""
    mesh = jax.sharding.get_abstract_mesh()
    rules = nn.get_logical_axis_rules()
    if mesh.empty or not rules:
        return None
    w_spec = nn.logical_to_mesh_axes(("expert", "embed", "mlp"), rules)
    x_spec = nn.logical_to_mesh_axes(("batch", "length", "embed"), rules)
    expert_axes, batch_axes = _axes(w_spec[0]), _axes(x_spec[0])
    if len(expert_axes) != 1 or w_spec[1] is not None or any(x_spec[1:]):
        return None
    axis = expert_axes[0]
    size, shape = mesh.shape[axis], mesh.shape
    hidden_axes = _axes(w_spec[2])
    if (size == 1 or num_experts % size or axis not in batch_axes
            or batch_size % math.prod(shape[a] for a in batch_axes)
            or hidden % math.prod(shape[a] for a in hidden_axes)):
        return None
    return ExpertParallel(axis, size, batch_axes, hidden_axes)


def _with_zero_row(x: jax.Array) -> jax.Array:
    return jnp.concatenate([x, jnp.zeros((1,) + x.shape[1:], x.dtype)])


def _grouped_ffn(rows: jax.Array, group: jax.Array, num_groups: int, wi0: jax.Array,
                 wi1: jax.Array, wo: jax.Array) -> jax.Array:
    """SwiGLU of rows [R, D] through expert `group` [R] (num_groups = unused) -> [R, D]."""
    order = jnp.argsort(group, stable=True)
    sizes = jnp.bincount(group, length=num_groups + 1)[:num_groups].astype(jnp.int32)
    xs = rows[order]
    h = nn.silu(jax.lax.ragged_dot(xs, wi0, sizes)) * jax.lax.ragged_dot(xs, wi1, sizes)
    ys = jax.lax.ragged_dot(h, wo, sizes)  # rows past sum(sizes) are 0
    return jnp.zeros_like(ys).at[order].set(ys)


def dropless_body(ep: ExpertParallel, num_experts: int) -> Callable:
    """Per-device dropless MoE (see the module docstring), for `ExpertParallel.run`."""
    n = ep.size
    e_loc = num_experts // n

    def body(x, experts, gates, token_mask, wi0, wi1, wo):
        b, t, d = x.shape
        k = experts.shape[-1]
        a = b * t * k
        flat = jnp.where(token_mask[..., None], experts, num_experts).reshape(a)
        order = jnp.argsort(flat, stable=True)  # by expert; unrouted (= E) last
        sorted_e = flat[order]
        xs = _with_zero_row(x.reshape(b * t, d)[order // k])  # [A+1, D]
        dest = sorted_e // e_loc  # destination shard, n = unrouted
        counts = jnp.bincount(dest, length=n + 1)[:n]
        start = jnp.cumsum(counts) - counts
        j = jnp.arange(a)
        valid = j[None] < counts[:, None]  # [n, A]
        src = jnp.where(valid, start[:, None] + j[None], a)
        send_x = xs[src]  # [n, A, D]: shard s's run, zero-padded
        local_e = jnp.concatenate([sorted_e, jnp.full((1,), num_experts, sorted_e.dtype)])[src]
        send_e = jnp.where(valid, local_e - e_loc * jnp.arange(n)[:, None], e_loc)
        recv_x = jax.lax.all_to_all(send_x, ep.axis, 0, 0, tiled=True)  # [n, A, D] by source
        recv_e = jax.lax.all_to_all(send_e, ep.axis, 0, 0, tiled=True)
        y_recv = _grouped_ffn(recv_x.reshape(n * a, d), recv_e.reshape(n * a), e_loc,
                              wi0, wi1, wo).reshape(n, a, d)
        back = jax.lax.all_to_all(y_recv, ep.axis, 0, 0, tiled=True)  # [n, A, D] by dest
        pos = jnp.where(dest < n, jnp.minimum(dest, n - 1) * a + j
                        - start[jnp.minimum(dest, n - 1)], n * a)
        ys = _with_zero_row(back.reshape(n * a, d))[pos]  # sorted order; unrouted 0
        ya = jnp.zeros_like(ys).at[order].set(ys).reshape(b, t, k, d)
        g = (gates * token_mask[..., None]).astype(ya.dtype)
        return jnp.einsum("BTKD,BTK->BTD", ya, g), jnp.ones_like(experts, bool)

    return body

"""Basic layers: RMSNorm, embedding, rotary positions, SwiGLU feed-forward.

Every parameter carries logical axis names (nn.with_logical_partitioning) so
the trainer can shard by rules. Einsum legend:
  B batch, T length, D model width, F feed-forward hidden, V vocab,
  N query heads, H head dim.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

default_init = nn.initializers.lecun_normal()


def dtype_of(name: str) -> jnp.dtype:
    return jnp.dtype(name)


def param_with_axes(module: nn.Module, name: str, init: Any, shape: tuple[int, ...],
                    axes: tuple[str | None, ...], dtype: Dtype) -> jax.Array:
    """A parameter boxed with logical axis names (unboxed on use)."""
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
    """Logical sharding constraint on an activation (no-op without axis rules)."""
    return nn.with_logical_constraint(x, axes)


class RMSNorm(nn.Module):
    """y = x / rms(x) * scale, computed in float32."""
    eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = param_with_axes(self, "scale", nn.initializers.ones, (x.shape[-1],),
                                (self.axis_name,), self.param_dtype)
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return (y * scale.astype(jnp.float32)).astype(self.dtype)


class Embed(nn.Module):
    """Token embedding [V, D]; `attend` gives tied output logits."""
    vocab_size: int
    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    init_std: float = 1.0  # use features**-0.5 when tied, so initial logits are O(1)

    def setup(self) -> None:
        self.embedding = param_with_axes(self, "embedding",
                                         nn.initializers.normal(stddev=self.init_std),
                                         (self.vocab_size, self.features), ("vocab", "embed"),
                                         self.param_dtype)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        return jnp.einsum("BTD,VD->BTV", x, self.embedding.astype(self.dtype))


@jax.custom_vjp
def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [N, I] @ w [I, O] with a backward pass that transposes the narrower operand.

    XLA:CPU otherwise tends to write the wide incoming gradient transposed (a
    strided copy as large as the activations) to form dW.
    """
    return x @ w


def _matmul_fwd(x, w):
    return x @ w, (x, w)


def _matmul_bwd(res, g):
    x, w = res
    dx = g @ w.T
    if x.shape[1] <= g.shape[1]:
        dw = x.T @ g
    else:
        dw = (g.T @ x).T
    return dx, dw


matmul.defvjp(_matmul_fwd, _matmul_bwd)


class DenseGeneral(nn.Module):
    """x @ W over the last axis with an arbitrary output shape and axis names."""
    features: tuple[int, ...]
    axes: tuple[str | None, ...]  # names of (in, *features)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    in_axes: int = 1  # how many trailing input axes are contracted
    kernel_init: Any = default_init

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_shape = x.shape[-self.in_axes:]
        shape = (*in_shape, *self.features)
        fan_in = 1
        for s in in_shape:
            fan_in *= s
        fan_out = 1
        for s in self.features:
            fan_out *= s

        def init(key, shp, dtype, _base=self.kernel_init):
            # Initialise as the flattened [in, out] matrix so fan-in/out are right.
            return _base(key, (fan_in, fan_out), dtype).reshape(shp)

        kernel = param_with_axes(self, "kernel", init, shape, self.axes, self.param_dtype)
        lead = x.shape[:-self.in_axes]
        y = matmul(x.astype(self.dtype).reshape(-1, fan_in),
                   kernel.astype(self.dtype).reshape(fan_in, fan_out))
        return y.reshape(*lead, *self.features)


def rope_tables(positions: jax.Array, head_dim: int, base: float
                ) -> tuple[jax.Array, jax.Array]:
    """sin, cos [B, T, H/2] (float32) for integer positions [B, T]."""
    half = head_dim // 2
    inv_freq = 1.0 / (base ** (jnp.arange(half, dtype=jnp.float32) / half))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    return jnp.sin(angles), jnp.cos(angles)


def apply_rope(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
    """Rotary embedding on x [B, T, N, H] (rotate-half layout); sin/cos [B, T, H/2]."""
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    s, c = sin[:, :, None, :], cos[:, :, None, :]
    out = jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
    return out.astype(x.dtype)


class SwiGLU(nn.Module):
    """silu(x W_gate) * (x W_up) W_down, hidden axis named `mlp`."""
    hidden: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        dense = lambda f, ax, name: DenseGeneral((f,), ax, self.dtype, self.param_dtype,
                                                 name=name)
        gate = dense(self.hidden, ("embed", "mlp"), "wi_0")(x)
        up = dense(self.hidden, ("embed", "mlp"), "wi_1")(x)
        h = constrain(nn.silu(gate) * up, ("batch", "length", "mlp"))
        return dense(d, ("mlp", "embed"), "wo")(h)

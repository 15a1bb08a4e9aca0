"""The V-MPO loss (Song et al. 2019, "V-MPO: On-Policy Maximum a Posteriori Policy
Optimization for Discrete and Continuous Control") and n-step value targets.

    loss, parts = vmpo_loss(log_probs, advantages, temperature, eps_temperature,
                            kl, alpha, eps_alpha)          # every array E* (any shape)

E-step: keep the top half of the (temperature-scaled) advantages, weight those samples
by ψ = softmax(A / η) over the kept set (a constant, no gradient). M-step: weighted
maximum likelihood −ψ · N · log π(a|s) per example, with the KL to the old (target)
policy held near ε_α by a Lagrange multiplier α. Duals: the temperature η minimises
η · (ε_η + log mean_kept exp(A / η)); α minimises α · (ε_α − sg(KL)) while the policy
pays sg(α) · KL. Duals enter projected to ≥ 1e-10 (a clip, as in rlax); restarting
weights (0 at an episode's first step) drop samples from the E-step and the top-k.
Per-example losses, the temperature loss broadcast to every example (rlax.vmpo_loss's
convention, which tests/test_vmpo.py checks to 1e-6); take the mean.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

DUAL_MIN = 1e-10   # the projection floor of the dual variables
_BIG = 1e30        # pushes restarting samples out of the top-k


class VmpoParts(NamedTuple):
    policy_loss: jax.Array       # E*
    temperature_loss: jax.Array  # []
    kl_loss: jax.Array           # E*
    alpha_loss: jax.Array        # E*
    weights: jax.Array           # E*: ψ, summing to 1 over the kept samples
    num_samples: jax.Array       # []: samples kept by the top-k


def project_dual(x: jax.Array) -> jax.Array:
    return jnp.maximum(x, DUAL_MIN)


def top_fraction_mask(scores: jax.Array, valid: jax.Array, fraction: float) -> jax.Array:
    """1.0 where `scores` is among the top int(fraction · size) of the valid entries
    (ties at the threshold all kept), else 0.0; invalid entries are never kept."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"top fraction {fraction} must be in (0, 1]")
    if fraction == 1.0:
        return valid
    k = int(fraction * scores.size)
    if k == 0:
        raise ValueError(f"top fraction {fraction} of {scores.size} samples keeps none")
    masked = scores - (1.0 - valid) * _BIG
    threshold = jnp.sort(masked.ravel())[-k]
    return valid * (masked >= threshold).astype(scores.dtype)


def vmpo_loss(log_probs: jax.Array, advantages: jax.Array, temperature: jax.Array,
              eps_temperature: float, kl: jax.Array, alpha: jax.Array, eps_alpha: float,
              restarting_weights: jax.Array | None = None, top_fraction: float = 0.5
              ) -> tuple[jax.Array, VmpoParts]:
    """Per-example V-MPO loss (E*) and its parts; see the module docstring."""
    valid = (jnp.ones_like(log_probs) if restarting_weights is None
             else restarting_weights.astype(log_probs.dtype))
    eta = project_dual(temperature)
    scaled = valid * advantages / eta
    peak = jax.lax.stop_gradient(jnp.max(scaled))
    kept = jax.lax.stop_gradient(top_fraction_mask(scaled, valid, top_fraction))
    unnormalised = kept * jnp.exp(scaled - peak)
    total = jnp.sum(unnormalised) + DUAL_MIN
    num_samples = jnp.sum(kept) + DUAL_MIN
    weights = jax.lax.stop_gradient(unnormalised / total)
    temperature_loss = eta * (eps_temperature + jnp.log(total) + peak - jnp.log(num_samples))
    policy_loss = -log_probs * weights * log_probs.size
    a = project_dual(alpha)
    kl_loss = jax.lax.stop_gradient(a) * kl
    alpha_loss = a * (eps_alpha - jax.lax.stop_gradient(kl))
    loss = policy_loss + temperature_loss + kl_loss + alpha_loss
    return loss, VmpoParts(policy_loss, temperature_loss, kl_loss, alpha_loss, weights,
                           num_samples)


def categorical_kl(p_logits: jax.Array, q_logits: jax.Array) -> jax.Array:
    """KL(p ‖ q) over the last axis, from logits [..., A] -> [...]."""
    log_p = jax.nn.log_softmax(p_logits)
    return jnp.sum(jnp.exp(log_p) * (log_p - jax.nn.log_softmax(q_logits)), axis=-1)


def n_step_targets(rewards: jax.Array, discounts: jax.Array, values: jax.Array, n: int
                   ) -> jax.Array:
    """n-step bootstrapped returns over time (axis 0).

    rewards, discounts [T, ...] (discount 0 where the episode ended at that step),
    values [T + 1, ...] (values[T] bootstraps the segment's end) ->
    G_t = Σ_{k<m} (Π_{j<k} γ_{t+j}) r_{t+k} + (Π_{j<m} γ_{t+j}) V_{t+m}, m = min(n, T - t).
    """
    t_len = rewards.shape[0]
    out = []
    for t in range(t_len):
        m = min(n, t_len - t)
        g, scale = jnp.zeros_like(rewards[0]), jnp.ones_like(rewards[0])
        for k in range(m):
            g = g + scale * rewards[t + k]
            scale = scale * discounts[t + k]
        out.append(g + scale * values[t + m])
    return jnp.stack(out)

"""The V-MPO loss and n-step targets (model/rl/vmpo.py) against rlax (test-only side
environment: `bash tests/rlax_env.sh`; skipped, saying so, when it is missing)."""
from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.rl import vmpo

RLAX_DIR = os.environ.get("TAPESTRY_RLAX_ENV",
                          os.path.join(os.path.expanduser("~"), ".cache", "tapestry", "rlax-env"))


@pytest.fixture(scope="module")
def rlax():
    if not os.path.exists(os.path.join(RLAX_DIR, ".installed")):
        pytest.skip(f"rlax side environment not found at {RLAX_DIR}: run "
                    "`bash tests/rlax_env.sh` (or set TAPESTRY_RLAX_ENV)")
    sys.path.append(RLAX_DIR)  # after our own packages: rlax runs on our jax
    # tfp's JAX substrate imports TensorFlow only to copy docstrings (~40 s), and with
    # TensorFlow present wants tf_keras: hide it for the import, even when this process
    # (a test worker that ran a SeqIO test) already imported it.
    saved = sys.modules.get("tensorflow")
    sys.modules["tensorflow"] = None
    try:
        import rlax as module
    finally:
        if saved is None:
            del sys.modules["tensorflow"]
        else:
            sys.modules["tensorflow"] = saved
    return module


def _inputs(seed: int, shape=(6, 5)):
    k = jax.random.split(jax.random.key(seed), 6)
    return dict(
        log_probs=jax.nn.log_sigmoid(jax.random.normal(k[0], shape)),
        advantages=2.0 * jax.random.normal(k[1], shape),
        kl=jnp.abs(jax.random.normal(k[2], shape)) * 0.1,
        restarting=(jax.random.uniform(k[3], shape) > 0.2).astype(jnp.float32),
        temperature=jnp.exp(jax.random.normal(k[4], ())),
        alpha=jnp.exp(jax.random.normal(k[5], ())))


@pytest.mark.parametrize("seed,fraction", [(0, 0.5), (1, 0.5), (2, 1.0), (3, 0.3)])
def test_loss_and_gradients_equal_rlax(rlax, seed, fraction):
    x = _inputs(seed)
    eps_t, eps_a = 0.1, 0.01

    def ours(lp, eta, alpha):
        loss, parts = vmpo.vmpo_loss(lp, x["advantages"], eta, eps_t, x["kl"], alpha, eps_a,
                                     x["restarting"], fraction)
        return jnp.mean(loss), (loss, parts)

    def theirs(lp, eta, alpha):
        loss, out = rlax.vmpo_loss(
            lp, x["advantages"], rlax.LagrangePenalty(eta, eps_t),
            [(x["kl"], rlax.LagrangePenalty(alpha, eps_a))],
            restarting_weights=x["restarting"], top_k_fraction=fraction)
        return jnp.mean(loss), (loss, out)

    args = (x["log_probs"], x["temperature"], x["alpha"])
    (m1, (l1, p1)), g1 = jax.value_and_grad(ours, argnums=(0, 1, 2), has_aux=True)(*args)
    (m2, (l2, p2)), g2 = jax.value_and_grad(theirs, argnums=(0, 1, 2), has_aux=True)(*args)
    np.testing.assert_allclose(l1, l2, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(p1.weights, p2.normalized_weights, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(p1.temperature_loss, p2.temperature_loss, rtol=1e-6, atol=1e-6)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # Top half: only kept (valid) samples carry weight.
    assert float(jnp.sum(p1.weights > 0)) <= max(1, int(fraction * 30)) + 1


def test_n_step_targets_equal_rlax(rlax):
    k = jax.random.split(jax.random.key(7), 3)
    t, b = 9, 4
    rewards = jax.random.normal(k[0], (t, b))
    discounts = 0.9 * (jax.random.uniform(k[1], (t, b)) > 0.2)
    values = jax.random.normal(k[2], (t + 1, b))
    ours = vmpo.n_step_targets(rewards, discounts, values, n=3)
    theirs = jax.vmap(lambda r, d, v: rlax.n_step_bootstrapped_returns(r, d, v, n=3),
                      in_axes=1, out_axes=1)(rewards, discounts, values[1:])
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_top_fraction_mask_ignores_restarts():
    scores = jnp.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    valid = jnp.array([0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(vmpo.top_fraction_mask(scores, valid, 0.5),
                                  [0, 1, 1, 1, 0, 0])
    with pytest.raises(ValueError, match="keeps none"):
        vmpo.top_fraction_mask(scores, valid, 0.1)

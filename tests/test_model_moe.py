"""MoE layer: reference equivalences, exact drop accounting, aux-loss formula."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.layers import SwiGLU
from model import moe as moe_lib
from model.moe import MoE, capacity_slots, load_balance_loss, route


def _x(b=2, t=16, d=8, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), (b, t, d))


def test_one_expert_top1_equals_dense_swiglu():
    x = _x()
    mask = jnp.ones(x.shape[:2], bool)
    moe = MoE(num_experts=1, top_k=1, hidden=32, capacity_factor=1.0)
    p = nn.unbox(moe.init(jax.random.PRNGKey(1), x, mask))["params"]
    y, metrics = moe.apply({"params": p}, x, mask)
    dense = {"wi_0": {"kernel": p["wi_0"][0]}, "wi_1": {"kernel": p["wi_1"][0]},
             "wo": {"kernel": p["wo"][0]}}
    want = SwiGLU(32).apply({"params": dense}, x)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    assert float(metrics["drop_fraction"]) == 0.0
    np.testing.assert_allclose(metrics["aux_loss"], 1.0, rtol=1e-6)  # E^2 * f * P = 1 * 1 * 1


@pytest.mark.parametrize("shared", [0, 1])
def test_dropless_equals_capacity_when_nothing_dropped(shared):
    x = _x(t=12)
    mask = jnp.ones(x.shape[:2], bool).at[1, -3:].set(False)  # padding is not routed
    kw = dict(num_experts=4, top_k=2, hidden=16, num_shared_experts=shared)
    cap = MoE(capacity_factor=2.0, dispatch="capacity", **kw)  # C = T: no drops possible
    p = cap.init(jax.random.PRNGKey(2), x, mask)["params"]
    y_cap, m_cap = cap.apply({"params": p}, x, mask)
    y_drop, m_drop = MoE(dispatch="dropless", **kw).apply({"params": p}, x, mask)
    assert float(m_cap["drop_fraction"]) == 0.0
    np.testing.assert_allclose(y_cap, y_drop, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y_cap[1, -3:], 0.0 if not shared else y_cap[1, -3:])
    # Gradients (parameters and input) agree too.
    loss = lambda mode, q, x: jnp.sum(MoE(dispatch=mode, capacity_factor=2.0, **kw).apply(
        {"params": q}, x, mask)[0] ** 2)
    g_cap = jax.grad(lambda q, x: loss("capacity", q, x), argnums=(0, 1))(p, x)
    g_drop = jax.grad(lambda q, x: loss("dropless", q, x), argnums=(0, 1))(p, x)
    for a, b in zip(jax.tree.leaves(nn.unbox(g_cap)), jax.tree.leaves(nn.unbox(g_drop))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_dispatch_and_combine_gradients_equal_plain_gathers():
    """The gather-only backward passes equal autodiff of the gathers, drops included."""
    b, t, d, e, k, c = 2, 6, 3, 3, 2, 2
    experts = jax.random.randint(jax.random.PRNGKey(0), (b, t, k), 0, e)
    experts = experts.at[..., 1].set((experts[..., 0] + 1) % e)  # two distinct experts
    mask = jnp.ones((b, t), bool).at[1, -1].set(False)
    slot, kept = capacity_slots(experts, mask, e, c)
    assert not bool(kept.all())  # some assignments are dropped
    flat_idx, owner = moe_lib.buffer_indices(slot, kept, e, c)
    x = jax.random.normal(jax.random.PRNGKey(1), (b, t, d))
    yb = jax.random.normal(jax.random.PRNGKey(2), (e, b * c, d))

    def plain_dispatch(x):
        return jnp.concatenate([x.reshape(-1, d), jnp.zeros((1, d))])[owner // k]

    def plain_combine(yb):
        return jnp.concatenate([yb.reshape(-1, d), jnp.zeros((1, d))])[flat_idx]

    w_b = jax.random.normal(jax.random.PRNGKey(3), (e, b * c, d))
    w_a = jax.random.normal(jax.random.PRNGKey(4), (b, t, k, d))
    np.testing.assert_array_equal(moe_lib._dispatch(x, flat_idx, owner), plain_dispatch(x))
    np.testing.assert_array_equal(moe_lib._combine(yb, flat_idx, owner), plain_combine(yb))
    np.testing.assert_allclose(
        jax.grad(lambda x: jnp.sum(moe_lib._dispatch(x, flat_idx, owner) * w_b))(x),
        jax.grad(lambda x: jnp.sum(plain_dispatch(x) * w_b))(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        jax.grad(lambda y: jnp.sum(moe_lib._combine(y, flat_idx, owner) * w_a))(yb),
        jax.grad(lambda y: jnp.sum(plain_combine(y) * w_a))(yb), rtol=1e-6, atol=1e-6)


def test_capacity_slots_constructed_routing():
    # One group of 5 tokens, E=3, k=2, C=2. Choice-major priority: all first choices,
    # in token order, then second choices.
    experts = jnp.array([[[0, 1], [0, 2], [0, 1], [1, 0], [2, 1]]])
    mask = jnp.array([[True, True, True, True, False]])  # token 4 is padding
    slot, kept = capacity_slots(experts, mask, num_experts=3, capacity=2)
    # first choices: t0->e0 (pos0), t1->e0 (pos1), t2->e0 (pos2: drop), t3->e1 (pos0)
    # second choices: t0->e1 (pos1), t1->e2 (pos0), t2->e1 (pos2: drop), t3->e0 (pos3: drop)
    want_kept = [[[True, True], [True, True], [False, False], [True, False], [False, False]]]
    np.testing.assert_array_equal(kept, want_kept)
    want_slot = [[[0, 3], [1, 4], [6, 6], [2, 6], [6, 6]]]  # e*C + pos; 6 = E*C = dropped
    np.testing.assert_array_equal(slot, want_slot)


def test_drop_fraction_is_exact_in_the_layer():
    # Router sends every token to expert 0 first: with C = 2 of 8 tokens, 6 of 8 drop.
    d, e = 4, 4
    x = jnp.abs(_x(b=1, t=8, d=d)) + 0.1
    mask = jnp.ones((1, 8), bool)
    moe = MoE(num_experts=e, top_k=1, hidden=8, capacity_factor=1.0)  # C = ceil(8/4) = 2
    p = nn.unbox(moe.init(jax.random.PRNGKey(0), x, mask))["params"]
    p["router"] = jnp.zeros((d, e)).at[:, 0].set(10.0)
    y, m = moe.apply({"params": p}, x, mask)
    assert float(m["drop_fraction"]) == pytest.approx(6 / 8)
    np.testing.assert_allclose(m["expert_usage"], [1.0, 0.0, 0.0, 0.0])
    assert np.all(np.asarray(y[0, 2:]) == 0.0) and np.all(np.abs(np.asarray(y[0, :2])) > 0)


def test_aux_loss_formula_by_hand():
    logits = jnp.log(jnp.array([[[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.1, 0.4],
                                 [0.2, 0.2, 0.6]]]))
    experts, gates, probs = route(logits, top_k=1)
    np.testing.assert_array_equal(experts[..., 0], [[0, 1, 0, 2]])
    np.testing.assert_allclose(gates, 1.0)
    mask = jnp.array([[True, True, True, False]])  # the last token does not count
    aux, f = load_balance_loss(experts, probs, mask)
    f_hand = np.array([2, 1, 0]) / 3
    p_hand = np.array([0.7 + 0.1 + 0.5, 0.2 + 0.6 + 0.1, 0.1 + 0.3 + 0.4]) / 3
    np.testing.assert_allclose(f, f_hand, rtol=1e-6)
    np.testing.assert_allclose(aux, 3 ** 2 * np.mean(f_hand * p_hand), rtol=1e-5)
    # top-2 gates are the softmax over the two chosen logits
    _, g2, _ = route(logits, top_k=2)
    np.testing.assert_allclose(g2[0, 0], [0.7 / 0.9, 0.2 / 0.9], rtol=1e-5)

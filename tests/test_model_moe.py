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


def test_padding_takes_no_capacity():
    """Each row's capacity counts its real tokens only: more padding, same routing."""
    x = _x(b=2, t=10, d=8)
    mask = jnp.ones((2, 10), bool).at[1, 7:].set(False)
    moe = MoE(num_experts=4, top_k=2, hidden=16, capacity_factor=1.0)
    p = jax.jit(moe.init)(jax.random.PRNGKey(3), x, mask)["params"]
    apply = jax.jit(lambda x, mask: moe.apply({"params": p}, x, mask))
    y, m = apply(x, mask)
    assert float(m["drop_fraction"]) > 0.0  # capacity binds
    x_pad = jnp.concatenate([x, _x(b=2, t=30, d=8, seed=9)], axis=1)  # junk in the padding
    mask_pad = jnp.concatenate([mask, jnp.zeros((2, 30), bool)], axis=1)
    y_pad, m_pad = apply(x_pad, mask_pad)
    np.testing.assert_allclose(y_pad[:, :10] * mask[..., None], y * mask[..., None],
                               rtol=1e-6, atol=1e-6)
    assert float(m_pad["drop_fraction"]) == float(m["drop_fraction"])
    # C_b = ceil(cf * real tokens * k / E), never more than the buffer capacity C.
    c, row_c = moe_lib.capacities(mask_pad, 1.0, 2, 4)
    assert c == 20 and row_c.tolist() == [5, 4]


def _scoring_batch(rows, length):
    """Right-padded scoring rows (segment id 0 and loss weight 0 on the padding)."""
    batch = {k: np.zeros((len(rows), length), np.int32) for k in
             ("decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids",
              "decoder_positions")}
    for i, row in enumerate(rows):
        n = len(row) - 1
        batch["decoder_input_tokens"][i, :n] = row[:-1]
        batch["decoder_target_tokens"][i, :n] = row[1:]
        batch["decoder_segment_ids"][i, :n] = 1
        batch["decoder_positions"][i, :n] = np.arange(n)
    batch["decoder_loss_weights"] = (batch["decoder_segment_ids"] > 0).astype(np.float32)
    return batch


def test_capacity_moe_scores_do_not_depend_on_padding():
    """Eval buckets: the same rows padded to 16 or 64 score the same per token."""
    from model.config import model_config
    from model.models import DecoderOnlyModel
    model = DecoderOnlyModel(model_config("tiny_moe", {
        "d_model": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 2, "head_dim": 16,
        "d_ff": 64, "vocab_size": 64, "max_len": 64, "image": None, "video": None,
        "audio": None, "layer_pattern": "m", "moe.expert_hidden": 32,
        "moe.capacity_factor_eval": 1.0, "attention_backend": "xla"}))
    rng = np.random.default_rng(0)
    rows = [rng.integers(2, 64, n) for n in (13, 9, 16)]
    short, long = _scoring_batch(rows, 16), _scoring_batch(rows, 64)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), short)
    score = jax.jit(lambda p, b: (model.score_batch(p, b), model.logits(p, b)[1]))
    want, metrics = score(params, short)
    assert float(metrics[0]["drop_fraction"]) > 0.0  # tokens are dropped at eval capacity
    got, _ = score(params, long)
    mask = short["decoder_loss_weights"] > 0
    np.testing.assert_allclose(np.asarray(got)[:, :16][mask], np.asarray(want)[mask],
                               rtol=1e-5, atol=1e-5)

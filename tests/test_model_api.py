"""The model API the trainer and eval rely on: init / loss_fn / score_batch / counts."""
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.config import model_config
from model.models import DecoderOnlyModel


TEXT_ONLY = {"vocab_size": 512, "image": None, "video": None, "audio": None}


def text_batch(b=2, length=32, vocab=512, seed=0):
    rng = np.random.default_rng(seed)
    toks = rng.integers(20, vocab, (b, length)).astype(np.int32)
    seg = np.ones((b, length), np.int32)
    seg[1, length // 2:] = 2  # two packed documents in row 1
    seg[1, -3:] = 0  # padding
    pos = np.concatenate([np.arange(length // 2), np.arange(length - length // 2)])
    pos = np.stack([np.arange(length), pos]).astype(np.int32)
    w = (seg != 0).astype(np.float32)
    return dict(decoder_input_tokens=toks, decoder_target_tokens=np.roll(toks, -1, 1),
                decoder_loss_weights=w, decoder_segment_ids=seg, decoder_positions=pos)


@pytest.mark.parametrize("preset,over", [
    ("tiny", {}), ("tiny_moe", {}),
    # parallel attention+FFN, tied embeddings, multi-query attention, shared expert, remat
    ("tiny_moe", {"parallel_block": True, "tie_embeddings": True, "num_kv_heads": 1,
                  "moe.num_shared_experts": 1, "remat": "full", "image": None,
                  "video": None, "audio": None})])
def test_init_loss_score(preset, over):
    model = DecoderOnlyModel(model_config(preset, {"num_layers": 2, "vocab_size": 512, **over}))
    batch = text_batch()
    params = model.init(jax.random.PRNGKey(0), batch)
    # Every parameter is boxed with logical axis names of the right rank.
    boxed = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert boxed and all(isinstance(p, nn.Partitioned) and len(p.names) == p.value.ndim
                         for p in boxed)
    total, active = model.param_counts()
    assert sum(p.value.size for p in boxed) == total
    assert active <= total
    loss, metrics = jax.jit(lambda p, b: model.loss_fn(p, b, None, train=True))(params, batch)
    for key in ("cross_entropy", "z_loss", "moe_aux_loss", "moe_z_loss", "accuracy",
                "num_tokens"):
        assert key in metrics
    assert float(metrics["num_tokens"]) == batch["decoder_loss_weights"].sum()
    assert np.isfinite(float(loss)) and 5.0 < float(metrics["cross_entropy"]) < 8.0  # ~ln 512
    logp = model.score_batch(params, batch)
    assert logp.shape == (2, 32) and logp.dtype == jnp.float32
    w = batch["decoder_loss_weights"]
    _, eval_metrics = model.loss_fn(params, batch, None, train=False)  # same capacity as scoring
    np.testing.assert_allclose(-(logp * w).sum() / w.sum(), eval_metrics["cross_entropy"],
                               rtol=1e-5)
    assert model.flops_per_token() > 6 * active * 0.5


def test_loss_falls_with_sgd():
    model = DecoderOnlyModel(model_config("tiny", {"num_layers": 1, **TEXT_ONLY}))
    batch = text_batch()
    params = nn.unbox(model.init(jax.random.PRNGKey(1), batch))
    step = jax.jit(lambda p: jax.value_and_grad(lambda q: model.loss_fn(q, batch)[0])(p))
    first, _ = step(params)
    for _ in range(5):
        loss, g = step(params)
        params = jax.tree.map(lambda p, d: p - 0.5 * d, params, g)
    assert float(loss) < float(first) - 0.5


def test_packed_segments_are_independent():
    """Row 1's second document scores the same alone as when packed."""
    model = DecoderOnlyModel(model_config("tiny", {"num_layers": 1, **TEXT_ONLY}))
    batch = text_batch()
    params = model.init(jax.random.PRNGKey(0), batch)
    packed = model.score_batch(params, batch)[1, 16:29]
    alone = {k: v[1:2, 16:29] for k, v in batch.items()}
    alone["decoder_segment_ids"] = np.ones_like(alone["decoder_segment_ids"])
    np.testing.assert_allclose(model.score_batch(params, alone)[0], packed, atol=1e-5)


def test_gin_tiny_and_bad_override():
    gin.clear_config()
    gin.parse_config_files_and_bindings(["gin/models/tiny.gin"], [])
    model = gin.get_configurable(DecoderOnlyModel)()
    assert model.config.d_model == 128
    gin.clear_config()
    with pytest.raises(ValueError, match="did you mean 'num_layers'"):
        model_config("tiny", {"num_layer": 3})
    with pytest.raises(ValueError, match="num_kv_heads"):
        model_config("tiny", {"num_kv_heads": 3})


@pytest.mark.parametrize("tied", [False, True])
def test_chunked_loss_equals_full(tied):
    over = {**TEXT_ONLY, "vocab_size": 300, "num_layers": 1, "tie_embeddings": tied}
    full = DecoderOnlyModel(model_config("tiny", over))
    chunked = DecoderOnlyModel(model_config("tiny", {**over, "loss_chunk": 24}))  # 64 % 24 != 0
    batch = text_batch(vocab=300)
    params = full.init(jax.random.PRNGKey(0), batch)
    (l1, m1), g1 = jax.value_and_grad(lambda p: full.loss_fn(p, batch), has_aux=True)(params)
    (l2, m2), g2 = jax.value_and_grad(lambda p: chunked.loss_fn(p, batch), has_aux=True)(params)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    np.testing.assert_allclose(m1["accuracy"], m2["accuracy"])
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(full.score_batch(params, batch),
                               chunked.score_batch(params, batch), rtol=1e-5, atol=1e-5)
    # Scoring gathered positions only (the eval path) equals the full-row scores there.
    positions = np.array([[0, 5, 31], [16, 16, 28]], np.int32)
    want = np.take_along_axis(np.asarray(full.score_batch(params, batch)), positions, axis=1)
    np.testing.assert_allclose(full.score_positions(params, batch, positions), want,
                               rtol=1e-5, atol=1e-5)
    logits, _ = full.logits(params, batch)
    np.testing.assert_allclose(full.logits_at(params, batch, positions),
                               np.take_along_axis(logits, positions[..., None], axis=1),
                               rtol=1e-5, atol=1e-5)

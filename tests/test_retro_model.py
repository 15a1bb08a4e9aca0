"""RETRO decoder (model/nn/retro.py): chunk causality, retrieval off = plain decoder, RETROfit."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.config import TransformerConfig
from model.models import DecoderOnlyModel
from model.nn import retro

M, C, K, R = 4, 4, 2, 8  # chunk length, chunks per row, neighbours, neighbour length
T = M * C
CFG = TransformerConfig(vocab_size=64, d_model=32, num_layers=3, num_heads=2, num_kv_heads=2,
                        head_dim=16, d_ff=64, max_len=T)
# CCA after layers 1 and 3: the encoder is conditioned on layer 1's activations and a
# decoder block runs after the first CCA, so leaks would spread through self-attention.
RC = retro.RetroConfig(chunk_len=M, num_neighbours=K, neighbour_len=R, cca_layers=(1, 3),
                       encoder_layers=1)


def _batch(seed=0, b=2):
    rng = np.random.default_rng(seed)
    toks = rng.integers(2, CFG.vocab_size, (b, T)).astype(np.int32)
    nbrs = rng.integers(2, CFG.vocab_size, (b, C, K, R)).astype(np.int32)
    nbrs[1, 2, 1, R // 2:] = 0  # a padded continuation
    nbrs[0, 3] = 0  # a chunk with no neighbours
    return {"decoder_input_tokens": toks, "decoder_target_tokens": np.roll(toks, -1, 1),
            retro.NEIGHBOURS_KEY: nbrs}


@pytest.fixture(scope="module")
def model_and_params():
    model = retro.RetroDecoderModel(CFG, RC)
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), _batch()))
    # Fresh CCA output projections are small; make retrieval's effect plain to see.
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: x * 8.0 if "retro_cca" in jax.tree_util.keystr(p) else x, params)
    return model, params


def test_cca_layer_rules():
    assert retro.cca_layer_numbers(32) == tuple(range(6, 33, 3))  # the paper's 6, 9, ..., 30
    assert retro.cca_layer_numbers(32, "megatron") == tuple(range(9, 33, 3))
    assert retro.cca_layer_numbers(12, "megatron") == (6, 9, 12)
    assert retro.cca_layer_numbers(2) == (2,)  # shallower than 6: the last layer
    with pytest.raises(ValueError, match="cca_layers"):
        retro.RetroConfig(cca_layers=(4,)).layers_for(CFG)
    with pytest.raises(ValueError, match="did you mean 'chunk_len'"):
        retro.retro_config({"chunk_length": 8})


def test_retrieval_off_is_the_plain_decoder(model_and_params):
    model, params = model_and_params
    batch = _batch()
    plain_params = {k: v for k, v in params.items() if not k.startswith(retro.RETRO_PREFIX)}
    assert set(params) - set(plain_params)  # the encoder and CCA params exist
    plain_model = DecoderOnlyModel(CFG)
    plain = jax.jit(lambda p, b: plain_model.logits(p, b)[0])(plain_params, batch)
    retro_logits = jax.jit(lambda p, b: model.logits(p, b)[0])
    no_key = {k: v for k, v in batch.items() if k != retro.NEIGHBOURS_KEY}
    np.testing.assert_allclose(retro_logits(params, no_key), plain, atol=1e-6)
    empty = dict(batch, **{retro.NEIGHBOURS_KEY: np.zeros_like(batch[retro.NEIGHBOURS_KEY])})
    np.testing.assert_allclose(retro_logits(params, empty), plain, atol=1e-5)
    on = retro_logits(params, batch)
    assert float(jnp.max(jnp.abs(on - plain))) > 1e-2  # retrieval does change the output


def test_no_chunk_sees_its_own_future(model_and_params):
    model, params = model_and_params
    batch = _batch(seed=1)
    logits = jax.jit(lambda toks, nbrs: model.logits(
        params, {"decoder_input_tokens": toks, retro.NEIGHBOURS_KEY: nbrs})[0])
    base = np.asarray(logits(batch["decoder_input_tokens"], batch[retro.NEIGHBOURS_KEY]))
    # Chunk u's neighbours reach only positions >= uM+M-1 (the last token of chunk u).
    for u in range(C - 1):
        nbrs = batch[retro.NEIGHBOURS_KEY].copy()
        nbrs[:, u] = (nbrs[:, u] + 7) % (CFG.vocab_size - 2) + 2
        out = np.asarray(logits(batch["decoder_input_tokens"], nbrs))
        first = u * M + M - 1
        np.testing.assert_array_equal(out[:, :first], base[:, :first], err_msg=f"chunk {u}")
        assert np.abs(out[:, first] - base[:, first]).max() > 1e-4
    # Token t (which conditions its chunk's neighbour encoding) changes nothing before t.
    for t in (1, M - 1, M, 2 * M + 1, 3 * M - 1):
        toks = batch["decoder_input_tokens"].copy()
        toks[:, t] = (toks[:, t] + 5) % CFG.vocab_size
        out = np.asarray(logits(toks, batch[retro.NEIGHBOURS_KEY]))
        np.testing.assert_allclose(out[:, :t], base[:, :t], atol=1e-6, err_msg=f"token {t}")
        assert np.abs(out[:, t] - base[:, t]).max() > 1e-4


class _RetrievalPath(nn.Module):
    """The CCA residual with queries from h and the encoder conditioned on cond (both [B,T,D])."""

    @nn.compact
    def __call__(self, h, cond, nbr_x, nbr_mask):
        enc = retro.NeighbourEncoder(1, 2, 8, 32, 1e-5, 1e4)(nbr_x, nbr_mask,
                                                             retro.row_chunks(cond, M, C))
        return retro.ChunkedCrossAttention(M, 2, 8, 1e4)(h, enc, nbr_mask)


def test_retrieval_path_reaches_only_past_the_chunk_boundary():
    """Perturbing the chunk activations at t changes the CCA residual only at positions
    >= the end of t's chunk; the first M-1 positions get nothing."""
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(2, T, 16)), jnp.float32)
    nbr_x = jnp.asarray(rng.normal(size=(2, C, K, R, 16)), jnp.float32)
    mask = jnp.ones((2, C, K, R), bool)
    path = _RetrievalPath()
    params = jax.jit(path.init)(jax.random.PRNGKey(1), h, h, nbr_x, mask)
    run = jax.jit(lambda cond: path.apply(params, h, cond, nbr_x, mask))
    base = np.asarray(run(h))
    np.testing.assert_array_equal(base[:, :M - 1], 0.0)
    for t in range(T):
        out = np.asarray(run(h.at[:, t].add(1.0)))
        boundary = (t // M + 1) * M - 1  # the last token of t's chunk
        changed = np.abs(out - base).max(axis=(0, 2)) > 1e-6
        assert not changed[:boundary].any(), (t, np.nonzero(changed)[0])
        assert changed[boundary], t


def test_retrofit_updates_only_retro_params(model_and_params):
    from model.partitioning import Partitioner
    from model.trainer import Trainer
    model, params = model_and_params
    batch = _batch()
    opt = retro.retrofit_adamw(learning_rate=1e-2)
    # The trainer can shard its state (abstract only: no compute).
    Trainer(model, opt, Partitioner((-1, 1, 1), num_devices=1)).abstract_state(batch)

    @jax.jit
    def updates_of(p):
        grads = jax.grad(lambda q: model.loss_fn(q, batch, train=True)[0])(p)
        return opt.update(grads, opt.init(p), p)[0]

    updates = updates_of(params)
    for key, sub in updates.items():
        norm = float(sum(jnp.abs(x).sum() for x in jax.tree.leaves(sub)))
        if key.startswith(retro.RETRO_PREFIX):
            assert norm > 0, key
        else:
            assert norm == 0, key


def test_gin_experiments_build_the_retro_model():
    import gin
    from model import train as train_lib  # noqa: F401  (registers train and its configurables)
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings(["gin/experiments/retrofit.gin"], [
            "MODEL_DIR='/tmp/unused'", "CACHE_DIR='/tmp/unused'", "TRAIN_STEPS=10"],
            skip_unknown=False)
        model = gin.query_parameter("train.model").scoped_configurable_fn()
        assert isinstance(model, retro.RetroDecoderModel)
        assert model.retro.layers_for(model.config) == (2, 4)
        assert gin.query_parameter("train.optimizer_fn").selector == "retrofit_adamw"
    finally:
        gin.clear_config()

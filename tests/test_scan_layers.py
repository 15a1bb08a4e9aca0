"""scan_layers: the nn.scan decoder equals the unrolled one (loss, grads, decoding, media)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.config import PRESETS, model_config
from model.decoding import generate
from model.models import DecoderOnlyModel
from model.partitioning import Partitioner
from model.transformer import REMAT_POLICIES, stack_layers, unstack_layers
from tests.test_model_api import text_batch

# Small widths: these tests are about the layer stack, and compile time dominates them.
SMALL = {"vocab_size": 512, "d_model": 32, "num_heads": 2, "num_kv_heads": 1, "head_dim": 16,
         "d_ff": 64, "block_q": 16, "block_kv": 16}
TEXT_ONLY = {**SMALL, "image": None, "video": None, "audio": None}


def _pair(preset, over, text_only=True):
    """(unrolled model, scanned model) of the same config."""
    base = {**(TEXT_ONLY if text_only else SMALL), **over}
    if PRESETS[preset].moe is not None:
        base.setdefault("moe.expert_hidden", 32)
    return (DecoderOnlyModel(model_config(preset, base)),
            DecoderOnlyModel(model_config(preset, {**base, "scan_layers": True})))


@pytest.mark.parametrize("preset,over", [
    # dense + MoE layers (period 'dm' scanned twice), capacity routing, a remat policy
    ("tiny_moe", {"num_layers": 4, "remat": "dots_saveable"}),
    # every layer MoE (period 'm' scanned twice), dropless routing, parallel blocks
    ("tiny_moe", {"num_layers": 2, "layer_pattern": "m", "moe.dispatch": "dropless",
                  "parallel_block": True, "remat": "full"}),
])
def test_scanned_loss_and_grads_match_unrolled(preset, over):
    unrolled, scanned = _pair(preset, over)
    batch = text_batch()
    params = jax.jit(unrolled.init)(jax.random.PRNGKey(0), batch)
    stacked = stack_layers(params, unrolled.config)
    # Same tree (and logical axis names) as the scanned model's own init.
    own = jax.eval_shape(scanned.init, jax.random.PRNGKey(1), batch)
    assert jax.tree.structure(own) == jax.tree.structure(stacked)
    names = lambda t: [b.names for b in jax.tree.leaves(
        t, is_leaf=lambda x: isinstance(x, nn.Partitioned))]
    assert names(own) == names(stacked)
    assert all(n[0] == "layers" for n in names(own["layers"]))

    loss_grad = lambda m: jax.jit(jax.value_and_grad(
        lambda p: m.loss_fn(p, batch, None, train=True), has_aux=True))
    (l0, m0), g0 = loss_grad(unrolled)(nn.unbox(params))
    (l1, m1), g1 = loss_grad(scanned)(nn.unbox(stacked))
    assert abs(float(l0) - float(l1)) <= 1e-6
    assert sorted(m0) == sorted(m1)  # the same per-MoE-layer metric keys, in layer order
    for key in m0:
        np.testing.assert_allclose(m1[key], m0[key], atol=1e-6, err_msg=key)
    g1 = unstack_layers(g1, unrolled.config)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g0, g1)
    # unstack inverts stack, boxes (logical names) included.
    back = unstack_layers(stacked, unrolled.config)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    assert names(back) == names(params)
    jax.tree.map(np.testing.assert_array_equal, nn.unbox(back), nn.unbox(params))


def test_scanned_decoding_matches_unrolled():
    unrolled, scanned = _pair("tiny_moe", {"num_layers": 2, "moe.capacity_factor_eval": 2.0})
    prompts = np.array([[0, 11, 12, 13, 14, 15], [0, 21, 22, 0, 0, 0]], np.int32)
    batch = {"decoder_input_tokens": prompts, "prompt_lengths": np.array([6, 3], np.int32)}
    params = jax.jit(unrolled.init)(jax.random.PRNGKey(0), {"decoder_input_tokens": prompts})
    kw = dict(max_new_tokens=4, return_logits=True, eos_id=-1)
    t0, l0 = generate(unrolled, params, batch, **kw)
    t1, l1 = generate(scanned, stack_layers(params, unrolled.config), batch, **kw)
    np.testing.assert_array_equal(t1, t0)
    np.testing.assert_allclose(l1, l0, atol=1e-5)


def test_scanned_with_media_encoders():
    unrolled, scanned = _pair("tiny_moe", {"num_layers": 2, "video": None, "audio": None},
                              text_only=False)
    batch = text_batch()
    tokens = batch["decoder_input_tokens"]
    k = unrolled.config.image.slots_per_item
    tokens[0, 2:2 + k] = 3  # one image's placeholders in row 0
    batch["decoder_target_tokens"] = np.roll(tokens, -1, 1)
    batch["images"] = np.random.default_rng(0).integers(0, 255, (2, 1, 32, 32, 3), np.uint8)
    batch["image_mask"] = np.array([[True], [False]])
    params = jax.jit(unrolled.init)(jax.random.PRNGKey(0), batch)
    l0 = jax.jit(unrolled.loss_fn)(params, batch)[0]
    l1 = jax.jit(scanned.loss_fn)(stack_layers(params, unrolled.config), batch)[0]
    assert abs(float(l0) - float(l1)) <= 1e-6


def test_scan_needs_whole_periods_and_remat_names_agree():
    with pytest.raises(ValueError, match="num_layers=3.*multiple of len\\(layer_pattern\\)=2"):
        model_config("tiny_moe", {"num_layers": 3, "scan_layers": True})
    from model.config import REMAT_POLICIES as NAMES
    assert set(NAMES) == set(REMAT_POLICIES) | {"none"}


@pytest.mark.parametrize("preset", ["base", "large_moe"])
def test_presets_lower_with_scan(preset):
    """Real sizes, abstractly: eval_shape init + lowering of a train-mode loss on a mesh."""
    model = DecoderOnlyModel(model_config(preset, {"scan_layers": True, "image": None,
                                                   "video": None, "audio": None}))
    batch = {k: jax.ShapeDtypeStruct((8, 256), jnp.float32 if k == "decoder_loss_weights"
                                     else jnp.int32) for k in text_batch()}
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), batch)
    stack = params["layers"]["layer_0"]["attention"]["query"]["kernel"]
    assert stack.names[0] == "layers"
    assert stack.value.shape[0] == model.config.num_layers // len(model.config.layer_pattern)
    part = Partitioner((2, 2, 2))
    specs = part.param_specs(params)
    assert specs["layers"]["layer_0"]["attention"]["query"]["kernel"][0] is None  # unsharded
    grad = part.jit(jax.grad(lambda p, b: model.loss_fn(p, b, None)[0]),
                    in_shardings=(part.shardings(specs), part.batch_shardings(batch)))
    text = grad.lower(nn.unbox(params), batch).as_text()
    assert "while" in text  # one scanned loop, not num_layers copies
    assert PRESETS[preset].num_layers > 2

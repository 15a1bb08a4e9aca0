"""GTrXL blocks (model/nn/gating.py): gates start as the identity with a large bias; the
block types build through the decoder and validate their config."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.config import model_config
from model.layers import rope_tables
from model.models import DecoderOnlyModel
from model.nn import gating

D = 32


def _block_inputs(b=2, t=8):
    x = jax.random.normal(jax.random.key(0), (b, t, D))
    sin, cos = rope_tables(jnp.broadcast_to(jnp.arange(t), (b, t)), 16, 10000.0)
    return x, sin, cos, jnp.ones((b, t), jnp.int32)


@pytest.mark.parametrize("gate", ["gru", "output", "highway", "sigmoid_tanh"])
def test_gated_block_is_identity_at_init_with_large_bias(gate):
    block = gating.GatedDecoderBlock(2, 1, 16, 64, 1e-5, gate=gate, gate_bias=30.0)
    args = _block_inputs()
    params = jax.jit(block.init)(jax.random.key(1), *args)
    out, _ = jax.jit(block.apply)(params, *args)
    np.testing.assert_allclose(out, args[0], atol=1e-6)
    # With the default b_g = 2 the block is not the identity (the gate is open a little).
    out2, _ = jax.jit(gating.GatedDecoderBlock(2, 1, 16, 64, 1e-5, gate=gate).apply)(
        params, *args)
    assert float(jnp.max(jnp.abs(out2 - args[0]))) > 1e-3


def test_gate_formulas():
    x, y = (jax.random.normal(k, (1, 3, D)) for k in jax.random.split(jax.random.key(2)))
    for kind in gating.GATES:
        gate = gating.Gate(kind, bias=2.0)
        p = nn.meta.unbox(gate.init(jax.random.key(3), x, y))
        w = {k: v["kernel"] for k, v in p["params"].items()}
        sig = jax.nn.sigmoid
        expected = {
            "gru": lambda: ((1 - (z := sig(y @ w["w_z"] + x @ w["u_z"] - 2.0))) * x
                            + z * jnp.tanh(y @ w["w_g"]
                                           + (sig(y @ w["w_r"] + x @ w["u_r"]) * x) @ w["u_g"])),
            "input": lambda: sig(x @ w["w_g"]) * x + y,
            "output": lambda: x + sig(x @ w["w_g"] - 2.0) * y,
            "highway": lambda: (c := sig(x @ w["w_g"] + 2.0)) * x + (1 - c) * y,
            "sigmoid_tanh": lambda: x + sig(y @ w["w_g"] - 2.0) * jnp.tanh(y @ w["u_g"]),
        }[kind]()
        np.testing.assert_allclose(gate.apply(p, x, y), expected, rtol=1e-5, atol=1e-6)


def test_block_type_validation_names_the_fix():
    with pytest.raises(ValueError, match="did you mean 'gtrxl'"):
        model_config("tiny", {"block_type": "gtrxI"})
    with pytest.raises(ValueError, match="parallel_block=True needs block_type='pre_norm'"):
        model_config("tiny", {"block_type": "trxl_i", "parallel_block": True})
    with pytest.raises(ValueError, match="gate='lstm'"):
        model_config("tiny", {"gate": "lstm"})


@pytest.mark.parametrize("gate", ["gru", "sigmoid_tanh", "highway"])
def test_param_counts_include_the_gates(gate):
    from model import flops
    cfg = model_config("tiny", dict(d_model=D, num_layers=2, num_heads=2, num_kv_heads=1,
                                    head_dim=16, d_ff=64, vocab_size=64, max_len=16,
                                    block_type="gtrxl", gate=gate, image=None, video=None,
                                    audio=None))
    batch = {"decoder_input_tokens": jnp.zeros((1, 8), jnp.int32)}
    shapes = jax.eval_shape(DecoderOnlyModel(cfg).init, jax.random.key(0), batch)
    n = sum(x.size for x in jax.tree.leaves(nn.meta.unbox(shapes)))
    assert flops.param_counts(cfg)[0] == n


def test_gtrxl_with_transformer_xl_memory_equals_full_context():
    """Segment by segment with a Transformer-XL memory of the previous 2 segments gives
    the full-context logits (the memory issue's recurrence, through gated blocks)."""
    from model.nn.memory import empty_memory
    small = dict(d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, d_ff=64,
                 vocab_size=97, image=None, video=None, audio=None, attention_backend="xla",
                 block_type="gtrxl")
    plain = DecoderOnlyModel(model_config("tiny", small))
    xl = DecoderOnlyModel(model_config("tiny", dict(small, **{"memory.mem_len": 16})))
    t, n = 8, 24
    toks = np.random.RandomState(0).randint(2, 97, (2, n)).astype(np.int32)
    batch = {"decoder_input_tokens": toks, "decoder_target_tokens": np.roll(toks, -1, 1),
             "decoder_segment_ids": np.ones((2, n), np.int32),
             "decoder_positions": np.tile(np.arange(n, dtype=np.int32), (2, 1))}
    seg = lambda i: {k: v[:, i * t:(i + 1) * t] for k, v in batch.items()}
    params = jax.jit(lambda k: nn.meta.unbox(plain.init(k, seg(0))))(jax.random.key(0))
    full, _ = jax.jit(plain.logits)(params, batch)

    @jax.jit
    def forward(params, b, memory):
        (logits, _), state = xl._forward(xl.module(), params, b, memory)
        return logits, state["memory"]

    memory, outs = empty_memory(xl, params, seg(0)), []
    for i in range(n // t):
        logits, memory = forward(params, seg(i), memory)
        outs.append(logits)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=1e-5, rtol=1e-5)

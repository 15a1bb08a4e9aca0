"""Context parallelism (model/nn/context_parallel.py) on 8 fake CPU devices: attention and
a full train step over rows split 8 ways equal the single-device result (1e-5)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.attention import segment_causal_mask, xla_attention
from model.config import model_config
from model.models import DecoderOnlyModel
from model.nn.context_parallel import context_parallel_attention
from model.partitioning import DEFAULT_LOGICAL_AXIS_RULES, Partitioner
from model.trainer import Trainer, adamw

L = 64
CP_RULES = (("length", "context"),) + tuple(r for r in DEFAULT_LOGICAL_AXIS_RULES
                                            if r[0] != "length")


def _qkv(b=2, n=4, k=2, h=8):
    ks = jax.random.split(jax.random.PRNGKey(0), 3)
    seg = np.ones((b, L), np.int32)
    seg[0, 20:] = 2  # packed: a boundary inside shard 2, padding at the end of row 1
    seg[1, -5:] = 0
    return (jax.random.normal(ks[0], (b, L, n, h)), jax.random.normal(ks[1], (b, L, k, h)),
            jax.random.normal(ks[2], (b, L, k, h)), jnp.asarray(seg))


@pytest.mark.parametrize("strategy", ["ring", "allgather"])
def test_attention_split_eight_ways_equals_one_device(strategy):
    q, k, v, seg = _qkv()
    ref = xla_attention(q, k, v, segment_causal_mask(seg))
    part = Partitioner((1, 1, 1, 8), logical_axis_rules=CP_RULES)
    w = jax.random.normal(jax.random.PRNGKey(1), q.shape)

    def loss(q, k, v):
        return jnp.sum(context_parallel_attention(q, k, v, seg, strategy=strategy) * w)

    with part.context():
        out = jax.jit(lambda *a: context_parallel_attention(*a, seg, strategy=strategy))(q, k, v)
        grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    ref_grads = jax.grad(lambda *a: jnp.sum(xla_attention(*a, segment_causal_mask(seg)) * w),
                         argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-5)


def test_train_step_split_eight_ways_equals_one_device():
    small = {"d_model": 32, "num_layers": 1, "num_heads": 4, "num_kv_heads": 2, "head_dim": 8,
             "d_ff": 64, "vocab_size": 97, "image": None, "video": None, "audio": None}
    rs = np.random.RandomState(0)
    toks = rs.randint(2, 97, (2, L)).astype(np.int32)
    batch = {"decoder_input_tokens": toks, "decoder_target_tokens": np.roll(toks, -1, 1),
             "decoder_loss_weights": np.ones((2, L), np.int32),
             "decoder_segment_ids": np.ones((2, L), np.int32),
             "decoder_positions": np.tile(np.arange(L, dtype=np.int32), (2, 1))}
    results = []
    for backend, part in (("xla", Partitioner((1, 1, 1), num_devices=1)),
                          ("context", Partitioner((1, 1, 1, 8), logical_axis_rules=CP_RULES))):
        model = DecoderOnlyModel(model_config("tiny", dict(small, attention_backend=backend)))
        tr = Trainer(model, adamw(learning_rate=1e-2), part)
        state = tr.init_state(jax.random.PRNGKey(0), batch)
        state, metrics = tr.jit_train_step(batch)(state, part.shard_batch(batch))
        results.append((jax.device_get(state.params), jax.device_get(metrics)))
    (p1, m1), (p8, m8) = results
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p8), jax.tree.leaves(p1)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)

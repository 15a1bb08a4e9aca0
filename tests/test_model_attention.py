"""Blockwise attention equals plain attention (fp32, 1e-5), packed segments included."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.attention import segment_causal_mask, xla_attention
from model import blockwise_attention as blockwise_lib
from model.blockwise_attention import blockwise_attention
from model.layers import apply_rope, rope_tables


def _inputs(b, t, n, k, h, seed=0):
    ks = jax.random.split(jax.random.PRNGKey(seed), 3)
    q = jax.random.normal(ks[0], (b, t, n, h))
    kk = jax.random.normal(ks[1], (b, t, k, h))
    v = jax.random.normal(ks[2], (b, t, k, h))
    seg = np.ones((b, t), np.int32)
    seg[0, t // 3:] = 2  # packed: 3 segments in row 0, padding at the end of row 1
    seg[0, 2 * t // 3:] = 3
    seg[-1, -5:] = 0
    return q, kk, v, jnp.asarray(seg)


@pytest.fixture(params=["loop", "unrolled"])
def schedule(request, monkeypatch):
    """Runs a test under both schedules (the length threshold picks one)."""
    monkeypatch.setattr(blockwise_lib, "UNROLLED_MAX_LEN", 0 if request.param == "loop" else 10**6)
    return request.param


@pytest.mark.parametrize("t,n,k,bq,bk", [(64, 4, 4, 16, 16), (64, 4, 2, 16, 32),
                                         (50, 4, 1, 16, 8), (32, 2, 2, 64, 64)])
def test_blockwise_matches_plain(t, n, k, bq, bk, schedule):
    q, kk, v, seg = _inputs(2, t, n, k, 16)
    # One compile per function (op-by-op dispatch of the block loops is slow).
    plain = jax.jit(lambda q, kk, v: xla_attention(q, kk, v, segment_causal_mask(seg)))
    block = jax.jit(lambda q, kk, v: blockwise_attention(q, kk, v, seg, block_q=bq, block_kv=bk))
    np.testing.assert_allclose(block(q, kk, v), plain(q, kk, v), atol=1e-5, rtol=1e-5)
    w = jax.random.normal(jax.random.PRNGKey(9), (2, t, n, 16))
    grads = lambda f: jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) * w), argnums=(0, 1, 2)))(
        q, kk, v)
    for gb, gp in zip(grads(block), grads(plain)):
        np.testing.assert_allclose(gb, gp, atol=1e-5, rtol=1e-5)


def test_packed_rows_do_not_leak(schedule):
    q, kk, v, seg = _inputs(1, 48, 2, 2, 8)
    out = blockwise_attention(q, kk, v, seg, block_q=16, block_kv=16)
    # Changing segment 1's keys/values leaves segments 2 and 3 unchanged.
    v2 = v.at[:, :16].add(1.0)
    out2 = blockwise_attention(q, kk, v2, seg, block_q=16, block_kv=16)
    np.testing.assert_array_equal(out[:, 16:], out2[:, 16:])
    assert not np.allclose(out[:, :16], out2[:, :16])


def test_rope_relative():
    """Rotary scores depend only on the position difference."""
    h = 16
    q = jax.random.normal(jax.random.PRNGKey(0), (1, 1, 1, h))
    k = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 1, h))
    def score(pq, pk):
        sq, cq = rope_tables(jnp.array([[pq]]), h, 10000.0)
        sk, ck = rope_tables(jnp.array([[pk]]), h, 10000.0)
        return jnp.sum(apply_rope(q, sq, cq) * apply_rope(k, sk, ck))
    np.testing.assert_allclose(score(7, 3), score(104, 100), rtol=1e-4)
    np.testing.assert_allclose(score(0, 0), jnp.sum(q * k), rtol=1e-5)

"""Parameter counts and FLOPs: the analytic helper equals the real parameter tree of
every preset (jax.eval_shape, no allocation), and the gin comments stay current."""
import pathlib

import flax.linen as nn
import jax
import numpy as np
import pytest

from model.config import PRESETS, model_config
from model.flops import describe, flops_per_token
from model.models import DecoderOnlyModel

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_param_count_matches_tree_and_gin(name):
    model = DecoderOnlyModel(model_config(name))
    batch = {"decoder_input_tokens": np.zeros((1, 8), np.int32)}
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch))
    leaves = jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert all(isinstance(p, nn.Partitioned) for p in leaves), "every param has axis names"
    total = sum(int(np.prod(p.value.shape)) for p in leaves)
    assert total == model.param_counts()[0]
    gin_file = REPO / "gin" / "models" / f"{name}.gin"
    assert describe(model.config) in gin_file.read_text(), f"regenerate the comment in {gin_file}"


def test_flops_by_hand_maxtext_shapes():
    d, f, v, layers, t = 256, 1024, 8192, 4, 512
    matmul = layers * (4 * d * d + 3 * d * f) + d * v
    attention = layers * 2 * d * (t / 2)
    assert flops_per_token(model_config("maxtext_dense"), t) == 6 * matmul + 6 * attention
    dense_active = DecoderOnlyModel(model_config("maxtext_dense")).param_counts()[1]
    moe_total, moe_active = DecoderOnlyModel(model_config("maxtext_moe")).param_counts()
    # 8 experts of 512 with top-2 activate the same FFN width as the dense 1024 (+ router).
    assert moe_active - dense_active == layers * d * 8
    assert moe_total - moe_active == layers * 6 * 3 * d * 512

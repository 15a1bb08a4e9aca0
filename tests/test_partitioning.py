"""Mesh, logical rules and sharded training: every mesh trains like one device."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from model.config import model_config
from model.dataset_config import DatasetConfig
from model.models import DecoderOnlyModel
from model.partitioning import Partitioner, resolve_mesh_shape
from model.synthetic_data import synthetic_dataset_fn
from model.trainer import Trainer, adamw, warmup_cosine_schedule
from tests import train_testlib

pytestmark = pytest.mark.slow  # six train-step compilations

needs8 = pytest.mark.skipif(
    jax.device_count() < 8,
    reason="needs 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8 (make test)")

TINY_MOE = dict(d_model=32, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=16, d_ff=64,
                vocab_size=256, max_len=32, image=None, video=None, audio=None)
DATA = DatasetConfig("synthetic", {"targets": 32}, batch_size=16)


def _model():
    return DecoderOnlyModel(model_config("tiny_moe", TINY_MOE))


_INITIAL = {}


def _losses(mesh_shape, num_devices=None, steps=5, fsdp=False, num_microbatches=1):
    part = Partitioner(mesh_shape, fsdp=fsdp, num_devices=num_devices)
    schedule = warmup_cosine_schedule(1e-2, 1, 50)
    tr = Trainer(_model(), adamw(schedule), part, schedule,
                 num_microbatches=num_microbatches)
    batches = list(synthetic_dataset_fn(DATA, 0, 1, 0, vocab_size=256, num_batches=steps))
    if not _INITIAL:  # initialise once (one compile), then place it on every mesh
        _INITIAL["state"] = jax.device_get(
            tr.init_state(jax.random.key(0), part.shard_batch(batches[0])))
    return train_testlib.step_losses(tr, batches, _INITIAL["state"])


@pytest.fixture(scope="module")
def single_device():
    return _losses((1, 1, 1), num_devices=1)


def test_resolve_mesh_shape():
    assert resolve_mesh_shape((-1, 1, 1), 8) == (8, 1, 1)
    assert resolve_mesh_shape((2, -1, 2), 8) == (2, 2, 2)
    with pytest.raises(ValueError, match="uses 4 devices but 8"):
        resolve_mesh_shape((2, 2, 1), 8)
    with pytest.raises(ValueError, match="at most one -1"):
        resolve_mesh_shape((-1, -1, 1), 8)
    with pytest.raises(ValueError, match="not divisible"):
        resolve_mesh_shape((-1, 3, 1), 8)


def test_bad_rule_is_named():
    with pytest.raises(ValueError, match="'mlp' -> 'modle'"):
        Partitioner((1, 1, 1), logical_axis_rules=[("mlp", "modle")], num_devices=1)


@needs8
def test_batch_size_validation_says_how_to_fix():
    part = Partitioner((4, 2, 1))
    part.validate_batch_size(16, num_microbatches=2)
    with pytest.raises(ValueError, match=r"\(12\) must be divisible by the number of batch "
                                         r"shards data\*expert \(8\)"):
        part.validate_batch_size(12)


@needs8
@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 2, 2), (1, 4, 2)])
def test_mesh_matches_single_device(single_device, mesh_shape):
    ref, _ = single_device
    losses, state = _losses(mesh_shape)
    assert ref[-1] < ref[0]  # it learns
    np.testing.assert_allclose(losses, ref, rtol=2e-5, atol=2e-5)
    # parameters really are sharded the way the rules say
    specs = {jax.tree_util.keystr(k): v.sharding.spec
             for k, v in jax.tree_util.tree_flatten_with_path(state.params)[0]}
    if mesh_shape[2] > 1:
        assert any("model" in str(s) for s in specs.values()), specs
    if mesh_shape[1] > 1:
        assert any("expert" in str(s) for s in specs.values()), specs


@needs8
def test_fsdp_shards_params_and_matches(single_device):
    ref, _ = single_device
    losses, state = _losses((8, 1, 1), fsdp=True)
    np.testing.assert_allclose(losses, ref, rtol=2e-5, atol=2e-5)
    sharded = [v for v in jax.tree.leaves(state.params) if "data" in str(v.sharding.spec)]
    assert len(sharded) >= len(jax.tree.leaves(state.params)) // 2
    mu = [v for v in jax.tree.leaves(state.opt_state) if getattr(v, "ndim", 0) >= 2]
    assert any("data" in str(v.sharding.spec) for v in mu)  # optimizer moments follow


def test_microbatches_match_full_batch(single_device):
    ref, _ = single_device
    losses, _ = _losses((1, 1, 1), num_devices=1, num_microbatches=2)
    np.testing.assert_allclose(losses, ref, rtol=1e-4, atol=1e-4)


def test_rules_put_dispatched_tokens_expert_dim_on_expert_axis():
    """MoE buffers [E, B*C, D]: E over 'expert', rows over 'data'; activations [B, T, D]
    still split rows over ('data', 'expert'); expert weights E over 'expert'."""
    import flax.linen as nn
    from jax.sharding import PartitionSpec as P
    rules = Partitioner((1, 1, 1), num_devices=1).rules
    assert nn.logical_to_mesh_axes(("expert", "batch", "embed"), rules) == P(
        "expert", "data", None)
    assert nn.logical_to_mesh_axes(("batch", "length", "embed"), rules) == P(
        ("data", "expert"), None, None)
    assert nn.logical_to_mesh_axes(("expert", "embed", "mlp"), rules) == P(
        "expert", None, "model")

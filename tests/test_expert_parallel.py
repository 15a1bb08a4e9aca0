"""Expert parallelism: the all-to-all exchange trains exactly like replicated experts."""
from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import moe_parallel
from model.config import model_config
from model.dataset_config import DatasetConfig
from model.models import DecoderOnlyModel
from model.moe import MoE
from model.partitioning import DEFAULT_LOGICAL_AXIS_RULES, Partitioner
from model.synthetic_data import synthetic_dataset_fn
from model.trainer import Trainer, adamw, warmup_cosine_schedule
from tests import train_testlib

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    jax.device_count() < 8,
    reason="needs 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8 (make test)")]

EP_MESHES = [(1, 4, 2), (2, 4, 1)]
DATA = DatasetConfig("synthetic", {"targets": 16}, batch_size=8)


def _model(dispatch: str) -> DecoderOnlyModel:
    # capacity_factor_train 1.0: tokens are dropped, so capacity is really exercised.
    return DecoderOnlyModel(model_config("tiny_moe", {
        "d_model": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 2, "head_dim": 16,
        "d_ff": 64, "vocab_size": 128, "max_len": 16, "image": None, "video": None,
        "audio": None, "layer_pattern": "m", "moe.expert_hidden": 32,
        "moe.capacity_factor_train": 1.0, "moe.dispatch": dispatch}))


def _trainer(dispatch: str, part: Partitioner) -> Trainer:
    schedule = warmup_cosine_schedule(1e-2, 1, 50)
    return Trainer(_model(dispatch), adamw(schedule), part, schedule)


_CACHE: dict = {}


def _losses(dispatch: str, mesh_shape, num_devices=None, steps=3):
    tr = _trainer(dispatch, Partitioner(mesh_shape, num_devices=num_devices))
    batches = list(synthetic_dataset_fn(DATA, 0, 1, 0, vocab_size=128, num_batches=steps))
    if "state" not in _CACHE:  # one initial state (same params for both dispatch modes)
        _CACHE["state"] = jax.device_get(tr.init_state(
            jax.random.key(0), tr.partitioner.shard_batch(batches[0])))
    return train_testlib.step_losses(tr, batches, _CACHE["state"])[0]


def test_plan_follows_mesh_and_rules():
    ep_rules = DEFAULT_LOGICAL_AXIS_RULES
    replicated = tuple(r for r in ep_rules if r[0] != "expert") + (("expert", None),)
    with Partitioner((2, 4, 1)).context():
        ep = moe_parallel.plan(num_experts=8, batch_size=16, hidden=32)
        assert ep == moe_parallel.ExpertParallel("expert", 4, ("data", "expert"), ("model",))
        assert moe_parallel.plan(num_experts=6, batch_size=16, hidden=32) is None  # 4 ∤ 6
        assert moe_parallel.plan(num_experts=8, batch_size=4, hidden=32) is None  # 8 ∤ 4
    with Partitioner((2, 4, 1), logical_axis_rules=replicated).context():
        assert moe_parallel.plan(num_experts=8, batch_size=16, hidden=32) is None
    with Partitioner((8, 1, 1)).context():
        assert moe_parallel.plan(num_experts=8, batch_size=16, hidden=32) is None
    assert moe_parallel.plan(num_experts=8, batch_size=16, hidden=32) is None  # no mesh


@pytest.mark.parametrize("dispatch", ["capacity", "dropless"])
def test_layer_forward_and_gradients_equal_replicated(dispatch):
    b, t, d = 8, 12, 16
    x = jax.random.normal(jax.random.PRNGKey(0), (b, t, d))
    mask = jnp.ones((b, t), bool).at[1, -3:].set(False).at[5, 4:].set(False)
    moe = MoE(num_experts=4, top_k=2, hidden=32, capacity_factor=1.0, dispatch=dispatch)
    params = nn.unbox(moe.init(jax.random.PRNGKey(1), x, mask))["params"]

    def loss(p, x):
        y, m = moe.apply({"params": p}, x, mask)
        return jnp.sum(jnp.sin(y)) + m["aux_loss"], (y, m["drop_fraction"])

    f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    (_, (y_ref, drop_ref)), g_ref = f(params, x)
    if dispatch == "capacity":
        assert 0.0 < float(drop_ref) < 0.5  # some tokens are dropped: capacity binds
    with Partitioner((1, 4, 2)).context():  # experts over 4, their hidden dim over 2
        (_, (y, drop)), g = f(params, x)
        assert "all_to_all" in f.lower(params, x).as_text()
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    assert float(drop) == float(drop_ref)
    for a, r in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def replicated_losses():
    return {mode: _losses(mode, (1, 1, 1), num_devices=1) for mode in ("capacity", "dropless")}


@pytest.mark.parametrize("dispatch", ["capacity", "dropless"])
@pytest.mark.parametrize("mesh_shape", EP_MESHES)
def test_train_losses_equal_replicated(replicated_losses, dispatch, mesh_shape):
    ref = replicated_losses[dispatch]
    assert ref[-1] < ref[0]  # it learns
    np.testing.assert_allclose(_losses(dispatch, mesh_shape), ref, rtol=2e-5, atol=2e-5)


def _shapes(hlo: str, op: str) -> list[str]:
    """Result shapes of every `op` instruction in HLO text, e.g. ['f32[4,32,32]']."""
    return re.findall(rf"= ((?:\w+\[[\d,]*\][^ ]*)|\(.*?\)) {op}(?:-start)?\(", hlo)


def test_compiled_step_exchanges_tokens_and_keeps_experts_local():
    """(1,4,1) mesh: all-to-all carries the tokens; expert weights are never gathered."""
    part = Partitioner((1, 4, 1), num_devices=4)
    tr = _trainer("capacity", part)
    batch = next(iter(synthetic_dataset_fn(DATA, 0, 1, 0, vocab_size=128, num_batches=1)))
    state, specs = tr.abstract_state(batch)
    hlo = tr.jit_train_step(batch).lower(state, batch).compile().as_text()
    cfg = tr.model.config
    e, d, f = cfg.moe.num_experts, cfg.d_model, cfg.moe.expert_hidden
    a2a = _shapes(hlo, "all-to-all")
    # forward (dispatch, return) and backward (their transposes) per MoE layer
    assert len(a2a) >= 4 * cfg.num_moe_layers, a2a
    assert specs.params["layer_0"]["moe"]["wi_0"][0] == "expert"  # stored E/4 per device
    weight_shapes = {f"[{e},{d},{f}]", f"[{e},{f},{d}]"}
    gathered = [s for s in _shapes(hlo, "all-gather") if any(w in s for w in weight_shapes)]
    assert not gathered, gathered

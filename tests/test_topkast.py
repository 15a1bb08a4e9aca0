"""Top-KAST (model/nn/topkast.py): the sets, the update rule, the regulariser, resume
and export, on a tiny decoder through the real Trainer step."""
from __future__ import annotations

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import flops
from model import train as _train  # noqa: F401  - registers train() with gin
from model.checkpointing import CheckpointConfig, Checkpointer, restore_params
from model.config import model_config
from model.dataset_config import DatasetConfig
from model.nn import topkast
from model.partitioning import Partitioner
from model.synthetic_data import synthetic_dataset_fn
from model.trainer import Trainer, TrainState, adamw, constant_schedule

SMALL = dict(d_model=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16, d_ff=64,
             vocab_size=256, max_len=32, image=None, video=None, audio=None)
D, M = 0.3, 0.2


def _trainer(refresh_every: int, regulariser: float = 1e-3) -> Trainer:
    cfg = topkast.TopKastConfig(forward_density=D, backward_extra=M,
                                refresh_every=refresh_every, regulariser=regulariser)
    sched = constant_schedule(1e-2)
    opt = topkast.TopKast(adamw(sched, weight_decay=0.1), cfg)
    model = topkast.TopKastModel(model_config("tiny", SMALL), cfg)
    return Trainer(model, opt, Partitioner((1, 1, 1), num_devices=1), sched)


def _batches(n: int) -> list[dict]:
    cfg = DatasetConfig("synthetic", {"targets": 32}, batch_size=4)
    return list(synthetic_dataset_fn(cfg, 0, 1, 0, vocab_size=256, num_batches=n))


def _flat(tree) -> dict[str, np.ndarray]:
    return {"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(x)
            for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _top(x: np.ndarray, frac: float) -> set[int]:
    """Indices of the round(frac * n) largest |x| (numpy's own ranking)."""
    mag = np.abs(x).ravel()
    return set(np.argsort(-mag, kind="stable")[:int(np.clip(round(frac * mag.size), 1, mag.size))])


@pytest.fixture(scope="module")
def run():
    """One trainer (sets refreshed every 2 steps), its jitted step, the initial state."""
    tr = _trainer(refresh_every=2, regulariser=1e-3)
    batches = _batches(5)
    state = tr.init_state(jax.random.key(0), batches[0])
    return tr, jax.jit(tr.train_step), batches, state


def test_sets_are_top_k_and_only_b_is_updated(run):
    tr, step, batches, state = run
    before, sets = _flat(state.params), _flat(state.opt_state.sets)
    sparse = set(topkast.sparse_paths(tr.optimizer.cfg, state.params))
    assert any("mlp" in p for p in sparse) and not any("embed" in p or "norm" in p
                                                       for p in sparse)
    for path in sparse:  # A and B are the top-D and top-(D+M) of |θ|, and A ⊆ B
        a = set(np.flatnonzero(sets[path] == topkast.IN_A))
        b = set(np.flatnonzero(sets[path] != topkast.OUTSIDE))
        assert a == _top(before[path], D) and b == _top(before[path], D + M)
        assert a <= b and len(b) > len(a)
    # The step's loss is the model's loss on θ ⊙ A.
    masked = tr.optimizer.forward_params(state.params, state.opt_state)
    expected, _ = jax.jit(tr.model.loss_fn)(masked, batches[0])
    new, metrics = step(state, batches[0])  # step 1: no refresh yet
    np.testing.assert_allclose(float(metrics["loss"]), float(expected), rtol=1e-5)
    assert jax.tree.all(jax.tree.map(jnp.array_equal, new.opt_state.sets, state.opt_state.sets))
    after = _flat(new.params)
    for path in sparse:  # weight decay and Adam moments touch B only
        outside = sets[path] == topkast.OUTSIDE
        np.testing.assert_array_equal(after[path][outside], before[path][outside])
        assert np.mean(after[path][~outside] != before[path][~outside]) > 0.95
    for path in set(after) - sparse:  # dense parameters train as usual
        assert np.any(after[path] != before[path]), path
    assert float(metrics["topkast/density"]) == pytest.approx(D, abs=0.01)
    assert float(metrics["topkast/backward_density"]) == pytest.approx(D + M, abs=0.01)
    assert "topkast/density/layer_1" in metrics and "topkast/churn/layer_0" in metrics


def test_regulariser_equals_its_formula(run):
    tr, _, _, state = run
    params, sets = _flat(state.params), _flat(state.opt_state.sets)
    expected = 0.0
    for path in topkast.sparse_paths(tr.optimizer.cfg, state.params):
        sq = params[path].astype(np.float64) ** 2
        expected += sq[sets[path] == topkast.IN_A].sum()
        expected += sq[sets[path] == topkast.IN_B_ONLY].sum() / D
    grads = jax.tree.map(jnp.zeros_like, state.params)
    reg_grads, metrics = jax.jit(tr.optimizer.add_regulariser)(grads, state.params,
                                                               state.opt_state)
    assert float(metrics["topkast/regulariser"]) == pytest.approx(1e-3 * expected, rel=1e-5)
    path = "layer_0/mlp/wi_0/kernel"
    s = sets[path]
    scale = np.where(s == topkast.IN_A, 1.0, np.where(s == topkast.IN_B_ONLY, 1.0 / D, 0.0))
    np.testing.assert_allclose(_flat(reg_grads)[path], 1e-3 * 2 * params[path] * scale,
                               rtol=1e-5, atol=1e-10)


def test_resume_keeps_masks_bitwise_and_export_is_masked(run, tmp_path):
    tr, step, batches, state = run
    initial_sets = _flat(state.opt_state.sets)
    for b in batches[:3]:
        state, metrics = step(state, b)  # refresh after step 2
    assert float(metrics["topkast/churn"]) > 0.0
    assert any(np.any(initial_sets[k] != v) for k, v in _flat(state.opt_state.sets).items())
    ckpt = Checkpointer(tmp_path / "run", CheckpointConfig(async_save=False,
                                                           save_on_sigterm=False))
    ckpt.save(3, state, {"train_batches_consumed": 3})
    saved_sets = _flat(jax.device_get(state.opt_state.sets))
    ckpt.wait()
    abstract, _ = tr.abstract_state(batches[0])
    restored = TrainState.from_dict(ckpt.restore_latest(abstract)[0])
    ckpt.close()
    for a, b in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(restored.opt_state)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for b in batches[3:]:  # step 4 refreshes: continuing from either gives the same masks
        state, _ = step(state, b)
        restored, _ = step(restored, b)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    topkast.export_masked(str(tmp_path / "run"), str(tmp_path / "sparse"))
    exported, at = restore_params(str(tmp_path / "sparse"))
    assert at == 3
    for path, value in _flat(exported).items():
        value = np.asarray(value)
        assert np.all(value[saved_sets[path] != topkast.IN_A] == 0)
        assert np.count_nonzero(value) == np.count_nonzero(saved_sets[path] == topkast.IN_A)


def test_gin_experiment_and_sparse_flops():
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings(["gin/experiments/topkast.gin"], [
            "MODEL_DIR='/tmp/unused'", "TRAIN_STEPS=10"], skip_unknown=False)
        opt = gin.get_configurable(topkast.topkast_optimizer)(
            learning_rate=constant_schedule(1e-3))
        assert isinstance(opt, topkast.TopKast) and opt.cfg.forward_density == 0.2
    finally:
        gin.clear_config()
    cfg = model_config("tiny", SMALL)
    dense = flops.flops_per_token(cfg, 32)
    assert flops.sparse_flops_per_token(cfg, 32, 1.0, 1.0) == pytest.approx(dense)
    assert flops.sparse_flops_per_token(cfg, 32, 0.2, 0.3) < 0.6 * dense

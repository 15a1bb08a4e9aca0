"""Checkpoints: exact round trip, keep policy, damaged steps skipped, fine-tune checks."""
from __future__ import annotations

import os
import pathlib
import warnings

import jax
import numpy as np
import pytest

from model.checkpointing import (CheckpointConfig, Checkpointer, CheckpointShapeError,
                                 restore_params)
from model.config import model_config
from model.dataset_config import DatasetConfig
from model.models import DecoderOnlyModel
from model.partitioning import Partitioner
from model.synthetic_data import synthetic_dataset_fn
from model.trainer import Trainer, TrainState, adamw, warmup_cosine_schedule
from tests import train_testlib

SMALL = dict(d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16, d_ff=64,
             vocab_size=256, max_len=32, image=None, video=None, audio=None)
DATA = DatasetConfig("synthetic", {"targets": 16}, batch_size=8)


def _trainer(overrides=None):
    part = Partitioner((-1, 1, 1))
    sched = warmup_cosine_schedule(1e-2, 1, 50)
    model = DecoderOnlyModel(model_config("tiny", dict(SMALL, **(overrides or {}))))
    return Trainer(model, adamw(sched), part, sched)


@pytest.fixture(scope="module")
def trained():
    """A trainer, a sample batch, and states after steps 1..4."""
    tr = _trainer()
    batches = list(synthetic_dataset_fn(DATA, 0, 1, 0, vocab_size=256, num_batches=4))
    state = tr.init_state(jax.random.key(0), tr.partitioner.shard_batch(batches[0]))
    step = tr.jit_train_step(batches[0])
    states = []
    for b in batches:
        state, _ = step(state, tr.partitioner.shard_batch(b))
        states.append(jax.device_get(state))
    return tr, batches[0], states


def _save_all(model_dir, states, **cfg):
    ck = Checkpointer(model_dir, CheckpointConfig(**cfg))
    for s in states:
        ck.save(int(s.step), jax.device_put(s), {"train_batches_consumed": int(s.step)})
    ck.close()


def _assert_same(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_train_checkpoint_restore_round_trip(tmp_path):
    """train() -> checkpoint -> restore gives bit-identical params and optimizer state."""
    args = train_testlib.cli_args(tmp_path, steps=4, bindings=[
        "CheckpointConfig.save_every = 2", "train.log_every = 2"])
    result = train_testlib.train_in_process(args)
    assert result.step == 4 and sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
    params, step = restore_params(tmp_path)
    assert step == 4
    _assert_same(params, jax.device_get(result.state.params))
    params2, step2 = restore_params(tmp_path / "checkpoints" / "2")
    assert step2 == 2
    assert not all(np.array_equal(x, y) for x, y in
                   zip(jax.tree.leaves(params2), jax.tree.leaves(params)))


def test_restore_latest_is_exact_and_sharded(tmp_path, trained):
    tr, batch, states = trained
    _save_all(tmp_path, states)
    abstract, _ = tr.abstract_state(batch)
    ck = Checkpointer(tmp_path, CheckpointConfig())
    state, data = ck.restore_latest(abstract)
    ck.close()
    assert data == {"train_batches_consumed": 4, "step": 4}
    _assert_same(state, states[-1].as_dict())
    want = jax.tree.leaves(abstract.as_dict())
    for x, a in zip(jax.tree.leaves(state), want):
        assert x.sharding == a.sharding


def test_keep_policy(tmp_path, trained):
    _, _, states = trained
    _save_all(tmp_path, states, keep=2)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "4"]


def _largest_file(path: pathlib.Path) -> pathlib.Path:
    return max((f for f in path.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)


@pytest.mark.parametrize("damage", ["truncate_data", "drop_metadata"])
def test_damaged_checkpoint_is_skipped_with_warning(tmp_path, trained, damage):
    tr, batch, states = trained
    _save_all(tmp_path, states)
    step_dir = tmp_path / "checkpoints" / "4" / "state"
    if damage == "truncate_data":
        f = _largest_file(step_dir)
        os.truncate(f, f.stat().st_size // 2)
    else:
        (step_dir / "_METADATA").unlink()
    abstract, _ = tr.abstract_state(batch)
    ck = Checkpointer(tmp_path, CheckpointConfig())
    with pytest.warns(RuntimeWarning, match="checkpoint step 4 .* unreadable"):
        state, data = ck.restore_latest(abstract)
    assert data["train_batches_consumed"] == 3
    _assert_same(state, states[2].as_dict())
    # the damaged step is out of the way, so the run can save step 4 again
    assert 4 not in ck.manager.all_steps()
    assert ck.save(4, jax.device_put(states[3]), {"train_batches_consumed": 4})
    ck.close()


def test_half_written_tmp_dir_is_ignored(tmp_path, trained):
    tr, batch, states = trained
    _save_all(tmp_path, states[:2])
    tmp = tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-1234"
    tmp.mkdir()
    (tmp / "state").mkdir()
    abstract, _ = tr.abstract_state(batch)
    ck = Checkpointer(tmp_path, CheckpointConfig())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        state, data = ck.restore_latest(abstract)
    ck.close()
    assert int(state["step"]) == 2 and data["train_batches_consumed"] == 2


def test_finetune_shape_mismatch_names_the_parameter(tmp_path, trained):
    _, _, states = trained
    _save_all(tmp_path / "pre", states[-1:])
    other = _trainer({"d_ff": 96})
    abstract, _ = other.abstract_state(next(synthetic_dataset_fn(DATA, 0, 1, 0, vocab_size=256)))
    ck = Checkpointer(tmp_path / "ft", CheckpointConfig(restore_from=str(tmp_path / "pre")))
    with pytest.raises(CheckpointShapeError, match=r"wo/kernel: checkpoint \(64, 32\) vs model \(96, 32\)"):
        ck.restore_params_for_finetune(abstract.params)
    ck.close()


def test_finetune_restores_matching_params(tmp_path, trained):
    tr, batch, states = trained
    _save_all(tmp_path / "pre", states[-1:])
    abstract, _ = tr.abstract_state(batch)
    ck = Checkpointer(tmp_path / "ft", CheckpointConfig(restore_from=str(tmp_path / "pre")))
    params = ck.restore_params_for_finetune(abstract.params)
    ck.close()
    _assert_same(params, states[-1].params)


def test_finetune_keeps_fresh_params_named_by_init_missing(tmp_path, trained):
    """A deeper model from a 1-layer checkpoint: layer_1 keeps its initialisation only when
    CheckpointConfig.init_missing names it (RETROfit: ('retro_',) on a plain checkpoint)."""
    _, _, states = trained
    _save_all(tmp_path / "pre", states[-1:])
    deeper = _trainer({"num_layers": 2})
    batch = next(synthetic_dataset_fn(DATA, 0, 1, 0, vocab_size=256))
    abstract, _ = deeper.abstract_state(batch)
    fresh = deeper.init_state(jax.random.key(1), deeper.partitioner.shard_batch(batch)).params
    pre = str(tmp_path / "pre")
    with pytest.raises(CheckpointShapeError, match="layer_1/.*missing from checkpoint"):
        Checkpointer(tmp_path / "a", CheckpointConfig(restore_from=pre)
                     ).restore_params_for_finetune(abstract.params, fresh)
    ck = Checkpointer(tmp_path / "b", CheckpointConfig(restore_from=pre, init_missing=("layer_1",)))
    params = ck.restore_params_for_finetune(abstract.params, fresh)
    ck.close()
    _assert_same({k: v for k, v in params.items() if k != "layer_1"}, states[-1].params)
    _assert_same(params["layer_1"], fresh["layer_1"])


def test_restore_params_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        restore_params(tmp_path / "missing")
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoints under"):
        restore_params(tmp_path)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (make test sets XLA_FLAGS)")
def test_restore_onto_another_mesh(tmp_path, trained):
    """A checkpoint written on (8,1,1) restores onto (2,2,2) with the new shardings."""
    _, batch, states = trained
    _save_all(tmp_path, states[-1:])
    part = Partitioner((2, 2, 2))
    sched = warmup_cosine_schedule(1e-2, 1, 50)
    tr = Trainer(DecoderOnlyModel(model_config("tiny", SMALL)), adamw(sched), part, sched)
    abstract, _ = tr.abstract_state(batch)
    ck = Checkpointer(tmp_path, CheckpointConfig())
    state, _ = ck.restore_latest(abstract)
    ck.close()
    _assert_same(state, states[-1].as_dict())
    assert any("model" in str(x.sharding.spec) for x in jax.tree.leaves(state["params"]))


def test_finetune_run_starts_from_the_pretrained_params(tmp_path):
    pre, ft = tmp_path / "pre", tmp_path / "ft"
    for model_dir, extra in ((pre, []), (ft, [f"CheckpointConfig.restore_from = '{pre}'",
                                              "train.learning_rate_schedule = "
                                              "@constant_schedule()",
                                              "constant_schedule.value = 0.0"])):
        result = train_testlib.train_in_process(train_testlib.cli_args(model_dir, 3, extra))
    pre_params, _ = restore_params(pre)
    # learning rate 0: fine-tuned params are exactly the pretrained ones; optimizer fresh
    _assert_same(jax.device_get(result.state.params), pre_params)
    assert int(result.state.step) == 3

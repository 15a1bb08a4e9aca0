"""Hardening of the training entry point: which checkpoints are quarantined, no silent
restart at step 0, eval_steps=None, missing gin files, a corrupt record mid-run, and
the input state saved with each checkpoint."""
from __future__ import annotations

import os

import gin
import jax
import orbax.checkpoint as ocp
import pytest

from model import checkpointing, train as train_lib, train_input
from model.checkpointing import CheckpointConfig, Checkpointer, CheckpointRestoreError
from tests import train_testlib


def _train(model_dir, steps, bindings=()):
    return train_testlib.train_in_process(train_testlib.cli_args(
        model_dir, steps, ["CheckpointConfig.save_every = 2", "train.log_every = 2",
                           *bindings]))


def _truncate(model_dir, step):
    """Cuts every array data file of a step in half (a copy cut short)."""
    files = [f for f in (model_dir / "checkpoints" / str(step) / "state").rglob("*")
             if f.is_file() and f.parent.name == "d"]
    assert files
    for f in files:
        os.truncate(f, f.stat().st_size // 2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-step run with checkpoints at 2 and 4 (copied per test)."""
    model_dir = tmp_path_factory.mktemp("trained") / "run"
    _train(model_dir, 4)
    return model_dir


def _copy(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_all_checkpoints_damaged_is_an_error_not_a_fresh_start(tmp_path, trained):
    model_dir = _copy(trained, tmp_path / "run")
    _truncate(model_dir, 4)
    _truncate(model_dir, 2)
    with pytest.warns(RuntimeWarning, match="unreadable"), \
            pytest.raises(CheckpointRestoreError, match=r"steps \[4, 2\].*Refusing to restart"):
        _train(model_dir, 6)
    assert sorted(p.name.split(".")[0] for p in (model_dir / "corrupt_checkpoints").iterdir()) \
        == ["2", "4"]
    assert not (model_dir / "checkpoints" / "6").exists()  # nothing trained


def test_one_damaged_checkpoint_falls_back_to_the_previous(tmp_path, trained):
    model_dir = _copy(trained, tmp_path / "run")
    _truncate(model_dir, 4)
    with pytest.warns(RuntimeWarning, match=r"step 4 .* unreadable \(OUT_OF_RANGE"):
        result = _train(model_dir, 6)
    assert result.step == 6
    assert sorted(os.listdir(model_dir / "checkpoints")) == ["2", "4", "6"]


def test_a_failure_that_is_not_damage_is_raised_and_nothing_moved(tmp_path, trained,
                                                                   monkeypatch):
    """An I/O blip (here: the storage layer is unavailable) must not quarantine a good
    checkpoint."""
    model_dir = _copy(trained, tmp_path / "run")

    def unavailable(self, step, *args, **kwargs):
        del self, args, kwargs
        raise ValueError(f"UNAVAILABLE: connection reset while reading step {step}")

    monkeypatch.setattr(ocp.CheckpointManager, "restore", unavailable)
    with pytest.raises(ValueError, match="UNAVAILABLE"):
        _train(model_dir, 6)
    assert sorted(os.listdir(model_dir / "checkpoints")) == ["2", "4"]
    assert not (model_dir / "corrupt_checkpoints").exists()


def test_damage_signatures():
    assert checkpointing.damage_signature(FileNotFoundError("x/metadata")) == "FileNotFoundError"
    chained = Exception("Encountered error while reading array index")
    chained.__cause__ = ValueError('OUT_OF_RANGE: Error reading "params.x/0.0"')
    assert checkpointing.damage_signature(chained) == "OUT_OF_RANGE"
    assert checkpointing.damage_signature(MemoryError()) is None
    assert checkpointing.damage_signature(ValueError("DEADLINE_EXCEEDED: slow disk")) is None


def test_eval_steps_none_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"train.eval_steps=None: set a number"):
        _train(tmp_path / "run", 3, ["train.eval_every = 1", "train.eval_steps = None"])
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("flags, expected", [
    (["--gin_file=gin/runs/no_such_file.gin"], "--gin_file=gin/runs/no_such_file.gin: no such file"),
    ([], "no --gin_file given"),
])
def test_missing_gin_file_is_a_one_line_error(tmp_path, flags, expected):
    args = [a for a in train_testlib.cli_args(tmp_path, 3) if not a.startswith("--gin_file=")]
    proc = train_testlib.run(flags + args, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], proc.stderr[-2000:]


def test_corrupt_record_mid_run_saves_and_names_the_file(tmp_path, capsys):
    args = train_testlib.cli_args(tmp_path, 10, [
        "train.get_dataset_fn = @failing_dataset_fn", "failing_dataset_fn.fail_at = 5",
        "CheckpointConfig.save_every = 100", "train.log_every = 1"])
    gin.clear_config()
    try:
        code = train_lib.main(args)
    finally:
        gin.clear_config()
    assert code == 4
    err = capsys.readouterr().err
    assert "train.tfrecord-00003-of-00008" in err and "after step 5" in err, err[-2000:]
    assert os.listdir(tmp_path / "checkpoints") == ["5"]


def test_checkpoint_holds_the_input_state_of_its_last_batch(tmp_path):
    """With prefetching the reader is ahead of the loop; the saved state must be the
    one right after the last batch trained on, and a restart must start from it."""
    _train(tmp_path, 4, ["train.prefetch = 3"])
    data = (tmp_path / "checkpoints" / "4" / "data" / "metadata").read_text()
    assert '"iterator_states": [{"next_batch": 4}]' in data


def test_resume_falls_back_to_start_batch_without_a_matching_state(caplog):
    calls = []

    def fn(cfg, shard_id, num_shards, start_batch):
        calls.append((shard_id, num_shards, start_batch))
        return iter(())

    position = {"train_batches_consumed": 7, "iterator_states": [{"next_batch": 7}] * 2}
    train_input.open_dataset(fn, None, 0, 1, position)  # 2 states, 1 process
    train_input.open_dataset(fn, None, 0, 2, position)  # no `state` argument
    assert calls == [(0, 1, 7), (0, 2, 7)]
    assert "input states of 2 processes, this run has 1" in caplog.text
    assert "takes no `state`" in caplog.text

    seen = []

    def with_state(cfg, shard_id, num_shards, start_batch, *, state=None):
        seen.append((start_batch, state))
        return iter(())

    train_input.open_dataset(with_state, None, 1, 2, position)
    assert seen == [(7, {"next_batch": 7})]

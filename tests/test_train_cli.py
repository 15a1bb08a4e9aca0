"""The `python -m model.train` entry point: fail-fast flags, metrics files, eval, NaN stop."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from model import train as train_lib
from model.metric_writers import read_jsonl
from tests import train_testlib

TRAIN_FIELDS = {"loss", "cross_entropy", "accuracy", "z_loss", "moe_aux_loss", "moe_z_loss",
                "learning_rate", "grad_norm", "tokens_per_s", "step_time_s", "mfu",
                "num_tokens", "eta_s"}
MOE_FIELDS = {"expert_usage", "drop_fraction", "router_confidence"}


def _fails_fast(tmp_path, extra, expected):
    start = time.time()
    proc = train_testlib.run(train_testlib.cli_args(tmp_path, 3) + extra, timeout=60)
    elapsed = time.time() - start
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert expected in proc.stderr, proc.stderr[-2000:]
    assert elapsed < 30, f"took {elapsed:.1f} s"  # imports only (~5 s idle), no compile
    assert not (tmp_path / "checkpoints").exists()  # nothing ran


def test_misspelt_binding_fails_fast_naming_it(tmp_path):
    _fails_fast(tmp_path, ["--gin_bindings=train.log_evry = 3"], "log_evry")


def test_unknown_macro_fails_fast_naming_it(tmp_path):
    _fails_fast(tmp_path, ["--gin.TRAIN_STEPZ=3"], "TRAIN_STEPZ")
    proc = train_testlib.run(train_testlib.cli_args(tmp_path, 3) + ["--gin.TRAIN_STEPZ=3"])
    assert "Did you mean 'TRAIN_STEPS'?" in proc.stderr


def test_unknown_configurable_fails_fast_naming_it(tmp_path):
    _fails_fast(tmp_path, ["--gin_bindings=Partitionr.fsdp = True"], "Partitionr")


def test_import_leaves_tensorflow_out():
    code = ("import sys, model.train; bad = [m for m in ('tensorflow', 'apache_beam', 'seqio') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=train_testlib.REPO,
                          env=train_testlib.env(1), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_metrics_files_hold_every_field(tmp_path):
    args = train_testlib.cli_args(tmp_path, 6, [
        "model_config.preset = 'tiny_moe'", train_testlib.overrides_binding(num_layers=2),
        "train.log_every = 2", "train.eval_every = 3",
        "train.eval_steps = 2", "CheckpointConfig.save_every = 3",
        "train.profile_steps = (4, 5)"])
    result = train_testlib.train_in_process(args)
    assert result.step == 6 and not result.preempted
    rows = read_jsonl(tmp_path / "metrics.jsonl", "train")
    assert [r["step"] for r in rows] == [2, 4, 6]
    for row in rows:
        missing = TRAIN_FIELDS - set(row)
        assert not missing, missing
        for field in MOE_FIELDS:  # per MoE layer
            assert any(k.endswith(field) for k in row), (field, sorted(row))
        usage = [v for k, v in row.items() if k.endswith("expert_usage")][0]
        assert len(usage) == 4 and abs(sum(usage) - 1.0) < 1e-3
        assert 0 < row["mfu"] < 1 and row["tokens_per_s"] > 0 and row["learning_rate"] > 0
    evals = read_jsonl(tmp_path / "metrics.jsonl", "eval")
    assert [r["step"] for r in evals] == [3, 6] and all("loss" in r for r in evals)
    assert result.last_eval["num_batches"] == 2
    config = (tmp_path / "config.gin").read_text()
    assert "train.train_steps = %TRAIN_STEPS" in config and "TRAIN_STEPS = 6" in config
    assert (tmp_path / "operative_config.gin").exists()
    assert list((tmp_path / "profile").rglob("*.xplane.pb"))

    from tensorboard.backend.event_processing import event_accumulator
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard" / "train"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert TRAIN_FIELDS - {"eta_s"} <= tags | {"eta_s"}, TRAIN_FIELDS - tags
    assert any(t.endswith("expert_usage/0") for t in tags)
    assert [e.step for e in acc.Scalars("loss")] == [2, 4, 6]


def test_nan_loss_stops_with_the_step(tmp_path):
    args = train_testlib.cli_args(tmp_path, 20, [
        "warmup_cosine_schedule.peak_value = 1e38", "adamw.clip_norm = None",
        "warmup_cosine_schedule.warmup_steps = 1", "train.log_every = 50",
        "CheckpointConfig.save_every = 1"])
    with pytest.raises(train_lib.NonFiniteLossError, match=r"loss is (nan|inf) at step (\d+)"):
        train_testlib.train_in_process(args)
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir())
    losses = read_jsonl(tmp_path / "metrics.jsonl", "train")
    assert all(json.dumps(r["loss"]) not in ('"nan"', '"inf"') for r in losses)
    assert len(saved) < 20


def test_running_out_of_data_saves_and_stops(tmp_path):
    args = train_testlib.cli_args(tmp_path, 8, ["synthetic_dataset_fn.num_batches = 3",
                                                "CheckpointConfig.save_every = 100"])
    result = train_testlib.train_in_process(args)
    assert result.step == 3
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3"]

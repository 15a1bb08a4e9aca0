"""The pure train step's options: bf16 compute over float32 master weights, schedules,
hooks."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.config import model_config
from model.dataset_config import DatasetConfig
from model.models import DecoderOnlyModel
from model.partitioning import Partitioner
from model.synthetic_data import synthetic_dataset_fn
from model.trainer import (Hooks, StepInfo, Trainer, adamw, constant_schedule,
                           warmup_cosine_schedule)
from tests import train_testlib

SMALL = dict(d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16, d_ff=64,
             vocab_size=256, max_len=32, image=None, video=None, audio=None)


def _run(compute_dtype, steps=3):
    part = Partitioner((1, 1, 1), num_devices=1)
    sched = warmup_cosine_schedule(1e-2, 1, 50)
    tr = Trainer(DecoderOnlyModel(model_config("tiny", SMALL)), adamw(sched), part, sched,
                 compute_dtype=compute_dtype)
    cfg = DatasetConfig("synthetic", {"targets": 32}, batch_size=4)
    batches = list(synthetic_dataset_fn(cfg, 0, 1, 0, vocab_size=256, num_batches=steps))
    return train_testlib.step_losses(tr, batches)


def test_bf16_compute_keeps_float32_master_weights():
    ref, _ = _run("float32")
    losses, state = _run("bfloat16")
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}
    moments = [x for x in jax.tree.leaves(state.opt_state) if getattr(x, "ndim", 0) >= 1]
    assert moments and {x.dtype for x in moments} == {jnp.dtype("float32")}
    np.testing.assert_allclose(losses, ref, rtol=2e-2)
    assert not np.array_equal(losses, ref)  # it really computed in bf16


def test_bad_compute_dtype_is_named():
    with pytest.raises(ValueError, match="compute_dtype='fp16'"):
        Trainer(None, adamw(constant_schedule(1e-3)), None, compute_dtype="fp16")


def test_schedules():
    s = warmup_cosine_schedule(peak_value=1.0, warmup_steps=10, decay_steps=110, end_ratio=0.1)
    np.testing.assert_allclose([s(0), s(5), s(10), s(60), s(110), s(500)],
                               [0.0, 0.5, 1.0, 0.55, 0.1, 0.1], atol=1e-6)
    c = constant_schedule(2e-4, warmup_steps=4)
    np.testing.assert_allclose([c(0), c(2), c(4), c(100)], [0, 1e-4, 2e-4, 2e-4], rtol=1e-6)
    with pytest.raises(ValueError, match="decay_steps=5 must exceed warmup_steps=10"):
        warmup_cosine_schedule(1.0, 10, 5)


def test_hooks_run_every_n_and_when_forced():
    seen = []
    hooks = Hooks()
    hooks.add(lambda info: seen.append(("log", info.step)), every=2, name="log")
    hooks.add(lambda info: seen.append(("ckpt", info.step)), every=3, name="checkpoint")
    for step in range(1, 7):
        hooks.run(StepInfo(step, None, {}), force=("checkpoint",) if step == 5 else ())
    assert seen == [("log", 2), ("ckpt", 3), ("log", 4), ("ckpt", 5), ("log", 6), ("ckpt", 6)]
    assert hooks.due(4) and not hooks.due(5)
    with pytest.raises(ValueError, match="every=0"):
        hooks.add(print, every=0)


def test_gpu_check_script_runs_its_cpu_smoke_mode(tmp_path):
    """benchmarks/gpu_check.py (the GPU one-shot script) on tiny sizes: every part's code
    runs, the attention backends agree on packed rows, the JSON report is complete."""
    import json

    from benchmarks import gpu_check
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--cpu_smoke", "--mfu=mfu_moe", f"--json={out}"]) == 0
    res = json.loads(out.read_text())
    assert res["failed"] == []
    assert res["attention"]["blockwise"]["ok"] and res["attention"]["xla"]["ok"]
    assert res["long"]["tokens"] == 2048 and np.isfinite(res["long"]["loss"])
    assert res["long"]["compiled_bytes"] > 0
    assert res["mfu_moe"]["tokens_per_s"] > 0 and 0 < res["mfu_moe"]["mfu"]


def test_scan_layers_train_steps_match_unrolled():
    """AdamW steps on the scanned stack equal the unrolled ones (weight decay included:
    a norm scale stacked to [layers, D] is still not decayed)."""
    from model.transformer import stack_layers
    over = dict(SMALL, num_layers=2)
    models = [DecoderOnlyModel(model_config("tiny", dict(over, scan_layers=s)))
              for s in (False, True)]
    part = Partitioner((1, 1, 1), num_devices=1)
    sched = constant_schedule(1e-2)
    trainers = [Trainer(m, adamw(sched), part, sched) for m in models]
    cfg = DatasetConfig("synthetic", {"targets": 32}, batch_size=4)
    batches = list(synthetic_dataset_fn(cfg, 0, 1, 0, vocab_size=256, num_batches=3))
    state = trainers[0].init_state(jax.random.key(0), part.shard_batch(batches[0]))
    # Copies throughout: the train steps donate their state.
    params = jax.tree.map(jnp.copy, stack_layers(state.params, models[0].config))
    scanned = state.replace(step=jnp.zeros((), jnp.int32), params=params,
                            opt_state=trainers[1].optimizer.init(params))
    losses = []
    for tr, st in zip(trainers, (state, scanned)):
        step, out = tr.jit_train_step(batches[0]), []
        for b in batches:
            st, m = step(st, part.shard_batch(b))
            out.append(float(m["loss"]))
        losses.append(out)
    np.testing.assert_allclose(losses[1], losses[0], atol=1e-6)

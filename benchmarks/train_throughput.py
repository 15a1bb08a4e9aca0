"""Training throughput: tokens/s and MFU per preset, and the full trainer's overhead.

    python benchmarks/train_throughput.py                      # all of it (~10 min, 2 cores)
    python benchmarks/train_throughput.py --presets maxtext_dense,maxtext_moe --steps 10
    python benchmarks/train_throughput.py --skip_overhead --json out.json

Part 1, bare step: for each preset, `Trainer.jit_train_step` (the jitted, donated
train step the trainer runs) on one pre-sharded synthetic batch, timed over `--steps`
steps after one compile step. tokens/s counts every position of the batch (as MaxText
does); MFU = model.flops_per_token(L) x tokens/s / peak, with the peak measured by a
2048^3 float32 matmul on the same device (`model.train.measure_peak_flops`).
For the MaxText-shape presets, MaxText 0.2.5's own trainer runs the same shapes right
after ours, in the same invocation (benchmarks/maxtext_peer.py, in the venv that
`bash benchmarks/maxtext_env.sh` builds; --maxtext=skip leaves it out), and the ratio
is printed beside ours. (Earlier versions compared with constants from issue 4:
dense ~2,500, MoE ~2,235 tokens/s on a quiet machine.)

Part 2, trainer overhead: `model.train.train()` (synthetic data through the prefetch
thread, metrics every 10 steps to JSONL + TensorBoard, NaN checks, async checkpoints
every 100 steps, a final checkpoint) against the bare step on the same model and
batch shape. The trainer's time is taken from its own metrics (all windows after the
compile step); overhead = trainer time per step / bare time per step - 1. Target <= 5%.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import gin  # noqa: E402
import jax  # noqa: E402

from benchmarks import maxtext_peer  # noqa: E402
from model import train as train_lib  # noqa: E402
from model import host_malloc  # noqa: E402
from model.config import model_config  # noqa: E402
from model.dataset_config import DatasetConfig  # noqa: E402
from model.metric_writers import read_jsonl  # noqa: E402
from model.models import DecoderOnlyModel  # noqa: E402
from model.partitioning import Partitioner  # noqa: E402
from model.synthetic_data import synthetic_dataset_fn  # noqa: E402
from model.trainer import Trainer, adamw, warmup_cosine_schedule  # noqa: E402

# (batch, length) per preset; MaxText's peers ran 8 x 512.
SHAPES = {"tiny": (8, 256), "small": (8, 512), "maxtext_dense": (8, 512),
          "maxtext_moe": (8, 512), "micro": (8, 64)}
TEXT_ONLY = {"image": None, "video": None, "audio": None}
# 'micro': a milliseconds-per-step model, so the trainer's fixed per-step host cost
# (data, device_put, NaN check, hooks) shows up instead of drowning in compute.
MICRO = dict(TEXT_ONLY, d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
             d_ff=64, vocab_size=512, max_len=64)


def _model_args(preset: str) -> tuple[str, dict]:
    """(preset name for model_config, overrides): text-only versions of the presets."""
    return ("tiny", MICRO) if preset == "micro" else (preset, TEXT_ONLY)


def bare_step(preset: str, steps: int, peak: float) -> dict:
    batch_size, length = SHAPES[preset]
    model = DecoderOnlyModel(model_config(*_model_args(preset)))
    part = Partitioner((-1, 1, 1))
    schedule = warmup_cosine_schedule(3e-4, 10, 1000)
    tr = Trainer(model, adamw(schedule), part, schedule)
    cfg = DatasetConfig("synthetic", {"targets": length}, batch_size=batch_size)
    host = next(synthetic_dataset_fn(cfg, 0, 1, 0, vocab_size=model.config.vocab_size))
    batch = part.shard_batch(host)
    state = tr.init_state(jax.random.key(0), batch)
    step = tr.jit_train_step(host)
    state, m = step(state, batch)
    jax.block_until_ready(m)
    start = time.perf_counter()
    for _ in range(steps):
        state, m = step(state, batch)
    jax.block_until_ready((state, m))
    dt = (time.perf_counter() - start) / steps
    tokens_per_s = batch_size * length / dt
    flops = model.flops_per_token(length)
    total, active = model.param_counts()
    return {"preset": preset, "batch": batch_size, "length": length, "step_s": dt,
            "tokens_per_s": tokens_per_s, "mfu": flops * tokens_per_s / peak,
            "flops_per_token": flops, "params_total": total, "params_active": active}


def maxtext_step(preset: str, steps: int, mode: str) -> float | None:
    """MaxText 0.2.5's tokens/s on the preset's shapes (None if not a MaxText peer)."""
    if mode == "skip" or preset not in maxtext_peer.VARIANTS:
        return None
    if maxtext_peer.python_path() is None:
        raise SystemExit("MaxText 0.2.5 venv not found: run `bash benchmarks/maxtext_env.sh` "
                         "once (or pass --maxtext=skip)")
    batch_size, length = SHAPES[preset]
    return maxtext_peer.run(preset, steps=steps, batch=batch_size, length=length)["tokens_per_s"]


def trainer_run(preset: str, steps: int, peak: float, model_dir: str) -> dict:
    batch_size, length = SHAPES[preset]
    base, overrides = _model_args(preset)
    bindings = [
        f"model_config.preset = '{base}'", f"model_config.overrides = {overrides!r}",
        "warmup_cosine_schedule.peak_value = 3e-4", "warmup_cosine_schedule.warmup_steps = 10",
        "warmup_cosine_schedule.decay_steps = 1000", "train.log_every = 10",
        "train.eval_every = 0", "CheckpointConfig.save_every = 100", "CheckpointConfig.keep = 2",
        f"train.peak_flops_per_device = {peak / jax.device_count()}",
        "train.progress_bar = False", "Partitioner.mesh_shape = (-1, 1, 1)",
        f"synthetic_dataset_fn.vocab_size = {model_config(base, overrides).vocab_size}"]
    args = ["--gin_file=gin/runs/pretrain_synthetic.gin", f"--gin.MODEL_DIR={model_dir}",
            f"--gin.TRAIN_STEPS={steps}", f"--gin.BATCH_SIZE={batch_size}",
            f"--gin.TASK_FEATURE_LENGTHS={{'targets': {length}}}"]
    args += [f"--gin_bindings={b}" for b in bindings]
    gin.clear_config()
    train_lib.gin_flags.parse_gin_flags(args, "benchmark")
    wall = time.perf_counter()
    result = train_lib.train()
    wall = time.perf_counter() - wall
    gin.clear_config()
    rows = read_jsonl(pathlib.Path(model_dir) / "metrics.jsonl", "train")
    # The trainer restarts its timing window after step 1 (the compile step), so the
    # logged windows cover steps 2..N: sum (steps in window) x step_time_s.
    timed, counted, prev = 0.0, 0, 1
    for row in rows:
        timed += (row["step"] - prev) * row["step_time_s"]
        counted += row["step"] - prev
        prev = row["step"]
    return {"preset": preset, "steps": result.step, "timed_steps": counted,
            "step_s": timed / max(counted, 1), "wall_s": wall,
            "checkpoints": sorted(os.listdir(pathlib.Path(model_dir) / "checkpoints"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="tiny,small,maxtext_dense,maxtext_moe")
    p.add_argument("--steps", type=int, default=10, help="timed bare steps per preset")
    p.add_argument("--overhead_preset", default="tiny", help="or 'micro' (see MICRO)")
    p.add_argument("--overhead_steps", type=int, default=121)
    p.add_argument("--skip_overhead", action="store_true")
    p.add_argument("--maxtext", choices=["run", "skip"], default="run",
                   help="time MaxText 0.2.5 on the maxtext_* presets' shapes")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()

    peak = train_lib.measure_peak_flops("float32")
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}; "
          f"measured matmul peak {peak / 1e9:.1f} GFLOP/s")
    results = {"peak_flops": peak, "bare": [], "overhead": None}
    print(f"{'preset':<15}{'B x L':>10}{'step s':>9}{'tokens/s':>10}{'MFU':>8}"
          f"{'vs MaxText (tok/s)':>20}{'params (total/active)':>25}")
    for preset in [s for s in args.presets.split(",") if s]:
        r = bare_step(preset, args.steps, peak)
        r["maxtext_tokens_per_s"] = maxtext_step(preset, args.steps, args.maxtext)
        results["bare"].append(r)
        vs = (f"{r['tokens_per_s'] / r['maxtext_tokens_per_s']:.2f}x "
              f"({r['maxtext_tokens_per_s']:.0f})" if r["maxtext_tokens_per_s"] else "-")
        print(f"{preset:<15}{r['batch']:>4} x {r['length']:<4}{r['step_s']:>9.3f}"
              f"{r['tokens_per_s']:>10.0f}{r['mfu']:>8.1%}{vs:>20}"
              f"{r['params_total'] / 1e6:>15.2f}M/{r['params_active'] / 1e6:.2f}M", flush=True)

    if not args.skip_overhead:
        preset = args.overhead_preset
        with tempfile.TemporaryDirectory() as d:
            bare = bare_step(preset, args.overhead_steps - 1, peak)
            full = trainer_run(preset, args.overhead_steps, peak, d)
            bare2 = bare_step(preset, args.overhead_steps - 1, peak)
        bare_s = min(bare["step_s"], bare2["step_s"])
        overhead = full["step_s"] / bare_s - 1
        extra_ms = (full["step_s"] - bare_s) * 1e3
        results["overhead"] = {"preset": preset, "bare_step_s": [bare["step_s"], bare2["step_s"]],
                               "trainer": full, "overhead": overhead,
                               "extra_ms_per_step": extra_ms}
        print(f"trainer overhead on {preset} ({full['timed_steps']} timed steps, checkpoints "
              f"{full['checkpoints']}): bare {bare['step_s']:.4f}/{bare2['step_s']:.4f} s/step, "
              f"trainer {full['step_s']:.4f} s/step -> overhead {overhead:+.1%} "
              f"({extra_ms:+.2f} ms/step; target <= 5%)")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    host_malloc.reexec_with_malloc_settings()
    main()

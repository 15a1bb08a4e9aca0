"""MaxText 0.2.5's train step on our MaxText-shape presets, measured in a child process.

    from benchmarks import maxtext_peer
    res = maxtext_peer.run("maxtext_moe", steps=10)   # {'tokens_per_s': ..., 'step_s': ...}
    python benchmarks/maxtext_peer.py maxtext_dense --steps=6     # the same, standalone

MaxText needs Python >= 3.12, so it runs in its own venv (built by
benchmarks/maxtext_env.sh; found at $MAXTEXT_PYTHON or
~/.cache/tapestry/maxtext-0.2.5/bin/python). We run MaxText's own pre-training entry
point (`python -m maxtext.trainers.pre_train.train`) with synthetic data and read the
step times it logs (`completed step: N, seconds: S, ...`); tokens/s = global batch x
length / median step seconds over the steps after the first two (compile, warm-up),
counting every position, as MaxText's own Tokens/s and our benchmarks do.

The shapes are the issue-4 peer shapes, exactly our `maxtext_dense` / `maxtext_moe`
presets: vocab 8192, d_model 256, 4 layers, 4 q / 4 kv heads of 64, RoPE 10000,
RMSNorm eps 1e-5, untied embeddings, no dropout, f32 weights and activations,
AdamW(0.9, 0.95, wd 0.1) + clip 1.0, batch 8 x 512 on one CPU device; dense SwiGLU
1024 ('llama2' block); MoE 8 experts of SwiGLU 512, top-2 with softmax over the
chosen two, capacity factor 1.25, load-balance weight 0.01 ('mixtral' block, dense
capacity einsums: sparse_matmul=false); dropless: sparse_matmul=true without
megablox (jax.lax.ragged_dot). Like our presets: no remat, no z-loss, plain XLA
attention (attention=dot_product), layers unrolled (scan_layers=false; --scan_layers
to compare MaxText's scanned stack).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

DEFAULT_PYTHON = os.path.expanduser("~/.cache/tapestry/maxtext-0.2.5/bin/python")
STEP_LINE = re.compile(r"completed step: (\d+), seconds: ([0-9.]+)")

COMMON = dict(
    vocab_size=8192, base_emb_dim=256, base_num_decoder_layers=4, base_num_query_heads=4,
    base_num_kv_heads=4, head_dim=64, rope_max_timescale=10000,
    normalization_layer_epsilon=1e-5, logits_via_embedding="false", enable_dropout="false",
    dtype="float32", weight_dtype="float32", matmul_precision="default",
    opt_type="adamw", adam_b1=0.9, adam_b2=0.95, adam_weight_decay=0.1,
    gradient_clipping_threshold=1.0, learning_rate=1e-3, z_loss_multiplier=0.0,
    remat_policy="none", scan_layers="false", attention="dot_product",
    dataset_type="synthetic", hardware="cpu", enable_checkpointing="false",
    enable_tensorboard="false", enable_goodput_recording="false", monitor_goodput="false",
    log_config="false", ici_fsdp_parallelism=1, ici_data_parallelism=1,
    skip_jax_distributed_system="true", eval_interval=-1)
VARIANTS = {
    "maxtext_dense": dict(decoder_block="llama2", base_mlp_dim=1024),
    "maxtext_moe": dict(decoder_block="mixtral", base_mlp_dim=512, base_moe_mlp_dim=512,
                        num_experts=8, num_experts_per_tok=2, capacity_factor=1.25,
                        load_balance_loss_weight=0.01, sparse_matmul="false",
                        megablox="false"),
    "maxtext_moe_dropless": dict(decoder_block="mixtral", base_mlp_dim=512,
                                 base_moe_mlp_dim=512, num_experts=8, num_experts_per_tok=2,
                                 capacity_factor=-1.0, load_balance_loss_weight=0.01,
                                 sparse_matmul="true", megablox="false"),
}


def python_path() -> str | None:
    """The MaxText venv's interpreter, or None when benchmarks/maxtext_env.sh has not run."""
    path = os.environ.get("MAXTEXT_PYTHON", DEFAULT_PYTHON)
    return path if os.path.exists(path) else None


def command(variant: str, steps: int, batch: int, length: int, workdir: str,
            scan_layers: bool = False) -> list[str]:
    if variant not in VARIANTS:
        raise ValueError(f"unknown MaxText variant {variant!r}; choose one of {sorted(VARIANTS)}")
    over = {**COMMON, **VARIANTS[variant], "per_device_batch_size": batch,
            "max_target_length": length, "steps": steps, "run_name": variant,
            "base_output_directory": workdir, "scan_layers": str(scan_layers).lower()}
    py = python_path()
    if py is None:
        raise FileNotFoundError("MaxText venv not found: run `bash benchmarks/maxtext_env.sh` "
                                f"or set MAXTEXT_PYTHON (looked at {DEFAULT_PYTHON})")
    config = os.path.join(os.path.dirname(py), "..", "lib", "python3.12", "site-packages",
                          "maxtext", "configs", "base.yml")
    return [py, "-m", "maxtext.trainers.pre_train.train", os.path.normpath(config),
            *(f"{k}={v}" for k, v in over.items())]


def parse_step_times(log: str) -> dict[int, float]:
    """{step: seconds} from MaxText's `completed step: N, seconds: S` lines."""
    return {int(m.group(1)): float(m.group(2)) for m in STEP_LINE.finditer(log)}


def run(variant: str, steps: int = 10, batch: int = 8, length: int = 512,
        scan_layers: bool = False, timeout_s: float = 1800) -> dict:
    """Runs MaxText's trainer for `steps` steps; tokens/s from the median of steps >= 2."""
    with tempfile.TemporaryDirectory() as workdir:
        env = dict(os.environ, JAX_PLATFORMS="cpu", DECOUPLE_GCLOUD="TRUE",
                   TF_CPP_MIN_LOG_LEVEL="2")
        env.pop("XLA_FLAGS", None)  # one CPU device, like our train-step benchmark
        env.pop("PYTHONPATH", None)
        proc = subprocess.run(command(variant, steps + 2, batch, length, workdir, scan_layers),
                              env=env, cwd=workdir, capture_output=True, text=True,
                              timeout=timeout_s)
    log = proc.stdout + proc.stderr
    times = parse_step_times(log)
    timed = [s for step, s in sorted(times.items()) if step >= 2]
    if proc.returncode or not timed:
        raise RuntimeError(f"MaxText {variant} failed (exit {proc.returncode}, "
                           f"{len(times)} steps logged):\n{log[-4000:]}")
    step_s = statistics.median(timed)
    return {"variant": variant, "step_s": step_s, "best_step_s": min(timed),
            "tokens_per_s": batch * length / step_s, "steps_timed": len(timed),
            "compile_and_first_step_s": times.get(0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("variant", choices=sorted(VARIANTS))
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--scan_layers", action="store_true")
    args = p.parse_args()
    res = run(args.variant, args.steps, args.batch, args.length, args.scan_layers)
    print(f"MaxText 0.2.5 {res['variant']}: {res['step_s']:.3f} s/step (best "
          f"{res['best_step_s']:.3f}) = {res['tokens_per_s']:.0f} tokens/s over "
          f"{res['steps_timed']} steps")


if __name__ == "__main__":
    sys.exit(main())

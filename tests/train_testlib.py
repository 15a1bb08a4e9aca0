"""Shared bits of the trainer tests: a tiny model, the CLI, in-process gin setup."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from typing import Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]

# A model small enough that a step takes milliseconds on CPU (no media encoders).
TINY_OVERRIDES = ("{'d_model': 32, 'num_layers': 1, 'num_heads': 2, 'num_kv_heads': 1, "
                  "'head_dim': 16, 'd_ff': 64, 'vocab_size': 512, 'max_len': 64, "
                  "'image': None, 'video': None, 'audio': None}")



def overrides_binding(**changes) -> str:
    """`model_config.overrides = {...}` with TINY_OVERRIDES updated by `changes`."""
    import ast
    return f"model_config.overrides = {dict(ast.literal_eval(TINY_OVERRIDES), **changes)!r}"


TINY_BINDINGS = (
    "model_config.preset = 'tiny'",
    f"model_config.overrides = {TINY_OVERRIDES}",
    "synthetic_dataset_fn.vocab_size = 512",
    "warmup_cosine_schedule.warmup_steps = 2",
    "warmup_cosine_schedule.peak_value = 3e-3",
    "train.peak_flops_per_device = 1e12",
    "train.progress_bar = False",
)

BASE_FILES = ("gin/runs/pretrain_synthetic.gin",)


def cli_args(model_dir: pathlib.Path | str, steps: int, bindings: Sequence[str] = (),
             batch_size: int = 8, length: int = 32) -> list[str]:
    args = [f"--gin_file={f}" for f in BASE_FILES]
    args += [f"--gin.MODEL_DIR={model_dir}", f"--gin.TRAIN_STEPS={steps}",
             f"--gin.BATCH_SIZE={batch_size}",
             f"--gin.TASK_FEATURE_LENGTHS={{'targets': {length}}}"]
    args += [f"--gin_bindings={b}" for b in (*TINY_BINDINGS, *bindings)]
    return args


def env(num_devices: int = 8) -> dict[str, str]:
    e = dict(os.environ)
    e.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO),
             XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}")
    return e


def popen(args: Sequence[str], log_path: pathlib.Path, num_devices: int = 8
          ) -> subprocess.Popen:
    """Starts `python -m model.train`; stdout+stderr go to `log_path` (a file, so a
    chatty run never blocks on a full pipe)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        return subprocess.Popen([sys.executable, "-m", "model.train", *args], cwd=REPO,
                                env=env(num_devices), stdout=log,
                                stderr=subprocess.STDOUT, text=True)


def run(args: Sequence[str], num_devices: int = 8, timeout: float = 120
        ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "model.train", *args], cwd=REPO,
                          env=env(num_devices), capture_output=True, text=True,
                          timeout=timeout)


def parse_in_process(args: Sequence[str]) -> None:
    """Parses CLI-style gin flags into this process's (cleared) gin config."""
    import gin
    from model import gin_flags
    import model.train  # noqa: F401  - registers the configurables
    gin.clear_config()
    gin_flags.parse_gin_flags(list(args), "test")


def train_in_process(args: Sequence[str]):
    """Runs `model.train.train()` here on CLI-style gin flags; clears gin afterwards."""
    import gin
    from model import train as train_lib
    parse_in_process(args)
    try:
        return train_lib.train()
    finally:
        gin.clear_config()


def step_losses(trainer, batches, state=None):
    """Runs `trainer`'s jitted step over host `batches`: (losses [N], final state).
    `state` (host arrays) is placed on the trainer's mesh; None initialises."""
    import jax
    import numpy as np
    part = trainer.partitioner
    if state is None:
        state = trainer.init_state(jax.random.key(0), part.shard_batch(batches[0]))
    else:
        state = jax.device_put(state, trainer.state_shardings(batches[0]))
    step = trainer.jit_train_step(batches[0])
    losses = []
    for b in batches:
        state, metrics = step(state, part.shard_batch(b))
        losses.append(float(metrics["loss"]))
    return np.array(losses), state

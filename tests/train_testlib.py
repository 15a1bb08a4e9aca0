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


def run(args: Sequence[str], num_devices: int = 8, timeout: float = 600
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


# ---------------------------------------------------------------- multi-process
def launch(args: Sequence[str], num_processes: int, devices_per_process: int,
           log_path: pathlib.Path, *, failure_grace_s: float = 0.0,
           heartbeat_timeout_s: int = 20):
    """Starts `python -m model.train` as `num_processes` processes of one JAX job
    (model.launch_local); prefixed output goes to `log_path`. Returns the cluster."""
    from model.launch_local import LocalCluster
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "w")  # pylint: disable=consider-using-with  (the pumps write it)
    return LocalCluster([sys.executable, "-m", "model.train", *args], num_processes,
                        devices_per_process, heartbeat_timeout_s=heartbeat_timeout_s,
                        init_timeout_s=120, failure_grace_s=failure_grace_s, output=out,
                        env=env(1), cwd=str(REPO)).start()


def losses(model_dir: pathlib.Path | str) -> dict[int, float]:
    """step -> train loss from metrics.jsonl (the last value of a step logged twice)."""
    from model.metric_writers import read_jsonl
    return {r["step"]: r["loss"]
            for r in read_jsonl(pathlib.Path(model_dir) / "metrics.jsonl", "train")}


def wait_for_step(model_dir: pathlib.Path, step: int, alive, timeout: float = 300) -> int:
    """Polls metrics.jsonl until `step` is logged; `alive()` False -> AssertionError."""
    import time
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not alive():
            raise AssertionError(f"run ended before step {step}")
        seen = losses(model_dir) if (model_dir / "metrics.jsonl").exists() else {}
        if seen and max(seen) >= step:
            return max(seen)
        time.sleep(0.01)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def _register_failing_dataset():
    """`failing_dataset_fn`: synthetic batches whose reader raises, as a corrupt record
    does, when it reaches batch `fail_at` (naming the file)."""
    import gin
    from model.synthetic_data import synthetic_dataset_fn

    @gin.configurable
    def failing_dataset_fn(cfg, shard_id, num_shards, start_batch, *, fail_at: int,
                           path: str = "data/train.tfrecord-00003-of-00008"):
        batches = synthetic_dataset_fn(cfg, shard_id, num_shards, start_batch, vocab_size=512)
        for index, batch in enumerate(batches, start_batch):
            if index == fail_at:
                raise OSError(f"corrupted record at offset 81920 in {path}")
            yield batch

    return failing_dataset_fn


failing_dataset_fn = _register_failing_dataset()


def _register_union_dataset():
    """`union_dataset_fn`: a 1-process reference for an N-host run. Each batch is the
    N hosts' batches of `inner` one after the other (host 0's rows first, as the
    multi-process run assembles them on an (N*k, 1, 1) mesh)."""
    import gin
    import numpy as np

    @gin.configurable
    def union_dataset_fn(cfg, shard_id, num_shards, start_batch, *, hosts: int, inner):
        if num_shards != 1:
            raise ValueError("union_dataset_fn is for 1-process reference runs")
        del shard_id
        iterators = [inner(cfg, h, hosts, start_batch) for h in range(hosts)]
        for parts in zip(*iterators):
            yield {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    return union_dataset_fn


union_dataset_fn = _register_union_dataset()

"""T5X-style training entry point: `python -m model.train --gin_file=... --gin.NAME=VALUE`.

    python -m model.train \
        --gin_file=gin/models/tiny.gin --gin_file=gin/runs/pretrain_synthetic.gin \
        --gin.MODEL_DIR=/tmp/tiny --gin.TRAIN_STEPS=200 --gin.BATCH_SIZE=8

The same command runs on every host of a job (`python -m model.launch_local` starts
N of them on one machine). `train()` wires the pieces:
- restore-or-init (model/restore.py): the newest readable checkpoint, with the input
  positioned where it left off (saved iterator states: no replay);
- hooks (model/train_hooks.py): log, eval, checkpoint, profile;
- the loop (model/train_loop.py): steps and the stop decisions all hosts agree on
  (preemption, end of data, input errors, NaN/Inf loss).
Data arrives through `train.get_dataset_fn` (see model/dataset_config.py and
model/train_input.py), so this module imports neither TensorFlow nor SeqIO.

Exit codes: 0 done or preempted (checkpoint saved), 2 configuration error, 3 NaN/Inf
loss, 4 input error (checkpoint saved), 5 checkpoints present but none restorable;
1 anything else (on a multi-process job the process exits at once, so its peers
notice within the heartbeat timeout instead of waiting in a collective).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
import sys
import time
import traceback
from typing import Any, Callable, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from model import fs, gin_flags, host_malloc, metric_writers, partitioning, trainer
from model import models  # noqa: F401  - registers DecoderOnlyModel with gin
from model import synthetic_data  # noqa: F401  - registers synthetic_dataset_fn
from model import train_hooks
from model.checkpointing import CheckpointConfig, Checkpointer, CheckpointRestoreError
from model.dataset_config import DatasetConfig, GetDatasetFn, check_host_data_sharding
from model.partitioning import Partitioner
from model.restore import restore_or_init
from model.train_input import Prefetcher, open_dataset
from model.train_loop import (DataPosition, InputDataError, Loop, NonFiniteLossError,
                              run_loop)
from model.trainer import Hooks, Trainer, TrainState

__all__ = ["train", "main", "TrainResult", "NonFiniteLossError", "InputDataError"]

log = logging.getLogger("tapestry.train")


# --------------------------------------------------------------------- helpers
def measure_peak_flops(dtype: str = "float32", n: int = 2048, repeats: int = 5) -> float:
    """Achieved FLOP/s of a large square matmul on one device (a practical peak)."""
    x = jnp.ones((n, n), dtype)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        f(x).block_until_ready()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def peak_flops_total(peak_flops_per_device: float | None, compute_dtype: str) -> float:
    """Peak FLOP/s of the whole job. CPU 'devices' share the host's cores, so on CPU
    the measured matmul rate is the host's peak, not per device."""
    if peak_flops_per_device is not None:
        return peak_flops_per_device * jax.device_count()
    per_device = measure_peak_flops(compute_dtype if jax.default_backend() != "cpu"
                                    else "float32")
    if jax.default_backend() == "cpu":
        return per_device * jax.process_count()
    return per_device * jax.device_count()


def _flops_per_token(model: Any, length: int) -> float:
    """The model's training FLOPs/token, at the batch's length when it takes one."""
    if "seq_len" in inspect.signature(model.flops_per_token).parameters:
        return float(model.flops_per_token(seq_len=length))
    return float(model.flops_per_token())


# ----------------------------------------------------------------------- train
@dataclasses.dataclass
class TrainResult:
    step: int
    preempted: bool
    last_metrics: dict[str, Any]
    last_eval: dict[str, float] | None
    model_dir: str
    state: TrainState | None = None


@gin.configurable
def train(*, model: Any = gin.REQUIRED,
          train_dataset_cfg: DatasetConfig = gin.REQUIRED,
          get_dataset_fn: GetDatasetFn = gin.REQUIRED,
          model_dir: str = gin.REQUIRED,
          train_steps: int = gin.REQUIRED,
          optimizer_fn: Callable[..., optax.GradientTransformation] = trainer.adamw,
          learning_rate_schedule: optax.Schedule = gin.REQUIRED,
          partitioner: Partitioner | None = None,
          checkpoint_cfg: CheckpointConfig | None = None,
          eval_dataset_cfg: DatasetConfig | None = None,
          eval_every: int = 0,
          eval_steps: int | None = 10,
          log_every: int = 10,
          num_microbatches: int = 1,
          compute_dtype: str = "float32",
          seed: int = 0,
          peak_flops_per_device: float | None = None,
          tensorboard: bool = True,
          progress_bar: bool | None = None,
          prefetch: int = 2,
          profile_steps: tuple[int, int] | None = None) -> TrainResult:
    """Trains `model` for `train_steps` steps (resuming from MODEL_DIR if it has
    checkpoints), logging every `log_every`, evaluating `eval_steps` batches every
    `eval_every` steps (0: off) and checkpointing per `checkpoint_cfg`;
    `profile_steps=(a, b)` traces steps a+1..b with jax.profiler into MODEL_DIR/profile.

    `eval_steps` must be a number of batches: eval datasets repeat, so "one pass"
    (None) would never end; a finite eval set that ends earlier stops the eval there.

    Multi-host: call `partitioning.initialize_distributed()` before this (as `main`
    does), since gin builds the Partitioner, which lists the devices, on the call.
    """
    if train_steps < 1 or log_every < 1:
        raise ValueError(f"train_steps={train_steps} and log_every={log_every} must be >= 1")
    evaluating = eval_dataset_cfg is not None and eval_every > 0
    if evaluating and (not isinstance(eval_steps, int) or eval_steps < 1):
        raise ValueError(f"train.eval_steps={eval_steps!r}: set a number of eval batches "
                         f">= 1 (eval datasets repeat, so None would never end), or "
                         f"train.eval_every = 0 to turn eval off")
    partitioner = partitioner or Partitioner()
    checkpoint_cfg = checkpoint_cfg or CheckpointConfig()
    partitioner.validate_batch_size(train_dataset_cfg.batch_size, num_microbatches)
    check_host_data_sharding(partitioner.mesh)  # each host reads only its own rows
    if evaluating:
        partitioner.validate_batch_size(eval_dataset_cfg.batch_size)
    model_dir = os.fspath(fs.makedirs(model_dir))  # local: absolute; gs://, s3:// as given
    is_chief = jax.process_index() == 0
    if is_chief:
        metric_writers.write_config_gin(model_dir)
    shard_id, num_shards = jax.process_index(), jax.process_count()

    optimizer = optimizer_fn(learning_rate=learning_rate_schedule)
    tr = Trainer(model, optimizer, partitioner, learning_rate_schedule,
                 num_microbatches=num_microbatches, compute_dtype=compute_dtype, seed=seed)
    ckpt = Checkpointer(model_dir, checkpoint_cfg)
    open_train = functools.partial(open_dataset, get_dataset_fn, train_dataset_cfg,
                                   shard_id, num_shards)
    try:
        start = restore_or_init(tr, ckpt, open_train, seed, train_dataset_cfg.to_json())
    except BaseException:
        ckpt.close()
        raise
    if start.step >= train_steps:
        log.info("already at step %d >= train_steps=%d; nothing to do", start.step, train_steps)
        ckpt.close()
        return TrainResult(start.step, False, {}, None, model_dir, start.state)

    batches = Prefetcher(start.batches, prefetch) if prefetch else start.batches
    sample = start.sample
    writers = metric_writers.MetricWriters(model_dir, tensorboard, is_chief)
    bar = metric_writers.ProgressBar(train_steps, start.step,
                                     progress_bar if is_chief else False)
    length = sample["decoder_target_tokens"].shape[1]
    speed = train_hooks.Throughput(
        tokens_per_batch=int(np.prod(sample["decoder_target_tokens"].shape)) * num_shards,
        flops_per_token=_flops_per_token(model, length),
        peak_flops=peak_flops_total(peak_flops_per_device, compute_dtype))
    log.info("mesh %s, %d devices in %d processes, batch %d x %d, %.3g FLOPs/token, "
             "peak %.3g FLOP/s", partitioner.mesh_shape, jax.device_count(), num_shards,
             train_dataset_cfg.batch_size, length, speed.flops_per_token, speed.peak_flops)

    log_hook = train_hooks.LogHook(writers, bar, speed, start.step)

    def on_first_step(step: int, metrics: Any) -> None:
        jax.block_until_ready(metrics["loss"])
        log_hook.restart_window(step)  # later windows exclude compilation
        if is_chief:
            metric_writers.write_config_gin(model_dir, operative=True)

    loop = Loop(train_steps=train_steps, batches=batches,
                train_step=tr.jit_train_step(sample), shard_batch=partitioner.shard_batch,
                hooks=Hooks(), checkpointer=ckpt,
                position=DataPosition(start.consumed, start.first_state,
                                      train_dataset_cfg.to_json()),
                on_first_step=on_first_step)
    loop.hooks.add(log_hook, every=log_every, name="log")
    eval_hook = None
    if evaluating:
        eval_hook = train_hooks.EvalHook(
            tr.jit_eval_step(sample),
            functools.partial(get_dataset_fn, eval_dataset_cfg, shard_id, num_shards, 0),
            partitioner, eval_steps, writers, log_hook)
        loop.hooks.add(eval_hook, every=eval_every, name="eval")
    loop.hooks.add(train_hooks.checkpoint_hook(loop), every=checkpoint_cfg.save_every,
                   name="checkpoint")
    if profile_steps is not None:
        loop.hooks.add(train_hooks.profile_hook(profile_steps, fs.join(model_dir, "profile")),
                       every=1, name="profile")
    try:
        result = run_loop(loop, start.state, start.step)
    finally:
        if isinstance(batches, Prefetcher):
            batches.close()
        ckpt.close()
        writers.close()
        bar.close()
    return TrainResult(result.step, result.preempted, log_hook.last,
                       eval_hook.last if eval_hook else None, model_dir, result.state)


def _configure_logging() -> None:
    """INFO lines from our loggers ('tapestry.*') on stderr, whatever JAX/absl set up."""
    root = logging.getLogger("tapestry")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False


# Errors every process of a job raises together (agreed stops): exit with a code.
EXIT_CODES = ((NonFiniteLossError, 3), (InputDataError, 4), (CheckpointRestoreError, 5))


def main(argv: Sequence[str] | None = None) -> int:
    _configure_logging()
    try:
        gin_flags.parse_gin_flags(argv, "Train a Tapestry model (T5X-style gin flags).")
    except (ValueError, OSError, gin_flags.GinFlagError) as e:
        message = str(e).splitlines()[0] if isinstance(e, OSError) else str(e)
        print(f"gin configuration error: {message}", file=sys.stderr)
        return 2
    # Before gin builds the Partitioner (which lists devices) inside train().
    partitioning.initialize_distributed()
    try:
        result = train()
    except Exception as e:  # pylint: disable=broad-except
        for error_type, code in EXIT_CODES:
            if isinstance(e, error_type):
                print(f"training stopped: {e}", file=sys.stderr)
                return code
        if jax.process_count() <= 1:
            raise
        # One host failing alone: leave now rather than wait in JAX's shutdown barrier
        # while the others block in a collective; they see this process go.
        traceback.print_exc()
        print(f"process {jax.process_index()} failed: {type(e).__name__}: {e}",
              file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)
    log.info("done at step %d%s; model dir %s", result.step,
             " (preempted)" if result.preempted else "", result.model_dir)
    return 0


if __name__ == "__main__":
    host_malloc.reexec_with_malloc_settings()
    sys.exit(main())

"""T5X-style training entry point: `python -m model.train --gin_file=... --gin.NAME=VALUE`.

    python -m model.train \
        --gin_file=gin/models/tiny.gin --gin_file=gin/runs/pretrain_synthetic.gin \
        --gin.MODEL_DIR=/tmp/tiny --gin.TRAIN_STEPS=200 --gin.BATCH_SIZE=8

`train()` wires the pieces: a Partitioner (mesh, rules), a Trainer (pure jitted
`train_step`), a Checkpointer (orbax; resume with the data position), metric writers,
and hooks for logging, eval and checkpoints. Data arrives through
`train.get_dataset_fn` (see `model.dataset_config`), so this module imports neither
TensorFlow nor SeqIO; with `model.synthetic_data` it runs on a JAX-only host.

The loop checks the loss of step s for NaN/Inf while step s+1 runs (one-step lag
keeps the device busy) and stops with the step number; SIGTERM saves at the next
step boundary and returns cleanly.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import pathlib
import queue
import sys
import threading
import time
from typing import Any, Callable, Iterator, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from model import gin_flags, host_malloc, metric_writers, partitioning, trainer
from model import models  # noqa: F401  - registers DecoderOnlyModel with gin
from model import synthetic_data  # noqa: F401  - registers synthetic_dataset_fn
from model.checkpointing import CheckpointConfig, Checkpointer
from model.dataset_config import DatasetConfig, GetDatasetFn
from model.partitioning import Partitioner
from model.trainer import Hooks, StepInfo, Trainer, TrainState, host_metrics

log = logging.getLogger("tapestry.train")


class NonFiniteLossError(FloatingPointError):
    """Raised when a step's loss is NaN or Inf."""


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


class Prefetcher:
    """Pulls numpy batches from an iterator in a background thread (bounded queue)."""

    _DONE = object()

    def __init__(self, iterator: Iterator[dict[str, np.ndarray]], size: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iterator,), daemon=True)
        self._thread.start()

    def _run(self, iterator):
        try:
            for batch in iterator:
                while not self._stop.is_set():
                    try:
                        self._queue.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as e:  # pylint: disable=broad-except
            self._error = e
        self._queue.put(self._DONE)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self._queue.get()
        if item is self._DONE:
            if self._error is not None:
                raise self._error
            raise StopIteration
        return item

    def close(self) -> None:
        self._stop.set()


def _check_finite(step: int, loss: Any) -> None:
    loss = float(loss)
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"loss is {loss} at step {step}: stopping. Lower the learning rate, enable "
            f"gradient clipping (adamw.clip_norm), or check the data of batch {step - 1}.")


def _flops_per_token(model: Any, length: int) -> float:
    """The model's training FLOPs/token, at the batch's length when it takes one."""
    if "seq_len" in inspect.signature(model.flops_per_token).parameters:
        return float(model.flops_per_token(seq_len=length))
    return float(model.flops_per_token())


def _data_position(step: int, cfg: DatasetConfig) -> dict[str, Any]:
    return {"train_batches_consumed": step, "dataset": cfg.to_json()}


# ------------------------------------------------------------------------ eval
def evaluate(eval_step: Callable, params: Any, batches: Iterator[dict[str, np.ndarray]],
             partitioner: Partitioner, num_batches: int | None) -> dict[str, float]:
    """Token-weighted mean of the eval metrics over `num_batches` batches."""
    totals: dict[str, float] = {}
    weight = 0.0
    count = 0
    for batch in batches:
        if num_batches is not None and count >= num_batches:
            break
        m = host_metrics(eval_step(params, partitioner.shard_batch(batch)))
        n = float(m.get("num_tokens", 1.0))
        for k, v in m.items():
            if isinstance(v, float) and k != "num_tokens":
                totals[k] = totals.get(k, 0.0) + n * v
        weight += n
        count += 1
    out = {k: v / max(weight, 1.0) for k, v in totals.items()}
    out.update(num_tokens=weight, num_batches=float(count))
    return out


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
    checkpoints), logging every `log_every`, evaluating every `eval_every` (0: off)
    and checkpointing per `checkpoint_cfg`; `profile_steps=(a, b)` traces steps
    a+1..b with jax.profiler into MODEL_DIR/profile.

    Multi-host: call `partitioning.initialize_distributed()` before this (as `main`
    does), since gin builds the Partitioner, which lists the devices, on the call.
    """
    if train_steps < 1 or log_every < 1:
        raise ValueError(f"train_steps={train_steps} and log_every={log_every} must be >= 1")
    partitioner = partitioner or Partitioner()
    checkpoint_cfg = checkpoint_cfg or CheckpointConfig()
    partitioner.validate_batch_size(train_dataset_cfg.batch_size, num_microbatches)
    if eval_dataset_cfg is not None and eval_every:
        partitioner.validate_batch_size(eval_dataset_cfg.batch_size)
    model_dir = str(model_dir)
    pathlib.Path(model_dir).mkdir(parents=True, exist_ok=True)
    is_chief = jax.process_index() == 0
    if is_chief:
        metric_writers.write_config_gin(model_dir)
    shard_id, num_shards = jax.process_index(), jax.process_count()

    optimizer = optimizer_fn(learning_rate=learning_rate_schedule)
    tr = Trainer(model, optimizer, partitioner, learning_rate_schedule,
                 num_microbatches=num_microbatches, compute_dtype=compute_dtype, seed=seed)
    ckpt = Checkpointer(model_dir, checkpoint_cfg)

    # Shapes come from the first batch; resume may move the start afterwards.
    first_iter = get_dataset_fn(train_dataset_cfg, shard_id, num_shards, 0)
    sample = next(first_iter)
    abstract, _ = tr.abstract_state(sample)
    restored = ckpt.restore_latest(abstract)
    if restored is not None:
        state = TrainState.from_dict(restored[0])
        position = restored[1]
        start = int(position["train_batches_consumed"])
        if position.get("dataset") != train_dataset_cfg.to_json():
            log.warning("dataset config changed since the checkpoint: %s -> %s",
                        position.get("dataset"), train_dataset_cfg.to_json())
        log.info("resuming at step %d (data position %d)", int(state.step), start)
    else:
        state = tr.init_state(jax.random.key(seed), partitioner.shard_batch(sample))
        start = 0
        if checkpoint_cfg.restore_from:
            params = ckpt.restore_params_for_finetune(abstract.params)
            state = state.replace(params=params)
    step = int(state.step)
    if step >= train_steps:
        log.info("already at step %d >= train_steps=%d; nothing to do", step, train_steps)
        ckpt.close()
        return TrainResult(step, False, {}, None, model_dir, state)

    if start == 0:
        batches = _chain([sample], first_iter)
    else:
        batches = get_dataset_fn(train_dataset_cfg, shard_id, num_shards, start)
    batches = Prefetcher(batches, prefetch) if prefetch else batches

    train_step = tr.jit_train_step(sample)
    eval_step = tr.jit_eval_step(sample) if eval_dataset_cfg and eval_every else None
    writers = metric_writers.MetricWriters(model_dir, tensorboard, is_chief)
    bar = metric_writers.ProgressBar(train_steps, step, progress_bar if is_chief else False)
    flops_per_token = _flops_per_token(model, sample["decoder_target_tokens"].shape[1])
    peak = peak_flops_total(peak_flops_per_device, compute_dtype)
    tokens_per_batch = int(np.prod(sample["decoder_target_tokens"].shape)) * num_shards
    log.info("mesh %s, %d devices, batch %d x %d, %.3g FLOPs/token, peak %.3g FLOP/s",
             partitioner.mesh_shape, jax.device_count(), train_dataset_cfg.batch_size,
             sample["decoder_target_tokens"].shape[1], flops_per_token, peak)

    window = {"start": time.perf_counter(), "step": step}
    last: dict[str, Any] = {"metrics": {}, "eval": None}

    def log_hook(info: StepInfo) -> None:
        values = host_metrics(info.metrics)
        now = time.perf_counter()
        steps = max(info.step - window["step"], 1)
        elapsed = now - window["start"]
        tokens_per_s = tokens_per_batch * steps / elapsed
        values.update(
            step_time_s=elapsed / steps, tokens_per_s=tokens_per_s,
            mfu=flops_per_token * tokens_per_s / peak,
            eta_s=bar.eta_s(info.step))
        window.update(start=now, step=info.step)
        writers.write(info.step, "train", values)
        bar.update(info.step, {k: values[k] for k in ("loss", "tokens_per_s", "mfu")
                               if k in values})
        last["metrics"] = values

    def eval_hook(info: StepInfo) -> None:
        start = time.perf_counter()
        it = get_dataset_fn(eval_dataset_cfg, shard_id, num_shards, 0)
        values = evaluate(eval_step, info.state.params, it, partitioner, eval_steps)
        values["eval_time_s"] = time.perf_counter() - start
        writers.write(info.step, "eval", values)
        log.info("eval at step %d: loss %.4f (%.1f s)", info.step,
                 values.get("loss", float("nan")), values["eval_time_s"])
        last["eval"] = values
        window["start"] += values["eval_time_s"]  # train step time excludes eval

    def checkpoint_hook(info: StepInfo) -> None:
        ckpt.save(info.step, info.state, _data_position(info.step, train_dataset_cfg))

    hooks = Hooks()
    hooks.add(log_hook, every=log_every, name="log")
    if eval_step is not None:
        hooks.add(eval_hook, every=eval_every, name="eval")
    hooks.add(checkpoint_hook, every=checkpoint_cfg.save_every, name="checkpoint")
    if profile_steps is not None:
        hooks.add(_profile_hook(profile_steps, pathlib.Path(model_dir) / "profile"),
                  every=1, name="profile")

    preempted = False
    first_step = step
    pending: tuple[int, Any] | None = None
    try:
        while step < train_steps:
            try:
                host_batch = next(batches)
            except StopIteration:
                log.warning("training data ran out after %d steps; saving and stopping", step)
                ckpt.save(step, state, _data_position(step, train_dataset_cfg))
                break
            state, metrics = train_step(state, partitioner.shard_batch(host_batch))
            step += 1
            if pending is not None:  # the previous step's loss, fetched while this one runs
                _check_finite(*pending)
            final = step == train_steps
            stop = ckpt.should_stop(step)
            force = ("log", "checkpoint") if (final or stop) else ()
            if force or hooks.due(step):  # never log, eval or save a non-finite state
                _check_finite(step, float(metrics["loss"]))
                pending = None
            else:
                pending = (step, metrics["loss"])
            hooks.run(StepInfo(step, state, metrics), force=force)
            if step == first_step + 1:  # later windows exclude compilation
                jax.block_until_ready(metrics["loss"])
                window.update(start=time.perf_counter(), step=step)
                if is_chief:
                    metric_writers.write_config_gin(model_dir, operative=True)
            if stop:
                log.warning("SIGTERM: saved a checkpoint at step %d; exiting", step)
                print(f"preempted: checkpoint saved at step {step}", flush=True)
                preempted = True
                break
    finally:
        if isinstance(batches, Prefetcher):
            batches.close()
        ckpt.close()
        writers.close()
        bar.close()
    return TrainResult(step, preempted, last["metrics"], last["eval"], model_dir, state)


def _profile_hook(steps: tuple[int, int], logdir: pathlib.Path) -> Callable[[StepInfo], None]:
    """A jax.profiler trace of steps (first, last], viewable in TensorBoard/Perfetto."""
    first, last = steps
    if not 0 <= first < last:
        raise ValueError(f"profile_steps={steps}: need 0 <= first < last")

    def hook(info: StepInfo) -> None:
        if info.step == first:
            jax.profiler.start_trace(str(logdir))
        elif info.step == last:
            jax.block_until_ready(info.metrics)
            jax.profiler.stop_trace()
            log.info("profile of steps %d..%d in %s", first + 1, last, logdir)
    return hook


def _chain(head: Sequence[Any], tail: Iterator[Any]) -> Iterator[Any]:
    yield from head
    yield from tail


def _configure_logging() -> None:
    """INFO lines from our loggers ('tapestry.*') on stderr, whatever JAX/absl set up."""
    root = logging.getLogger("tapestry")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    _configure_logging()
    try:
        gin_flags.parse_gin_flags(argv, "Train a Tapestry model (T5X-style gin flags).")
    except (ValueError, gin_flags.GinFlagError) as e:
        print(f"gin configuration error: {e}", file=sys.stderr)
        return 2
    # Before gin builds the Partitioner (which lists devices) inside train().
    partitioning.initialize_distributed()
    try:
        result = train()
    except NonFiniteLossError as e:
        print(f"training stopped: {e}", file=sys.stderr)
        return 3
    log.info("done at step %d%s; model dir %s", result.step,
             " (preempted)" if result.preempted else "", result.model_dir)
    return 0


if __name__ == "__main__":
    host_malloc.reexec_with_malloc_settings()
    sys.exit(main())

"""The hooks `train()` attaches to the loop: log, eval, checkpoint, profile.

Each is `hook(info: StepInfo)`, run by `Hooks` after every `every`-th step (and
log/checkpoint also at the last step and on preemption). All processes run every
hook at the same step; only process 0 writes metrics.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np

from model import distributed, metric_writers
from model.partitioning import Partitioner
from model.train_loop import Loop, save
from model.trainer import StepInfo, host_metrics

log = logging.getLogger("tapestry.train")


def evaluate(eval_step: Callable, params: Any, batches: Iterator[dict[str, np.ndarray]],
             partitioner: Partitioner, num_batches: int) -> dict[str, float]:
    """Token-weighted mean of the eval metrics over up to `num_batches` batches; stops
    early, on every process together, when any host's eval data ends."""
    totals: dict[str, float] = {}
    weight = 0.0
    count = 0
    while count < num_batches:
        batch = next(batches, None)
        if distributed.any_process([batch is None])[0]:
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


@dataclasses.dataclass
class Throughput:
    """Inputs of the log hook's speed figures."""
    tokens_per_batch: int
    flops_per_token: float
    peak_flops: float


class LogHook:
    """Train metrics + tokens/s, step time, MFU and ETA since the previous log."""

    def __init__(self, writers: metric_writers.MetricWriters, bar: metric_writers.ProgressBar,
                 speed: Throughput, step: int):
        self.writers, self.bar, self.speed = writers, bar, speed
        self.window_start, self.window_step = time.perf_counter(), step
        self.last: dict[str, Any] = {}

    def restart_window(self, step: int) -> None:
        """Later windows exclude compilation (called after the first step)."""
        self.window_start, self.window_step = time.perf_counter(), step

    def __call__(self, info: StepInfo) -> None:
        values = host_metrics(info.metrics)
        now = time.perf_counter()
        steps = max(info.step - self.window_step, 1)
        elapsed = now - self.window_start
        tokens_per_s = self.speed.tokens_per_batch * steps / elapsed
        values.update(step_time_s=elapsed / steps, tokens_per_s=tokens_per_s,
                      mfu=self.speed.flops_per_token * tokens_per_s / self.speed.peak_flops,
                      eta_s=self.bar.eta_s(info.step))
        self.restart_window(info.step)
        self.writers.write(info.step, "train", values)
        self.bar.update(info.step, {k: values[k] for k in ("loss", "tokens_per_s", "mfu")
                                    if k in values})
        self.last = values


class EvalHook:
    """Eval loss over `num_batches` batches of a fresh eval iterator."""

    def __init__(self, eval_step: Callable, open_eval: Callable[[], Iterator[Any]],
                 partitioner: Partitioner, num_batches: int,
                 writers: metric_writers.MetricWriters, log_hook: LogHook):
        self.eval_step, self.open_eval, self.partitioner = eval_step, open_eval, partitioner
        self.num_batches, self.writers, self.log_hook = num_batches, writers, log_hook
        self.last: dict[str, float] | None = None

    def __call__(self, info: StepInfo) -> None:
        start = time.perf_counter()
        values = evaluate(self.eval_step, info.state.params, iter(self.open_eval()),
                          self.partitioner, self.num_batches)
        values["eval_time_s"] = time.perf_counter() - start
        self.writers.write(info.step, "eval", values)
        log.info("eval at step %d: loss %.4f (%.1f s)", info.step,
                 values.get("loss", float("nan")), values["eval_time_s"])
        self.last = values
        self.log_hook.window_start += values["eval_time_s"]  # train step time excludes eval


def checkpoint_hook(loop: Loop) -> Callable[[StepInfo], None]:
    """Saves the state with every host's data position."""
    def hook(info: StepInfo) -> None:
        save(loop, info.step, info.state)
    return hook


def profile_hook(steps: tuple[int, int], logdir: str) -> Callable[[StepInfo], None]:
    """A jax.profiler trace of steps (first, last], viewable in TensorBoard/Perfetto."""
    first, last = steps
    if not 0 <= first < last:
        raise ValueError(f"profile_steps={steps}: need 0 <= first < last")

    def hook(info: StepInfo) -> None:
        if info.step == first:
            jax.profiler.start_trace(logdir)
        elif info.step == last:
            jax.block_until_ready(info.metrics)
            jax.profiler.stop_trace()
            log.info("profile of steps %d..%d in %s", first + 1, last, logdir)
    return hook

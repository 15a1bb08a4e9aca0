"""The train step (a pure function), its optimizer, and the hook list around it.

    state, metrics = trainer.train_step(state, batch)   # pure; jitted with shardings

`train_step` splits the batch into `num_microbatches` (strided rows, so every
microbatch spans all batch shards), accumulates gradients in float32 weighted by
each microbatch's token count (so the result equals the full-batch gradient of the
token-mean loss), clips, and applies AdamW. With `compute_dtype='bfloat16'` the
float32 master weights are cast to bf16 for the forward/backward pass; gradients
and optimizer state stay float32.

Everything else (logging, eval, checkpoints, stopping) attaches as hooks:
`hooks.add(fn, every=N)`; `fn(info)` gets a `StepInfo` after step N, 2N, ...

Shapes: B global batch, L length, M microbatches, b = B / M rows per microbatch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from model.partitioning import BATCH_AXES, Partitioner
from model.transformer import SCAN_NAME

Batch = dict[str, Any]
Metrics = dict[str, jax.Array]


# ------------------------------------------------------------------- optimizer
@gin.configurable
def warmup_cosine_schedule(peak_value: float = 3e-4, warmup_steps: int = 100,
                           decay_steps: int = gin.REQUIRED, end_ratio: float = 0.1,
                           init_value: float = 0.0) -> optax.Schedule:
    """Linear warmup to `peak_value`, cosine decay to `end_ratio * peak_value` at
    `decay_steps` (usually %TRAIN_STEPS), constant after."""
    if decay_steps <= warmup_steps:
        raise ValueError(f"warmup_cosine_schedule: decay_steps={decay_steps} must exceed "
                         f"warmup_steps={warmup_steps}")
    return optax.warmup_cosine_decay_schedule(init_value, peak_value, warmup_steps,
                                              decay_steps, end_ratio * peak_value)


@gin.configurable
def constant_schedule(value: float = 1e-4, warmup_steps: int = 0) -> optax.Schedule:
    """Linear warmup then constant (fine-tuning)."""
    if warmup_steps <= 0:
        return optax.constant_schedule(value)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, value, warmup_steps), optax.constant_schedule(value)],
        [warmup_steps])


def _decay_mask(params: Any) -> Any:
    """Weight decay on matrices only (not norms' scales or biases); the leading layers
    axis of a scanned stack (scan_layers: params under 'layers') does not count."""
    def is_matrix(path, p):
        stacked = any(getattr(k, "key", None) == SCAN_NAME for k in path)
        return p.ndim - stacked >= 2
    return jax.tree_util.tree_map_with_path(is_matrix, params)


@gin.configurable
def adamw(learning_rate: optax.Schedule = gin.REQUIRED, b1: float = 0.9, b2: float = 0.95,
          eps: float = 1e-8, weight_decay: float = 0.1,
          clip_norm: float | None = 1.0) -> optax.GradientTransformation:
    """AdamW with global-norm clipping (clip_norm=None disables it)."""
    parts = [] if clip_norm is None else [optax.clip_by_global_norm(clip_norm)]
    parts.append(optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps,
                             weight_decay=weight_decay, mask=_decay_mask))
    return optax.chain(*parts)


# ----------------------------------------------------------------------- state
@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "params": self.params, "opt_state": self.opt_state}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainState":
        return cls(step=d["step"], params=d["params"], opt_state=d["opt_state"])


def _cast_floats(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


class Trainer:
    """Holds model, optimizer and partitioner; builds the jitted init/train/eval fns.

    Args:
      model: object with `init(rng, batch)` and `loss_fn(params, batch, rng, *, train)`.
      optimizer: an optax GradientTransformation.
      partitioner: mesh + logical rules.
      schedule: the learning-rate schedule (for the `learning_rate` metric).
      num_microbatches: gradient accumulation steps per train step.
      compute_dtype: 'float32' or 'bfloat16' (float32 master weights either way).
      seed: dropout/routing rng seed (step-folded, so resume is exact).
    """

    def __init__(self, model: Any, optimizer: optax.GradientTransformation,
                 partitioner: Partitioner, schedule: optax.Schedule | None = None,
                 num_microbatches: int = 1, compute_dtype: str = "float32", seed: int = 0):
        if num_microbatches < 1:
            raise ValueError(f"num_microbatches={num_microbatches} must be >= 1")
        if compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"compute_dtype={compute_dtype!r}: use 'float32' or 'bfloat16'")
        self.model = model
        self.optimizer = optimizer
        self.partitioner = partitioner
        self.schedule = schedule
        self.num_microbatches = num_microbatches
        self.compute_dtype = jnp.dtype(compute_dtype)
        self.seed = seed
        # Sparse training (model/nn/topkast.py): an optimizer that also masks the forward
        # pass and adds its regulariser; its masks live in the optimizer state.
        self.sparsity = optimizer if hasattr(optimizer, "forward_params") else None

    # --------------------------------------------------------------- shardings
    def abstract_state(self, batch: Batch) -> tuple[TrainState, TrainState]:
        """(abstract state with shardings, mesh PartitionSpecs of the state)."""
        boxed = jax.eval_shape(self.model.init, jax.random.key(0), batch)
        param_specs = self.partitioner.param_specs(boxed)
        params = nn.meta.unbox(boxed)
        opt_state = jax.eval_shape(self.optimizer.init, params)
        opt_specs = optax.tree_map_params(
            self.optimizer, lambda _, spec: spec, opt_state, param_specs,
            transform_non_params=lambda _: jax.sharding.PartitionSpec(),
            is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
        specs = TrainState(step=jax.sharding.PartitionSpec(), params=param_specs,
                           opt_state=opt_specs)
        shape = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                           opt_state=opt_state)
        shardings = self.partitioner.shardings(specs)
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shape, shardings)
        return abstract, specs

    def state_shardings(self, batch: Batch) -> TrainState:
        _, specs = self.abstract_state(batch)
        return self.partitioner.shardings(specs)

    # -------------------------------------------------------------------- init
    def init_state(self, rng: jax.Array, batch: Batch) -> TrainState:
        """Initializes params and optimizer state directly into their shardings."""
        shardings = self.state_shardings(batch)

        def init(rng, batch):
            params = nn.meta.unbox(self.model.init(rng, batch))
            return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                              opt_state=self.optimizer.init(params))

        jitted = self.partitioner.jit(init, out_shardings=shardings)
        return jitted(rng, batch)

    # -------------------------------------------------------------- the step
    def _loss_and_grads(self, params: Any, batch: Batch, rng: jax.Array):
        def loss_fn(p):
            if self.compute_dtype != jnp.float32:
                p = _cast_floats(p, self.compute_dtype)
            return self.model.loss_fn(p, batch, rng, train=True)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        grads = _cast_floats(grads, jnp.float32)
        return loss, metrics, grads

    def _microbatch_grads(self, params: Any, batch: Batch, rng: jax.Array):
        m = self.num_microbatches
        if m == 1:
            return self._loss_and_grads(params, batch, rng)

        def split(x):  # [B, ...] -> [M, b, ...], microbatch i = rows i, i+M, i+2M, ...
            x = x.reshape((x.shape[0] // m, m) + x.shape[1:]).swapaxes(0, 1)
            spec = jax.sharding.PartitionSpec(None, BATCH_AXES)
            return jax.lax.with_sharding_constraint(x, spec)

        micro = jax.tree.map(split, batch)

        def body(carry, inputs):
            acc_grads, acc_metrics, acc_n = carry
            mb, i = inputs
            loss, metrics, grads = self._loss_and_grads(params, mb, jax.random.fold_in(rng, i))
            n = metrics["num_tokens"].astype(jnp.float32)
            metrics = dict(metrics, loss=loss)
            acc_grads = jax.tree.map(lambda a, g: a + n * g, acc_grads, grads)
            acc_metrics = jax.tree.map(
                lambda a, v: a + n * v.astype(jnp.float32), acc_metrics,
                _without(metrics, "num_tokens"))
            return (acc_grads, acc_metrics, acc_n + n), None

        zeros_g = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        first_mb = jax.tree.map(lambda x: x[0], micro)
        metric_shapes = jax.eval_shape(
            lambda: self._loss_and_grads(params, first_mb, rng)[1])
        metric_shapes = dict(metric_shapes, loss=jax.ShapeDtypeStruct((), jnp.float32))
        zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32),
                               _without(metric_shapes, "num_tokens"))
        (grads, metrics, n), _ = jax.lax.scan(
            body, (zeros_g, zeros_m, jnp.zeros((), jnp.float32)), (micro, jnp.arange(m)))
        denom = jnp.maximum(n, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        metrics = jax.tree.map(lambda v: v / denom, metrics)
        metrics["num_tokens"] = n
        return metrics.pop("loss"), metrics, grads

    def train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        """One optimizer step on a global batch. Pure: same inputs, same outputs."""
        rng = jax.random.fold_in(jax.random.key(self.seed), state.step)
        sparse = self.sparsity
        fwd_params = (state.params if sparse is None
                      else sparse.forward_params(state.params, state.opt_state))
        loss, metrics, grads = self._microbatch_grads(fwd_params, batch, rng)
        if sparse is not None:  # gradient w.r.t. the masked params, plus the regulariser's
            grads, sparse_metrics = sparse.add_regulariser(grads, state.params, state.opt_state)
            metrics = dict(metrics, **sparse_metrics)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, loss=loss.astype(jnp.float32),
                       grad_norm=optax.global_norm(grads),
                       param_norm=optax.global_norm(params))
        if sparse is not None:
            metrics.update(sparse.metrics(opt_state, params))
        if self.schedule is not None:
            metrics["learning_rate"] = jnp.asarray(self.schedule(state.step), jnp.float32)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    def eval_step(self, params: Any, batch: Batch) -> Metrics:
        """Loss metrics on a batch, no update (`train=False`)."""
        if self.compute_dtype != jnp.float32:
            params = _cast_floats(params, self.compute_dtype)
        loss, metrics = self.model.loss_fn(params, batch, jax.random.key(self.seed), train=False)
        return dict(metrics, loss=loss.astype(jnp.float32))

    # ------------------------------------------------------------- jitted fns
    def jit_train_step(self, batch: Batch) -> Callable:
        """train_step jitted with state/batch shardings and the state donated.

        A model with long-range memory gets model/nn/memory_train.py's step, which
        carries each row's memory to the next batch."""
        if getattr(getattr(self.model, "config", None), "memory", None) is not None:
            from model.nn.memory_train import memory_train_step  # pylint: disable=import-outside-toplevel
            return memory_train_step(self, batch)
        state_sh = self.state_shardings(batch)
        batch_sh = self.partitioner.batch_shardings(batch)
        return self.partitioner.jit(self.train_step, in_shardings=(state_sh, batch_sh),
                                    out_shardings=(state_sh, self.partitioner.replicated()),
                                    donate_argnums=(0,))

    def jit_eval_step(self, batch: Batch) -> Callable:
        state_sh = self.state_shardings(batch)
        batch_sh = self.partitioner.batch_shardings(batch)
        return self.partitioner.jit(self.eval_step, in_shardings=(state_sh.params, batch_sh),
                                    out_shardings=self.partitioner.replicated())


def _without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


# ----------------------------------------------------------------------- hooks
@dataclasses.dataclass
class StepInfo:
    """What a hook sees after a step: the step number just completed (1-based count
    of optimizer steps), the new state and that step's metrics (device arrays)."""
    step: int
    state: TrainState
    metrics: Metrics


@dataclasses.dataclass
class _Hook:
    fn: Callable[[StepInfo], None]
    every: int
    name: str


class Hooks:
    """Ordered callbacks run after every `every`-th step (levanter's `add_hook`)."""

    def __init__(self):
        self._hooks: list[_Hook] = []

    def add(self, fn: Callable[[StepInfo], None], every: int = 1, name: str = "") -> None:
        if every < 1:
            raise ValueError(f"hook {name or fn}: every={every} must be >= 1")
        self._hooks.append(_Hook(fn, every, name or getattr(fn, "__name__", "hook")))

    def run(self, info: StepInfo, force: Sequence[str] = ()) -> None:
        for hook in self._hooks:
            if info.step % hook.every == 0 or hook.name in force:
                hook.fn(info)

    def due(self, step: int) -> bool:
        """True when some hook runs after `step`."""
        return any(step % h.every == 0 for h in self._hooks)

    @property
    def names(self) -> list[str]:
        return [h.name for h in self._hooks]


def host_metrics(metrics: Metrics) -> dict[str, Any]:
    """Device metrics -> python floats (scalars) and lists (vectors)."""
    out = {}
    for key, value in jax.device_get(metrics).items():
        arr = np.asarray(value)
        out[key] = float(arr) if arr.ndim == 0 else arr.astype(np.float64).tolist()
    return out

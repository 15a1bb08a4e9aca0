"""The train step with long-range memory carried across steps (Transformer-XL training).

    step = memory_train_step(trainer, sample_batch)   # what Trainer.jit_train_step returns
    state, metrics = step(state, batch)               # memory advanced and kept in `step`

Row r of each batch continues row r of the previous one (tasks/long_books.py feeds each
row one book after another in consecutive segments, with the book's id as segment id
and its offsets as positions). The jitted core is pure:
`(state, batch, memory) -> (state, metrics, memory)`; the memory (per layer [B, C, D]
states + ids, sharded over the batch axes like the batch) lives between calls in the
returned callable. Memory is not checkpointed: a resumed run starts from empty memory,
which only costs the first segment of each book in flight its context. Slots of another
document are never read (model/nn/memory.py), so a row that starts a new book needs no
explicit reset. One microbatch per step (memory rows must follow batch rows).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from model.nn.memory import empty_memory


def _cast_floats(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def pure_memory_train_step(trainer: Any, state: Any, batch: Any, memory: Any):
    """(state, batch, memory) -> (state, metrics, memory): trainer.train_step's update
    (AdamW with clipping) on the loss that reads and advances `memory`."""
    rng = jax.random.fold_in(jax.random.key(trainer.seed), state.step)
    del rng  # the model uses no randomness (as Trainer.train_step)

    def loss_fn(params):
        if trainer.compute_dtype != jnp.float32:
            params = _cast_floats(params, trainer.compute_dtype)
        loss, metrics, new_memory = trainer.model.loss_and_memory(params, batch, memory,
                                                                  train=True)
        return loss, (metrics, new_memory)

    (loss, (metrics, memory)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = _cast_floats(grads, jnp.float32)
    updates, opt_state = trainer.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, loss=loss.astype(jnp.float32), grad_norm=optax.global_norm(grads),
                   param_norm=optax.global_norm(params))
    if trainer.schedule is not None:
        metrics["learning_rate"] = jnp.asarray(trainer.schedule(state.step), jnp.float32)
    new_state = type(state)(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics, memory


class MemoryCarryingStep:
    """Calls the jitted pure step, keeping the advanced memory for the next call."""

    def __init__(self, jitted: Callable, empty: Callable[[Any, Any], Any]):
        self._jitted, self._empty = jitted, empty
        self.memory = None

    def reset(self) -> None:
        self.memory = None

    def __call__(self, state: Any, batch: Any):
        if self.memory is None:
            self.memory = self._empty(state.params, batch)
        state, metrics, self.memory = self._jitted(state, batch, self.memory)
        return state, metrics


def memory_train_step(trainer: Any, batch: Any) -> MemoryCarryingStep:
    """The memory-carrying train step, jitted with the trainer's shardings (memory sharded
    on its leading batch axis) and state + memory donated."""
    if trainer.num_microbatches != 1:
        raise ValueError(f"num_microbatches={trainer.num_microbatches}: training with "
                         "long-range memory carries each row's memory to the same row of "
                         "the next batch, so it needs num_microbatches=1")
    part = trainer.partitioner
    state_sh = trainer.state_shardings(batch)
    batch_sh = part.batch_shardings(batch)
    mem_sh = part.batch_sharding()

    def step(state, batch, memory):
        return pure_memory_train_step(trainer, state, batch, memory)

    jitted = part.jit(step, in_shardings=(state_sh, batch_sh, mem_sh),
                      out_shardings=(state_sh, part.replicated(), mem_sh),
                      donate_argnums=(0, 2))

    def empty(params, batch):
        mem = empty_memory(trainer.model, params, batch)
        return jax.device_put(mem, mem_sh)

    return MemoryCarryingStep(jitted, empty)

"""Restore-or-init: the state a run starts from, and its input positioned to match.

    start = restore_or_init(trainer, checkpointer, open_input, seed=0)
    start.state, start.step, start.batches, start.sample, start.position

1. Read the newest checkpoint's data position (a small JSON) and open this host's
   input there (with its saved iterator state when it has one: no replay).
2. Its first batch gives the shapes of the abstract state; restore the newest
   readable checkpoint into the mesh's shardings (model/checkpointing.py).
3. If the restored step is not the one whose position opened the input (the newest
   was damaged and moved aside), reopen the input at the restored position.
4. No checkpoint: initialise (or take params from `CheckpointConfig.restore_from`).
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import Any, Callable, Iterator, Mapping

import jax

from model.checkpointing import Checkpointer
from model.train_input import Batch, Pair, with_states
from model.trainer import Trainer, TrainState

log = logging.getLogger("tapestry.train")

OpenInput = Callable[[Mapping[str, Any] | None], Iterator[Batch]]


@dataclasses.dataclass
class Start:
    state: TrainState
    step: int
    batches: Iterator[Pair]  # (batch, iterator state) from the next batch on
    sample: Batch            # the first of them (shapes for jit)
    consumed: int            # global batches consumed before `batches`
    first_state: Any         # input state before the first batch (None: unknown)


def _first(open_input: OpenInput, position: Mapping[str, Any] | None
           ) -> tuple[Pair, Iterator[Pair], Any]:
    iterator = open_input(position)
    pairs = with_states(iterator)
    try:
        first = next(pairs)
    except StopIteration:
        raise ValueError("the training dataset yielded no batch"
                         + (f" at position {dict(position)}" if position else "")) from None
    states = (position or {}).get("iterator_states")
    before = states[jax.process_index()] if states and len(states) == jax.process_count() else None
    return first, itertools.chain([first], pairs), before


def restore_or_init(trainer: Trainer, checkpointer: Checkpointer, open_input: OpenInput,
                    seed: int, dataset_json: dict[str, Any]) -> Start:
    """See the module docstring. `open_input(position)` opens this host's batches."""
    position = checkpointer.latest_data_position()
    first, batches, before = _first(open_input, position)
    abstract, _ = trainer.abstract_state(first[0])
    restored = checkpointer.restore_latest(abstract)
    if restored is None:
        state = trainer.init_state(jax.random.key(seed),
                                   trainer.partitioner.shard_batch(first[0]))
        if checkpointer.cfg.restore_from:
            params = checkpointer.restore_params_for_finetune(abstract.params, state.params)
            state = state.replace(params=params)
        if position is not None:  # a position without a restorable step: start afresh
            first, batches, before = _first(open_input, None)
        return Start(state, 0, batches, first[0], 0, None)
    state = TrainState.from_dict(restored[0])
    restored_position = restored[1]
    if restored_position != position:
        first, batches, before = _first(open_input, restored_position)
    if restored_position.get("dataset") != dataset_json:
        log.warning("dataset config changed since the checkpoint: %s -> %s",
                    restored_position.get("dataset"), dataset_json)
    consumed = int(restored_position["train_batches_consumed"])
    log.info("resuming at step %d (data position %d%s)", int(state.step), consumed,
             ", input state restored" if before is not None else "")
    return Start(state, int(state.step), batches, first[0], consumed, before)

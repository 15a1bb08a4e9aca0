"""Decisions every process takes together, so the hosts of a job never diverge.

A multi-process job deadlocks when one host enters a collective that another skips
(one host stops for end of data, or saves a checkpoint, one step earlier). So every
decision that depends on host-local facts goes through one of these:

    stop = any_process([out_of_data, input_failed])   # elementwise OR over processes
    states = allgather_json(iterator.get_state())      # [state_p0, ..., state_pN-1]
    barrier('quarantine')                              # all hosts wait here

Each is a tiny all-gather of host numpy data over all devices
(`jax.experimental.multihost_utils`); with one process they
return at once without touching devices. Decisions that depend only on replicated
values (a step's loss for the NaN stop, the step number for eval and save cadence)
agree by construction and need none of this. Preemption uses JAX's own protocol
(`multihost_utils.reached_preemption_sync_point`, see model/checkpointing.py).
"""
from __future__ import annotations

import json
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils


def is_multiprocess() -> bool:
    return jax.process_count() > 1


def gather_flags(flags: Sequence[bool]) -> np.ndarray:
    """Every process's `flags`: bool [num_processes, len(flags)] (same on every host)."""
    local = np.asarray(flags, np.int32).reshape(1, -1)
    if not is_multiprocess():
        return local.astype(bool)
    return np.asarray(multihost_utils.process_allgather(local[0])).astype(bool)


def any_process(flags: Sequence[bool]) -> list[bool]:
    """Elementwise OR of `flags` over all processes."""
    return [bool(v) for v in gather_flags(flags).any(axis=0)]


def allgather_json(value: Any) -> list[Any]:
    """[value of process 0, ..., value of process N-1] for a small JSON-able value."""
    if not is_multiprocess():
        return [value]
    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int32(len(data)))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:len(data)] = data
    rows = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(bytes(row[:n]).decode()) for row, n in zip(rows, sizes)]


def barrier(name: str) -> None:
    """Blocks until every process reaches the barrier of this name."""
    if is_multiprocess():
        multihost_utils.sync_global_devices(name)

"""Training input: open the dataset at a checkpoint's data position; prefetch batches
with the iterator state after each of them.

The trainer calls gin's `get_dataset_fn` (see model/dataset_config.py) as

    get_dataset_fn(cfg, shard_id, num_shards, start_batch)                # fresh / fallback
    get_dataset_fn(cfg, shard_id, num_shards, start_batch, state=state)   # resume

The returned iterator MAY expose `get_state() -> dict`: a small JSON-able position
right after the batch it yielded last. With it, a checkpoint stores every host's
state (`iterator_states: [state_p0, ..., state_pN-1]`, next to
`train_batches_consumed`) and a restart with the same number of processes passes
each host its own, so the input resumes without replaying `start_batch` batches.
Without it (or with another process count, or a fn without a `state` argument), the
restart falls back to `start_batch`, with a warning when states were saved.

`Prefetcher` reads (batch, state) pairs in a background thread: `get_state()` is
called in that thread right after each `next()`, so the state always belongs to the
batch it travels with, however far the thread has read ahead.
"""
from __future__ import annotations

import inspect
import logging
import queue
import threading
from typing import Any, Callable, Iterator, Mapping

import numpy as np

Batch = dict[str, np.ndarray]
State = dict[str, Any] | None
Pair = tuple[Batch, State]

log = logging.getLogger("tapestry.train")


def accepts_state(fn: Callable[..., Any]) -> bool:
    """Whether `fn` takes a `state=` keyword (named, or through **kwargs)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "state" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD
                                    for p in params.values())


def open_dataset(get_dataset_fn: Callable[..., Iterator[Batch]], cfg: Any, shard_id: int,
                 num_shards: int, position: Mapping[str, Any] | None) -> Iterator[Batch]:
    """This host's batches from `position` (a checkpoint's data position; None: start)."""
    if position is None:
        return get_dataset_fn(cfg, shard_id, num_shards, 0)
    start = int(position["train_batches_consumed"])
    states = position.get("iterator_states")
    if states is not None:
        if len(states) != num_shards:
            log.warning("the checkpoint holds input states of %d processes, this run has %d: "
                        "replaying %d batches instead", len(states), num_shards, start)
        elif not accepts_state(get_dataset_fn):
            log.warning("get_dataset_fn takes no `state`: replaying %d batches", start)
        elif states[shard_id] is not None:
            return get_dataset_fn(cfg, shard_id, num_shards, start, state=states[shard_id])
    return get_dataset_fn(cfg, shard_id, num_shards, start)


def with_states(iterator: Iterator[Batch]) -> Iterator[Pair]:
    """(batch, iterator state right after it); the state is None without `get_state`."""
    get_state = getattr(iterator, "get_state", None)
    for batch in iterator:
        yield batch, (get_state() if callable(get_state) else None)


class Prefetcher:
    """Pulls items from an iterator in a background thread (bounded queue); an error
    raised by the iterator is raised by `next()` in its turn."""

    _DONE = object()

    def __init__(self, iterator: Iterator[Any], size: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iterator,), daemon=True)
        self._thread.start()

    def _run(self, iterator: Iterator[Any]) -> None:
        try:
            for item in iterator:
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as e:  # pylint: disable=broad-except
            self._error = e
        self._queue.put(self._DONE)

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> Any:
        item = self._queue.get()
        if item is self._DONE:
            self._queue.put(self._DONE)  # later calls end the same way
            if self._error is not None:
                raise self._error
            raise StopIteration
        return item

    def close(self) -> None:
        self._stop.set()

"""Batch iterators whose `get_state()` lets a restart continue without replaying.

`ResumableBatches` is the iterator that `seqio_input.get_dataset` and
`multimodal.get_dataset` return (the trainer's `get_dataset_fn` contract is in
model/dataset_config.py). After each `next()`, `get_state()` is the position after
the batch just yielded, a JSON dict under 4 KiB, e.g. for text:

    {"version": 1, "shard": [0, 2], "seed": 3, "batches": 5000,
     "input": {"window": <Mixture state at the window's start>, "row": 6}}

  text (LM packing, tasks/lm_packing.py): packing windows of L examples start fresh,
    so the state is the example stream's state where the current window began and
    how many of its rows were emitted. A restart reads and packs that one window.
  multimodal (tasks/packing.py): the packer's open rows after a batch hold only
    pieces of the example that closed it, so the state is the stream's state before
    that example, the index of its first unplaced piece, and the packer's counts.

The example stream and its state are tasks/resumable.py's. Restart cost is one
block (W records) + one window, whatever the step. `state=None` with
`start_batch > 0` replays (same batches, O(start_batch)). A state saved with another
host count cannot continue this host's share: it is ignored with a warning and the
share starts at its beginning (elastic restarts change the data order).
"""
from __future__ import annotations

import itertools
import logging
from typing import Any, Callable, Mapping

import numpy as np

from tasks import lm_packing, packing, resumable

log = logging.getLogger("tapestry.input")

VERSION = 1


class LMBatches:
    """Packed (or padded) LM batches of `rows` x `length` in LMFeatureConverter's layout."""

    def __init__(self, stream: resumable.Mixture, *, length: int, rows: int, pack: bool, row: int = 0):
        self._stream, self._length, self._rows, self._pack = stream, length, rows, pack
        self._window_state = stream.get_state()
        self._row = row
        self._tokens: np.ndarray | None = None
        self._positions: np.ndarray | None = None

    def get_state(self) -> dict[str, Any]:
        return {"window": self._window_state, "row": self._row}

    def _load_window(self) -> bool:
        self._window_state = self._stream.get_state()
        examples = [ex["targets"] for ex in itertools.islice(self._stream, self._length if self._pack else 1)]
        if not examples:
            return False
        if self._pack:
            self._tokens, self._positions = lm_packing.pack_window(examples, self._length)
        else:
            self._tokens, self._positions = lm_packing.pad_rows(examples, self._length), None
        return True

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        tokens, positions, need = [], [], self._rows
        while need:
            if self._tokens is None:
                if not self._load_window():
                    raise StopIteration  # the last, partial batch is dropped (as drop_remainder=True)
            if self._row >= len(self._tokens):
                self._tokens, self._row = None, 0
                continue
            take = min(need, len(self._tokens) - self._row)
            tokens.append(self._tokens[self._row:self._row + take])
            if self._positions is not None:
                positions.append(self._positions[self._row:self._row + take])
            self._row += take
            need -= take
        return lm_packing.lm_features(np.concatenate(tokens), np.concatenate(positions) if positions else None)


class MultimodalBatches:
    """The multimodal packer over a resumable stream; `counts` are the packer's."""

    def __init__(self, stream: resumable.Mixture, packer: packing.MultimodalPacker,
                 resume: Mapping[str, Any] | None = None):
        self._stream, self._packer = stream, packer
        self._before = stream.get_state()
        if resume:
            packer.counts.update(resume["counts"])
        self._state = {"at": self._before, "unit": int(resume["unit"]) if resume else 0,
                       "counts": dict(packer.counts)}
        self._batches = packer.pack(self._feed(), resume_units=int(resume["unit"]) if resume else None)

    @property
    def counts(self) -> dict[str, int]:
        return self._packer.counts

    def _feed(self):
        while True:
            self._before = self._stream.get_state()
            try:
                example = next(self._stream)
            except StopIteration:
                return
            yield example

    def get_state(self) -> dict[str, Any]:
        return self._state

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._batches)
        self._state = {"at": self._before, "unit": self._packer.pending_unit, "counts": dict(self._packer.counts)}
        return batch


class ResumableBatches:
    """Wraps LMBatches / MultimodalBatches with the envelope (version, host share, seed, count)."""

    def __init__(self, make: Callable[[Mapping[str, Any] | None, int], Any], *, shard_id: int, num_shards: int,
                 seed: int | None, start_batch: int = 0, state: Mapping[str, Any] | None = None):
        self._shard = [shard_id, num_shards]
        inner = None
        if state is not None:
            if state.get("version") != VERSION:
                raise ValueError(f"input state version {state.get('version')!r} is not {VERSION}; "
                                 "it was saved by another version of tasks/resumable_input.py")
            if list(state["shard"]) != self._shard:
                log.warning("input state was saved by host %s of %s, this is host %s of %s: the host's share "
                            "starts from its beginning (not the batches an uninterrupted run would see)",
                            *state["shard"], *self._shard)
                state, start_batch = None, 0
            else:
                seed, inner = int(state["seed"]), state["input"]
                if start_batch != int(state["batches"]):
                    log.warning("start_batch=%d but the input state is after batch %d: following the state",
                                start_batch, int(state["batches"]))
                start_batch = int(state["batches"])
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2 ** 31))
            log.info("DatasetConfig.seed is None: drew data seed %d (kept in the input state)", seed)
        self._seed, self._count = seed, start_batch
        self._it = make(inner, seed)
        if state is None and start_batch:
            log.info("no saved input state: replaying %d batches to resume", start_batch)
            for _ in range(start_batch):
                next(self._it)

    @property
    def counts(self) -> dict[str, int] | None:
        return getattr(self._it, "counts", None)

    def get_state(self) -> dict[str, Any]:
        return {"version": VERSION, "shard": self._shard, "seed": self._seed, "batches": self._count,
                "input": self._it.get_state()}

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._it)
        self._count += 1
        return batch

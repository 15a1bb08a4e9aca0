"""Example streams over SeqIO caches whose position is a small JSON dict.

How the others do it, and why this shape: Grain shuffles a global index of records
and keeps `last_seen_index` (needs random access: ArrayRecord); T5X saves the
tf.data iterator (large, opaque files per host) or pre-shuffles a "deterministic"
cache and skips (O(step)). Our caches are TFRecord (sequential, no index), so a
stream here is:

    host's files --FileCycle--> records --blocks of W, each permuted by a seeded RNG-->
    parsed records --task transform (numpy mirror of the task's post-cache
    preprocessors)--> examples --Mixture (seeded choice per slot)--> examples

and its state is where the current block began (a FileCycle cursor: byte offsets),
the block number, the record within it and the piece of that record:

    {"cursor": {...}, "block": 12, "pos": 417, "piece": 0}     (one task)
    {"slot": 90211, "tasks": {"tapestry_text": {...}, ...}}    (a mixture)

Resuming reads one block (W records) whatever the step. Shuffling is a seeded file
order per epoch, round-robin over `cycle_length` files and a permutation within
each block of W records: like SeqIO's file shuffle + interleave + buffer of W.

Tasks take part by registering their cache and transform (`register_source`);
`tasks.text` and `tasks.multimodal` register theirs. Others use SeqIO's own
pipeline (resume by replay).
"""
from __future__ import annotations

import dataclasses
import json
import zlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from tasks import record_files

Example = dict[str, np.ndarray]
# transform(parsed record, task_feature_lengths) -> the task's examples from that record
Transform = Callable[[Example, Mapping[str, int]], list[Example]]


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a task's records are (the SeqIO cache of `cache_task`) and how they become examples.

    features: the cached features to parse (None: all in the cache's info json).
    rebuild: the command that builds the cache (named in errors).
    """
    cache_task: str
    transform: Transform
    features: tuple[str, ...] | None = None
    rebuild: str = "the cache's preprocessing job"


_SOURCES: dict[str, Source] = {}


def register_source(task: str, source: Source) -> None:
    _SOURCES[task] = source


def task_rates(name: str) -> dict[str, float] | None:
    """{task: rate} of a task or mixture if every task in it has a registered source, else None."""
    if name in seqio.MixtureRegistry.names():
        mixture = seqio.get_mixture_or_task(name)
        rates = {t.name: float(mixture.get_rate(t)) for t in mixture.tasks}
    else:
        rates = {name: 1.0}
    return rates if all(t in _SOURCES for t in rates) else None


def _seed(*parts: Any) -> int:
    """A stable 32-bit seed from ints and strings (Python's hash() is salted per process)."""
    return zlib.crc32(json.dumps(parts).encode())


# ----------------------------------------------------------------- parsing
def _parse_spec(info: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """tf.io parse spec for SeqIO cache features (shapes [], [d..], [None], [None, d..])."""
    spec = {}
    for name in names:
        dtype, shape = info[name]["dtype"], list(info[name]["shape"])
        store = tf.int64 if dtype in ("int32", "int64", "bool") else tf.as_dtype(dtype)
        if shape and shape[0] is None:
            spec[name] = tf.io.RaggedFeature(store)
        else:
            spec[name] = tf.io.FixedLenFeature(shape, store)
    return spec


class _Parser:
    """Serialized tf.train.Examples -> numpy example dicts (one vectorised parse per block)."""

    def __init__(self, cache_dir: str, split: str, features: Sequence[str] | None):
        with tf.io.gfile.GFile(f"{cache_dir}/info.{split}.json") as f:
            info = json.load(f)["features"]
        names = list(info) if features is None else [n for n in features if n in info]
        missing = [n for n in (features or ()) if n not in info]
        if features is not None and "targets" in missing:
            raise ValueError(f"the cache in {cache_dir} has no 'targets' feature (has {sorted(info)})")
        self._spec = _parse_spec(info, names)
        self._info = {n: info[n] for n in names}

    def __call__(self, records: list[bytes]) -> list[Example]:
        parsed = tf.io.parse_example(tf.constant(records, tf.string), self._spec)
        columns = {}
        for name, value in parsed.items():
            dtype, shape = self._info[name]["dtype"], list(self._info[name]["shape"])
            np_dtype = object if dtype == "string" else np.dtype(dtype)
            if isinstance(value, tf.RaggedTensor):
                values, splits = value.values.numpy().astype(np_dtype), value.row_splits.numpy()
                tail = [d for d in shape[1:]]
                columns[name] = [values[splits[i]:splits[i + 1]].reshape([-1] + tail) for i in range(len(records))]
            else:
                columns[name] = list(value.numpy().astype(np_dtype))
        return [{name: col[i] for name, col in columns.items()} for i in range(len(records))]


# ----------------------------------------------------------------- streams
class TaskStream:
    """One task's examples on this host, endless (or `num_epochs` passes); see module doc."""

    def __init__(self, task: str, split: str, lengths: Mapping[str, int], *, shard_id: int, num_shards: int,
                 seed: int, shuffle: bool, block_size: int = 1000, cycle_length: int = 4,
                 num_epochs: int | None = None, state: Mapping[str, Any] | None = None):
        if block_size < 1:
            raise ValueError(f"shuffle block size (shuffle_buffer_size) must be >= 1, got {block_size}")
        source = _SOURCES[task]
        cache_dir = seqio.get_mixture_or_task(source.cache_task).cache_dir
        if cache_dir is None:
            raise FileNotFoundError(f"no cache of {source.cache_task!r} in SeqIO's cache dirs "
                                    f"{seqio.get_global_cache_dirs()}; build it with {source.rebuild}")
        files = record_files.host_files(record_files.cache_files(cache_dir, split), shard_id, num_shards,
                                        source.rebuild)
        self.task, self._lengths, self._transform = task, dict(lengths), source.transform
        self._parse = _Parser(cache_dir, split, source.features)
        self._seed, self._shuffle, self._block_size = _seed(seed, task, shard_id), shuffle, block_size
        self._cycle = record_files.FileCycle(files, seed=self._seed, shuffle=shuffle, cycle_length=cycle_length,
                                             num_epochs=num_epochs, cursor=state["cursor"] if state else None)
        self._start = self._cycle.cursor()
        self._blockno, self._pos, self._piece = (int(state[k]) for k in ("block", "pos", "piece")) if state \
            else (0, 0, 0)
        self._block: list[Example] | None = None
        self._pieces: list[Example] | None = None

    def get_state(self) -> dict[str, Any]:
        """The position of the next example."""
        return {"cursor": self._start, "block": self._blockno, "pos": self._pos, "piece": self._piece}

    def _load_block(self) -> None:
        records = []
        while len(records) < self._block_size:
            record = self._cycle.read()
            if record is None:
                break
            records.append(record)
        parsed = self._parse(records) if records else []
        if self._shuffle:
            order = np.random.default_rng([self._seed, self._blockno]).permutation(len(parsed))
            parsed = [parsed[i] for i in order]
        self._block = parsed

    def __iter__(self):
        return self

    def __next__(self) -> Example:
        while True:
            if self._block is None:
                self._load_block()
                if not self._block:
                    raise StopIteration
            if self._pos >= len(self._block):
                self._start, self._blockno, self._pos, self._piece = self._cycle.cursor(), self._blockno + 1, 0, 0
                self._block = None
                continue
            if self._pieces is None:
                self._pieces = self._transform(self._block[self._pos], self._lengths)
            if self._piece >= len(self._pieces):
                self._pos, self._piece, self._pieces = self._pos + 1, 0, None
                continue
            self._piece += 1
            return self._pieces[self._piece - 1]


class Mixture:
    """Examples drawn from several streams with fixed rates: slot i's task is a seeded draw,
    so the choice sequence is a pure function of (seed, slot). Stops when a chosen stream ends."""

    _CHUNK = 4096

    def __init__(self, streams: Mapping[str, TaskStream], rates: Mapping[str, float], *, seed: int,
                 slot: int = 0):
        self._names = sorted(streams)
        self._streams = dict(streams)
        p = np.array([rates[n] for n in self._names], np.float64)
        self._p, self._seed, self._slot = p / p.sum(), seed, slot
        self._chunk_index, self._choices = -1, np.zeros(0, np.int64)

    def get_state(self) -> dict[str, Any]:
        return {"slot": self._slot, "tasks": {n: s.get_state() for n, s in self._streams.items()}}

    def _choice(self) -> str:
        if len(self._names) == 1:
            return self._names[0]
        chunk, i = divmod(self._slot, self._CHUNK)
        if chunk != self._chunk_index:
            rng = np.random.default_rng([self._seed, chunk])
            self._choices, self._chunk_index = rng.choice(len(self._names), size=self._CHUNK, p=self._p), chunk
        return self._names[self._choices[i]]

    def __iter__(self):
        return self

    def __next__(self) -> Example:
        example = next(self._streams[self._choice()])
        self._slot += 1
        return example


def mixture_stream(name: str, split: str, lengths: Mapping[str, int], *, shard_id: int, num_shards: int,
                   seed: int, shuffle: bool, state: Mapping[str, Any] | None = None, **stream_kw) -> Mixture:
    """The examples of a task or mixture whose tasks all have sources (task_rates(name) is not None)."""
    rates = task_rates(name)
    if rates is None:
        raise ValueError(f"{name!r} has tasks without a resumable source; registered: {sorted(_SOURCES)}")
    tasks_state = (state or {}).get("tasks", {})
    streams = {t: TaskStream(t, split, lengths, shard_id=shard_id, num_shards=num_shards, seed=seed,
                             shuffle=shuffle, state=tasks_state.get(t), **stream_kw) for t in rates}
    return Mixture(streams, rates, seed=_seed(seed, name, shard_id), slot=int((state or {}).get("slot", 0)))

"""`DatasetConfig`: what the trainer asks of a `get_dataset_fn` (T5X's pattern).

The trainer never imports the data side. gin binds `train.get_dataset_fn` to a
function (from `tasks/`, or `model.synthetic_data` on hosts with only JAX) with the
signature

    get_dataset_fn(cfg: DatasetConfig, shard_id: int, num_shards: int,
                   start_batch: int, *, state: dict | None = None) -> Iterator[dict[str, np.ndarray]]

yielding `cfg.batch_size // num_shards` rows per batch (this host's share, shard_id =
jax.process_index()), deterministic for a given `cfg.seed`, starting after batch
`start_batch` (resume).

Resume without replay: the returned iterator MAY have `get_state() -> dict`, the
position after the batch most recently yielded (JSON-able, < 4 KiB). The trainer
calls it right after each `next()` (in the thread that calls `next()`, so a
prefetcher must carry (batch, state) pairs), saves every host's state with the
checkpoint, and on restart passes this host's last state as `state=` together with
`start_batch`; the iterator then continues with the batches an uninterrupted run
would have seen, in time independent of the step. With `state=None`, `start_batch`
batches are skipped (replayed; O(start_batch)). Implementations: tasks/seqio_input.py,
tasks/multimodal.py (tasks/resumable_input.py), model/synthetic_data.py (O(1) skip).

Per-host data is only right while each host's devices hold rows of their own:
`check_host_data_sharding(mesh)` says so before training (see its docstring).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping

import gin
import numpy as np

Batch = dict[str, np.ndarray]
GetDatasetFn = Callable[..., Iterator[Batch]]  # (cfg, shard_id, num_shards, start_batch, *, state=None)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """Which data to read and how (field names as in T5X's `utils.DatasetConfig`).

    Attributes:
      mixture_or_task_name: a registered SeqIO task/mixture (or any name your
        get_dataset_fn understands, e.g. 'synthetic').
      task_feature_lengths: e.g. {'targets': 512}.
      split: 'train', 'validation', ...
      batch_size: global batch size (all hosts together).
      shuffle: shuffle examples (train) or not (eval).
      seed: data seed; the same seed gives the same batches.
      use_cached: read the preprocessed SeqIO cache.
      pack: pack several examples per row (segment ids / positions).
    """
    mixture_or_task_name: str
    task_feature_lengths: Mapping[str, int]
    split: str = "train"
    batch_size: int = 8
    shuffle: bool = True
    seed: int | None = 0
    use_cached: bool = False
    pack: bool = True

    def __post_init__(self):
        if self.batch_size <= 0:
            raise ValueError(f"DatasetConfig.batch_size={self.batch_size} must be positive")
        if not self.task_feature_lengths:
            raise ValueError("DatasetConfig.task_feature_lengths is empty; set e.g. "
                             "TASK_FEATURE_LENGTHS = {'targets': 512}")

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["task_feature_lengths"] = dict(self.task_feature_lengths)
        return out


def target_length(cfg: DatasetConfig) -> int:
    """The decoder length: task_feature_lengths['targets'] (+ 'inputs' if present)."""
    lengths = dict(cfg.task_feature_lengths)
    if "targets" not in lengths:
        raise ValueError(f"task_feature_lengths={lengths} needs a 'targets' entry")
    return int(lengths["targets"]) + int(lengths.get("inputs", 0))


def check_host_data_sharding(mesh: Any, batch_axes: tuple[str, ...] = ("data", "expert")) -> None:
    """Raises ValueError unless per-host data sharding is valid on `mesh` (a jax Mesh).

    Each host reads only its own `batch_size // process_count` rows, so the devices
    of one host must together hold whole batch shards that no other host holds: no
    mesh axis outside `batch_axes` (the axes the batch dimension is split over) may
    span hosts. E.g. 2 hosts x 4 devices, axes (data, expert, model): (8, 1, 1) and
    (2, 2, 2) with each host one data index are fine; (1, 1, 8) puts 'model' across
    both hosts, which would then need the same rows. Call it with the trainer's mesh
    (`check_host_data_sharding(partitioner.mesh)`) before reading data.
    """
    names = list(mesh.axis_names)
    unknown = [a for a in batch_axes if a not in names]
    if unknown:
        raise ValueError(f"batch axes {unknown} are not mesh axes {names}")
    procs = np.vectorize(lambda d: d.process_index, otypes=[np.int64])(np.asarray(mesh.devices))
    if len(np.unique(procs)) == 1:
        return
    shape = dict(zip(names, procs.shape))
    for axis in names:
        if axis in batch_axes:
            continue
        i = names.index(axis)
        if (procs != np.take(procs, [0], axis=i)).any():
            raise ValueError(
                f"mesh axis {axis!r} (size {shape[axis]}) spans several hosts in mesh {shape}: hosts would need "
                f"the same batch rows, but each reads only its own share (shard_id = process_index). Lay out "
                f"the mesh so that only {list(batch_axes)} cross hosts (e.g. put every host's devices on one "
                f"'data' index).")
    order = [names.index(a) for a in batch_axes] + [names.index(a) for a in names if a not in batch_axes]
    per_shard = np.transpose(procs, order).reshape(int(np.prod([shape[a] for a in batch_axes])), -1)[:, 0]
    counts = np.bincount(per_shard)
    if len(set(counts[counts > 0])) > 1:
        raise ValueError(f"hosts hold unequal numbers of batch shards {counts.tolist()} in mesh {shape}; "
                         "each host reads batch_size // process_count rows")

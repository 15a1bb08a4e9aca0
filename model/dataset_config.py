"""`DatasetConfig`: what the trainer asks of a `get_dataset_fn` (T5X's pattern).

The trainer never imports the data side. gin binds `train.get_dataset_fn` to a
function (from `tasks/`, or `model.synthetic_data` on hosts with only JAX) with the
signature

    get_dataset_fn(cfg: DatasetConfig, shard_id: int, num_shards: int,
                   start_batch: int) -> Iterator[dict[str, np.ndarray]]

yielding `cfg.batch_size // num_shards` rows per batch (this host's share),
deterministic for a given `cfg.seed`, skipping the first `start_batch` batches (resume).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping

import gin
import numpy as np

Batch = dict[str, np.ndarray]
GetDatasetFn = Callable[["DatasetConfig", int, int, int], Iterator[Batch]]


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

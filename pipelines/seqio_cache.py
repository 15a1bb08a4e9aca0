"""Writing a PCollection of examples in SeqIO's offline-cache layout.

    <cache_dir>/<task dir>/<split>.tfrecord-00000-of-00032   tf.train.Example per example
    <cache_dir>/<task dir>/info.<split>.json                  feature shapes and dtypes
    <cache_dir>/<task dir>/stats.<split>.json                 counts (examples, tokens, extras)
    <cache_dir>/<task dir>/COMPLETED                          written last

so that `seqio.get_mixture_or_task(task).get_dataset(split=..., use_cached=True)`
reads it (the task's dir is its name with ':' as '/', as SeqIO does).

Shards: a fixed count (DEFAULT_NUM_SHARDS = 32, at least as many as the training
hosts that split the files between them), examples assigned by a hash of their
`source_id` and sorted inside each shard, so a rebuilt cache holds the same
examples in the same order (pipelines/shard_writer.py). A rewrite replaces a
split as a whole: COMPLETED is removed, the split's old shards (any count) are
deleted, the new ones moved in from a temporary directory, then info, stats and
COMPLETED are written.

Feature specs are declared by the caller rather than inferred from one sampled
example (SeqIO's GetInfo does that, and gets variable-size media wrong):

    features = {
        "targets": FeatureSpec("int32", [None]),          # token ids, variable length
        "targets_pretokenized": FeatureSpec("string", []),
        "image_bytes": FeatureSpec("string", [None]),     # one raw uint8 buffer per image
    }

An example is a dict of those names to numpy arrays, lists, bytes or str. Stats
hold `examples`, `<f>_tokens` and `<f>_max_tokens` for each token feature, plus
the sums of whatever numbers `extra_stats(example)` returns (media items, media
seconds, placeholder tokens, ...).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Mapping, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from pipelines import shard_writer, tf_example

SEQIO_VERSION_TAG = "0.0.20"  # info.json "seqio_version": dtypes are stored as declared.

_INT_DTYPES = ("int32", "int64", "bool")
_FLOAT_DTYPES = ("float32",)
_DTYPES = _INT_DTYPES + _FLOAT_DTYPES + ("string",)
DEFAULT_NUM_SHARDS = 32  # >= a typical number of training hosts, each of which reads its own files


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """dtype: one of int32, int64, bool, float32, string. shape: [] for a scalar,
    [None] for a variable-length vector, [None, d, ...] for variable rows of fixed width."""

    dtype: str
    shape: Sequence[int | None] = (None,)

    def __post_init__(self):
        if self.dtype not in _DTYPES:
            raise ValueError(f"FeatureSpec dtype {self.dtype!r} is not one of {_DTYPES}")
        if any(d is None for d in list(self.shape)[1:]):
            raise ValueError(
                f"FeatureSpec shape {list(self.shape)}: only the first dimension may be None; "
                "store variable-size media as bytes plus a shape feature"
            )


def task_cache_dir(cache_dir: str, task_name: str) -> str:
    return FileSystems.join(cache_dir, *task_name.split(":"))


def to_tf_example(example: Mapping[str, Any], features: Mapping[str, FeatureSpec]) -> bytes:
    """Serialises one example as a tf.train.Example with the declared features."""
    proto = tf_example.example_class()()
    missing = set(features) - set(example)
    if missing:
        raise KeyError(f"example lacks declared features {sorted(missing)}")
    for name, spec in features.items():
        value = example[name]
        feature = proto.features.feature[name]
        if spec.dtype == "string":
            values = [value] if isinstance(value, (bytes, str)) else list(value)
            feature.bytes_list.value.extend(v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values)
        elif spec.dtype in _INT_DTYPES:
            feature.int64_list.value.extend(_flat_ints(value))
        else:
            feature.float_list.value.extend(np.asarray(value, dtype=np.float32).reshape(-1).tolist())
    return proto.SerializeToString(deterministic=True)  # sorted map keys: identical bytes in every process


def _is_id_list(value) -> bool:
    """A flat list of Python ints (token ids), used as is: no numpy round trip."""
    return isinstance(value, list) and (not value or type(value[0]) is int)


def _flat_ints(value) -> list[int]:
    return value if _is_id_list(value) else np.asarray(value, dtype=np.int64).reshape(-1).tolist()


def _example_stats(
    example: Mapping[str, Any],
    token_features: Sequence[str],
    extra_stats: Callable[[Mapping[str, Any]], Mapping[str, float]] | None,
) -> dict[str, float]:
    stats = {"examples": 1}
    for name in token_features:
        value = example[name]
        stats[f"{name}_tokens"] = len(value) if _is_id_list(value) else int(np.size(value))
    if extra_stats is not None:
        stats.update(extra_stats(example))
    return stats


class _SumAndMaxStats(beam.CombineFn):
    """Sums every stat; keeps the max of `<f>_tokens` as `<f>_max_tokens`."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, stats):
        for key, value in stats.items():
            acc[key] = acc.get(key, 0) + value
            if key.endswith("_tokens") and key != "examples":
                max_key = key[: -len("_tokens")] + "_max_tokens"
                acc[max_key] = max(acc.get(max_key, 0), value)
        return acc

    def merge_accumulators(self, accs):
        merged = {}
        for acc in accs:
            for key, value in acc.items():
                if key.endswith("_max_tokens"):
                    merged[key] = max(merged.get(key, 0), value)
                else:
                    merged[key] = merged.get(key, 0) + value
        return merged

    def extract_output(self, acc):
        return acc


def _write_text(path: str, text: str) -> None:
    with FileSystems.create(path) as f:
        f.write(text.encode("utf-8"))


class WriteSeqioCache(beam.PTransform):
    """PCollection[dict example] -> SeqIO cache files for one task and split.

    Returns a PCollection with one element, the stats dict, once COMPLETED is
    written. Several splits of one task may be written by one pipeline; COMPLETED
    is written by each (it only marks the task dir as usable).
    """

    def __init__(
        self,
        cache_dir: str,
        task_name: str,
        split: str,
        features: Mapping[str, FeatureSpec],
        *,
        num_shards: int = DEFAULT_NUM_SHARDS,
        token_features: Sequence[str] = ("targets",),
        extra_stats: Callable[[Mapping[str, Any]], Mapping[str, float]] | None = None,
        key_feature: str = "source_id",
    ):
        super().__init__()
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1 (default {DEFAULT_NUM_SHARDS}); got {num_shards}")
        unknown = set(token_features) - set(features)
        if unknown:
            raise ValueError(f"token_features {sorted(unknown)} are not declared in features")
        if key_feature not in features:
            raise ValueError(f"key_feature {key_feature!r} is not declared in features")
        self._dir = task_cache_dir(cache_dir, task_name)
        self._split = split
        self._features = dict(features)
        self._num_shards = num_shards
        self._token_features = tuple(token_features)
        self._extra_stats = extra_stats
        self._key = key_feature
        self._shards = shard_writer.WriteShards(
            FileSystems.join(self._dir, f"{split}.tfrecord"), num_shards, fmt="tfrecord", commit=False)

    def info(self) -> dict:
        return {
            "num_shards": self._num_shards,
            "features": {
                name: {"shape": list(spec.shape), "dtype": spec.dtype}
                for name, spec in self._features.items()
            },
            "seqio_version": SEQIO_VERSION_TAG,
        }

    def expand(self, examples):
        features, split, task_dir, key = self._features, self._split, self._dir, self._key
        written = (
            examples
            | "Serialize" >> beam.Map(lambda ex: (_key_text(ex[key]), to_tf_example(ex, features)))
            | "WriteShards" >> self._shards
        )
        stats = (
            examples
            | "ExampleStats" >> beam.Map(_example_stats, self._token_features, self._extra_stats)
            | "SumStats" >> beam.CombineGlobally(_SumAndMaxStats())
        )
        info, shards = self.info(), self._shards

        def finalize(temp_files, stats):
            stats = {"examples": 0, **stats}
            completed = FileSystems.join(task_dir, "COMPLETED")
            if FileSystems.exists(completed):  # no reader may take a half-replaced split for a cache
                FileSystems.delete([completed])
            shards.commit(temp_files)
            _write_text(FileSystems.join(task_dir, f"info.{split}.json"), json.dumps(info, indent=2))
            _write_text(FileSystems.join(task_dir, f"stats.{split}.json"), json.dumps(stats, indent=2))
            _write_text(completed, "")
            return stats

        return written | "Finalize" >> beam.Map(finalize, stats=beam.pvalue.AsSingleton(stats))


def _key_text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

"""SeqIO -> numpy batches for the trainer (T5X's `get_dataset` pattern).

The trainer never imports this module: a gin file binds it,

    import tasks.seqio_input
    train.get_dataset_fn = @seqio_input.get_dataset
    seqio_input.get_dataset.cache_dirs = [%CACHE_DIR]

and calls `get_dataset_fn(cfg, shard_id, num_shards, start_batch)`, where `cfg`
is the trainer's DatasetConfig (mixture_or_task_name, task_feature_lengths,
split, batch_size, shuffle, seed, use_cached, pack). Each call yields this
host's `batch_size // num_shards` rows per batch, packed in SeqIO's decoder
layout (LMFeatureConverter), e.g. with pack=True and length 8:

    decoder_target_tokens  [[ 41,  7,  1, 93, 12,  5,  1,  0], ...]   int32 [B, L]
    decoder_input_tokens   [[  0, 41,  7,  0, 93, 12,  5,  0], ...]
    decoder_loss_weights   [[  1,  1,  1,  1,  1,  1,  1,  0], ...]
    decoder_segment_ids    [[  1,  1,  1,  2,  2,  2,  2,  0], ...]
    decoder_positions      [[  0,  1,  2,  0,  1,  2,  3,  0], ...]

The order is a pure function of (seed, shard). Tasks with a resumable source
(every `tasks.text` task, and mixtures of them) are read by tasks/resumable.py:
each host reads only its whole files of the cache (files shard_id, shard_id +
num_shards, ...; fewer files than hosts is an error naming the rebuild flag), and
the iterator's `get_state()` (after each batch) passed back as `state=` resumes in
constant time with the batches an uninterrupted run would see (see
tasks/resumable_input.py). Without a state, `start_batch` batches are replayed.
Other tasks go through SeqIO's own pipeline (replay on resume; no get_state).
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Mapping, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from tasks import resumable, resumable_input, text  # noqa: F401  (text registers the text tasks)

log = logging.getLogger("tapestry.input")

# Keep TensorFlow off accelerators: it only feeds numpy to JAX.
tf.config.set_visible_devices([], "GPU")


def check_source(cfg: Any, num_shards: int, cache_dirs: Sequence[str] = ()) -> None:
    """Adds `cache_dirs` to SeqIO's and checks that the task or mixture is registered
    (naming the closest names) and that the batch splits evenly over the data shards."""
    if cache_dirs:
        seqio.add_global_cache_dirs(list(cache_dirs))
    name = cfg.mixture_or_task_name
    names = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
    if name not in names:
        import difflib  # pylint: disable=g-import-not-at-top

        close = difflib.get_close_matches(name, sorted(names), n=3)
        raise ValueError(f"MIXTURE_OR_TASK_NAME {name!r} is not registered; did you mean {close}? "
                         f"Registered: {sorted(names)}")
    if cfg.batch_size % num_shards:
        raise ValueError(f"Batch size ({cfg.batch_size}) must be divisible by number of data shards ({num_shards})")


@gin.configurable(module="seqio_input")
def get_dataset(cfg: Any, shard_id: int = 0, num_shards: int = 1, start_batch: int = 0, *,
                state: Mapping[str, Any] | None = None, cache_dirs: Sequence[str] = (),
                num_epochs: int | None = None, shuffle_buffer_size: int = 1000, cycle_length: int = 4,
                resumable_input_enabled: bool = True) -> Iterator[dict[str, np.ndarray]]:
    """Yields numpy batches of `cfg.batch_size // num_shards` rows (see module doc).

    shuffle_buffer_size: records per shuffled block (W); cycle_length: files read
    round-robin. resumable_input_enabled=False forces SeqIO's pipeline (replay on resume).
    """
    check_source(cfg, num_shards, cache_dirs)
    name = cfg.mixture_or_task_name
    if resumable_input_enabled and cfg.use_cached and resumable.task_rates(name) is not None:
        lengths = dict(cfg.task_feature_lengths)

        def make(inner, seed):
            stream = resumable.mixture_stream(
                name, cfg.split, lengths, shard_id=shard_id, num_shards=num_shards, seed=seed, shuffle=cfg.shuffle,
                state=inner["window"] if inner else None, block_size=shuffle_buffer_size,
                cycle_length=cycle_length, num_epochs=num_epochs)
            return resumable_input.LMBatches(stream, length=lengths["targets"], rows=cfg.batch_size // num_shards,
                                             pack=cfg.pack, row=int(inner["row"]) if inner else 0)

        return resumable_input.ResumableBatches(make, shard_id=shard_id, num_shards=num_shards, seed=cfg.seed,
                                                start_batch=start_batch, state=state)
    if state is not None:
        log.warning("%s has no resumable source: ignoring the input state, replaying %d batches", name, start_batch)
    return _seqio_batches(cfg, shard_id, num_shards, start_batch, num_epochs)


def _seqio_batches(cfg: Any, shard_id: int, num_shards: int, start_batch: int,
                   num_epochs: int | None) -> Iterator[dict[str, np.ndarray]]:
    """SeqIO's own pipeline (LMFeatureConverter); `start_batch` batches are skipped (replayed)."""
    ds = seqio.get_dataset(
        cfg.mixture_or_task_name,
        task_feature_lengths=dict(cfg.task_feature_lengths),
        dataset_split=cfg.split,
        shuffle=cfg.shuffle,
        num_epochs=num_epochs,
        feature_converter=seqio.LMFeatureConverter(pack=cfg.pack),
        shard_info=seqio.ShardInfo(index=shard_id, num_shards=num_shards),
        use_cached=cfg.use_cached,
        seed=cfg.seed,
    )
    ds = ds.batch(cfg.batch_size // num_shards, drop_remainder=True).skip(start_batch)
    for batch in ds.prefetch(2).as_numpy_iterator():
        yield {k: v.astype(np.int32) for k, v in batch.items()}

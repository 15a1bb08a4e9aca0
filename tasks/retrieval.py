"""RETRO rows with precomputed neighbours: the `tapestry_retro` task and its batches.

A cached example (written by `python -m pipelines.retrieval.neighbours`):

    {"targets": [0?, 1051, 304, ..., 88],          # int32 window of <= L + 1 tokens (no EOS)
     "retrieved_neighbours": [...],                 # int32 [C * K * R], row-major [C, K, R]
     "source_id": "11-0.txt#3"}

`get_dataset` (bound in gin, like tasks/seqio_input.py) turns each window into one
unpacked row (rows are never packed: chunk boundaries must stay where the neighbours
were computed) plus the neighbours:

    decoder_input_tokens   window[:-1]  0-padded to L        int32 [B, L]
    decoder_target_tokens  window[1:]   0-padded to L        int32 [B, L]
    decoder_loss_weights   1 on real targets                 int32 [B, L]
    decoder_segment_ids    1 on real inputs                  int32 [B, L]
    decoder_positions      0..L-1                            int32 [B, L]
    retrieved_neighbours   [B, C, K, R]                      int32 (model/nn/retro.py's key)

    train.get_dataset_fn = @retrieval.get_dataset
    retrieval.get_dataset.cache_dirs = [%CACHE_DIR]
    retrieval.get_dataset.num_neighbours = 2
    retrieval.get_dataset.chunk_len = 64

`retrieval=False` drops the neighbours (the same rows for the no-retrieval baseline).
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from tasks import vocabulary

RETRO_TASK = "tapestry_retro"
NEIGHBOURS = "retrieved_neighbours"


def _not_cached(split: str, shuffle_files: bool, seed=None):
    del shuffle_files, seed
    raise FileNotFoundError(
        f"split {split!r} of a RETRO task exists only as a cache: build it with "
        "`python -m pipelines.retrieval.neighbours --input=... --db_dir=DB --cache_dir=DIR`")


def register_retro_task(name: str = RETRO_TASK) -> None:
    """Registers a RETRO task over a pipelines.retrieval.neighbours cache (idempotent)."""
    if name in seqio.TaskRegistry.names():
        return
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(_not_cached, splits=["train", "validation", "test"]),
        preprocessors=[seqio.CacheDatasetPlaceholder(required=True)],
        output_features={
            "targets": seqio.Feature(vocabulary.get_vocabulary(), add_eos=False, dtype=tf.int32),
            NEIGHBOURS: seqio.Feature(seqio.PassThroughVocabulary(size=0), add_eos=False,
                                      dtype=tf.int32),
        })


register_retro_task()


def to_row(example: dict[str, np.ndarray], seq_len: int, chunk_len: int, num_neighbours: int
           ) -> dict[str, np.ndarray]:
    """One cached example -> one row of the batch contract (see the module doc)."""
    window = np.asarray(example["targets"], np.int32)[:seq_len + 1]
    n = len(window) - 1
    row = {k: np.zeros(seq_len, np.int32) for k in (
        "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights", "decoder_segment_ids")}
    row["decoder_input_tokens"][:n] = window[:-1]
    row["decoder_target_tokens"][:n] = window[1:]
    row["decoder_loss_weights"][:n] = 1
    row["decoder_segment_ids"][:n] = 1
    row["decoder_positions"] = np.arange(seq_len, dtype=np.int32)
    c = seq_len // chunk_len
    flat = np.asarray(example[NEIGHBOURS], np.int32)
    if flat.size % (c * num_neighbours):
        raise ValueError(f"{NEIGHBOURS} has {flat.size} ids, not a multiple of C*K={c * num_neighbours} "
                         f"(seq_len={seq_len}, chunk_len={chunk_len}, num_neighbours={num_neighbours}): "
                         "rebuild the cache with matching --seq_len / --num_neighbours")
    row[NEIGHBOURS] = flat.reshape(c, num_neighbours, -1)
    return row


def examples(name: str, split: str, *, shuffle: bool = False, seed: int | None = None,
             shard_id: int = 0, num_shards: int = 1, num_epochs: int | None = 1
             ) -> Iterator[dict[str, np.ndarray]]:
    """The cached examples of a RETRO task as numpy dicts."""
    task = seqio.get_mixture_or_task(name)
    ds = task.get_dataset(sequence_length=None, split=split, use_cached=True, shuffle=shuffle,
                          seed=seed, shard_info=seqio.ShardInfo(shard_id, num_shards),
                          num_epochs=num_epochs)
    yield from ds.as_numpy_iterator()


@gin.configurable(module="retrieval")
def get_dataset(cfg: Any, shard_id: int = 0, num_shards: int = 1, start_batch: int = 0, *,
                cache_dirs: Sequence[str] = (), chunk_len: int = 64, num_neighbours: int = 2,
                retrieval: bool = True, num_epochs: int | None = None
                ) -> Iterator[dict[str, np.ndarray]]:
    """Batches of `cfg.batch_size // num_shards` unpacked rows with neighbours
    (`start_batch` batches replayed on resume)."""
    if cache_dirs:
        seqio.add_global_cache_dirs(list(cache_dirs))
    seq_len = int(dict(cfg.task_feature_lengths)["targets"])
    if seq_len % chunk_len:
        raise ValueError(f"TASK_FEATURE_LENGTHS['targets']={seq_len} must be a multiple of "
                         f"retrieval.get_dataset.chunk_len={chunk_len}")
    rows = cfg.batch_size // num_shards
    batch, produced = [], 0
    for ex in examples(cfg.mixture_or_task_name, cfg.split, shuffle=cfg.shuffle, seed=cfg.seed,
                       shard_id=shard_id, num_shards=num_shards, num_epochs=num_epochs):
        batch.append(to_row(ex, seq_len, chunk_len, num_neighbours))
        if len(batch) == rows:
            produced += 1
            if produced > start_batch:
                out = {k: np.stack([r[k] for r in batch]) for k in batch[0]}
                if not retrieval:
                    del out[NEIGHBOURS]
                yield out
            batch = []

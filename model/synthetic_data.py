"""Deterministic synthetic batches in the model-batch contract, needing only numpy.

Lets the trainer, its tests and its benchmarks run on a host with only JAX: bind

    train.get_dataset_fn = @model.synthetic_data.synthetic_dataset_fn
    synthetic_dataset_fn.vocab_size = 8192

Each row packs documents (`cfg.pack`) or holds one. A document is a random motif of
2..`max_motif` text ids repeated to the document's length, then EOS, so a model can
learn it (loss falls from ln(vocab) towards the motif entropy). Example row, L=12:

    decoder_target_tokens  [ 40 77 40 77 40  1 | 91 23 55 91 23  1 ]  (then 0 padding)
    decoder_input_tokens   [  0 40 77 40 77 40 |  0 91 23 55 91 23 ]
    decoder_segment_ids    [  1  1  1  1  1  1 |  2  2  2  2  2  2 ]
    decoder_positions      [  0  1  2  3  4  5 |  0  1  2  3  4  5 ]
    decoder_loss_weights   [  1  1  1  1  1  1 |  1  1  1  1  1  1 ]

Row r of global batch b depends only on (seed, split, b, r), so the global batch is
the same for any number of shards, and `start_batch` skips batches in O(1).
"""
from __future__ import annotations

import zlib
from typing import Iterator

import gin
import numpy as np

from model.dataset_config import Batch, DatasetConfig, target_length

EOS_ID = 1
FIRST_TEXT_ID = 19  # reserved ids 0..18 (pipelines/special_tokens.py); text from here


def _row(rng: np.random.Generator, length: int, vocab_size: int, pack: bool,
         min_doc: int, max_motif: int) -> dict[str, np.ndarray]:
    targets = np.zeros(length, np.int32)
    inputs = np.zeros(length, np.int32)
    segments = np.zeros(length, np.int32)
    positions = np.zeros(length, np.int32)
    start, seg = 0, 0
    while start < length:
        remaining = length - start
        if pack:
            if remaining < min_doc:
                break
            doc_len = int(rng.integers(min_doc, max(min_doc, length // 2) + 1))
            doc_len = min(doc_len, remaining)
        else:
            doc_len = int(rng.integers(min(min_doc, length), length + 1))
        motif = rng.integers(FIRST_TEXT_ID, vocab_size, size=int(rng.integers(2, max_motif + 1)))
        doc = np.resize(motif, doc_len).astype(np.int32)
        doc[-1] = EOS_ID
        seg += 1
        end = start + doc_len
        targets[start:end] = doc
        inputs[start + 1:end] = doc[:-1]
        segments[start:end] = seg
        positions[start:end] = np.arange(doc_len)
        start = end
        if not pack:
            break
    return {"decoder_target_tokens": targets, "decoder_input_tokens": inputs,
            "decoder_segment_ids": segments, "decoder_positions": positions,
            "decoder_loss_weights": (segments > 0).astype(np.float32)}


@gin.configurable
def synthetic_dataset_fn(cfg: DatasetConfig, shard_id: int, num_shards: int,
                         start_batch: int, *, vocab_size: int = 8192, min_doc: int = 8,
                         max_motif: int = 6,
                         num_batches: int | None = None) -> Iterator[Batch]:
    """Yields this shard's rows of synthetic batch `start_batch`, `start_batch + 1`, ...

    Args:
      cfg: batch_size (global), task_feature_lengths['targets'], seed, split, pack.
      shard_id, num_shards: this host's slice of every global batch.
      start_batch: first global batch index to yield (resume).
      vocab_size: ids are drawn from [19, vocab_size).
      num_batches: stop after this many batches in total (None: endless).
    """
    if cfg.batch_size % num_shards:
        raise ValueError(f"batch_size={cfg.batch_size} is not divisible by "
                         f"num_shards={num_shards}")
    if vocab_size <= FIRST_TEXT_ID + 1:
        raise ValueError(f"vocab_size={vocab_size} must exceed {FIRST_TEXT_ID + 1}")
    length = target_length(cfg)
    per_shard = cfg.batch_size // num_shards
    split_key = zlib.crc32(cfg.split.encode())
    seed = 0 if cfg.seed is None else int(cfg.seed)
    index = start_batch
    while num_batches is None or index < num_batches:
        rows = []
        for r in range(shard_id * per_shard, (shard_id + 1) * per_shard):
            rng = np.random.default_rng([seed, split_key, index, r])
            rows.append(_row(rng, length, vocab_size, cfg.pack, min_doc, max_motif))
        yield {k: np.stack([row[k] for row in rows]) for k in rows[0]}
        index += 1

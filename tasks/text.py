"""Text language-modelling tasks over caches written by `pipelines.preprocess_text`.

A cached example (one chunk of a document):

    {"targets": [1051, 304, 2270, ...],            # int32 token ids, no EOS
     "targets_pretokenized": "Alice was beginning to get very tired ...",
     "source_id": "11-0.txt#3", "source_path": ".../gutenberg/11-0.txt"}

After the cache, `split_tokens` cuts `targets` into rows of the requested
length less one and EOS is appended, so a long chunk becomes several full rows
instead of one row and a discarded tail.

Registered here: `tapestry_text` (splits `train`, `validation`). Its cache must
exist in one of SeqIO's global cache dirs (`seqio_input.get_dataset(cache_dirs=...)`
adds them); without it, reading fails with the command that builds it.
"""

from __future__ import annotations

import numpy as np
import seqio
import tensorflow as tf

from pipelines import special_tokens
from tasks import resumable, vocabulary

TEXT_TASK = "tapestry_text"


def _not_cached(split: str, shuffle_files: bool, seed=None):
    del shuffle_files, seed
    raise FileNotFoundError(
        f"split {split!r} of this task is only available from its offline cache; build it with "
        "`python -m pipelines.preprocess_text --input=... --cache_dir=DIR` and pass DIR as a cache dir")


def split_tokens(dataset: tf.data.Dataset, sequence_length) -> tf.data.Dataset:
    """Cuts `targets` into pieces of at most `sequence_length['targets'] - 1` tokens.

    Without a sequence length (reading the cache as it is) examples pass unchanged.
    """
    if not sequence_length or not sequence_length.get("targets"):
        return dataset
    piece = sequence_length["targets"] - 1

    def _split(example):
        tokens = example["targets"]
        num_pieces = (tf.size(tokens) + piece - 1) // piece
        padded = tf.pad(tokens, [[0, num_pieces * piece - tf.size(tokens)]])
        rows = tf.RaggedTensor.from_tensor(
            tf.reshape(padded, [num_pieces, piece]),
            lengths=tf.minimum(piece, tf.size(tokens) - tf.range(num_pieces) * piece))
        return tf.data.Dataset.from_tensor_slices({"targets": rows})

    return dataset.flat_map(_split).map(lambda ex: {"targets": ex["targets"]})


def lm_pieces(example: dict[str, np.ndarray], lengths) -> list[dict[str, np.ndarray]]:
    """`split_tokens` + `append_eos_after_trim` on one cached example, in numpy (the
    resumable reader's transform; tests check it against the task's own preprocessors)."""
    piece = int(lengths["targets"]) - 1
    if piece < 1:
        raise ValueError(f"task_feature_lengths['targets']={lengths['targets']} must be >= 2 (tokens + EOS)")
    tokens = np.asarray(example["targets"], np.int32)
    return [{"targets": np.append(tokens[i:i + piece], np.int32(special_tokens.EOS_ID))}
            for i in range(0, len(tokens), piece)]


def register_text_task(name: str = TEXT_TASK) -> None:
    """Registers an LM task over a `pipelines.preprocess_text` cache (idempotent), with
    its resumable source (tasks/resumable.py)."""
    resumable.register_source(name, resumable.Source(
        cache_task=name, transform=lm_pieces, features=("targets",),
        rebuild=f"`python -m pipelines.preprocess_text --input=... --cache_dir=DIR --task={name}`"))
    if name in seqio.TaskRegistry.names():
        return
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(_not_cached, splits=["train", "validation"]),
        preprocessors=[
            seqio.CacheDatasetPlaceholder(required=True),
            split_tokens,
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features={
            "targets": seqio.Feature(vocabulary.get_vocabulary(), add_eos=True, dtype=tf.int32),
        },
    )


register_text_task()

"""Leakage control (RETRO section 2.6 / 4.4): 13-gram Jaccard overlap with evaluation text.

    grams = ngram_set(ids)                       # set of hashed 13-grams of a token list
    jaccard(grams_a, grams_b)                    # |a & b| / |a | b|
    max_jaccard(doc_ids, eval_grams)             # worst overlap of a document with any eval doc

Used two ways: the database job drops documents too similar to evaluation documents
(`--exclude_like`), and the neighbour job drops neighbours (chunk + continuation) too
similar to the evaluated window they would inform (`--leak_threshold`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

N = 13


def ngram_set(ids: Sequence[int], n: int = N) -> frozenset[int]:
    """Hashes of the token n-grams of `ids` (padding 0 ignored; fewer than n tokens: empty)."""
    arr = np.asarray([i for i in ids if i != 0], np.int64)
    if len(arr) < n:
        return frozenset()
    windows = np.lib.stride_tricks.sliding_window_view(arr, n)
    # A polynomial rolling hash over int64 (wraps); collisions are negligible at these sizes.
    h = np.zeros(len(windows), np.int64)
    for j in range(n):
        h = h * np.int64(1_000_003) + windows[:, j]
    return frozenset(h.tolist())


def jaccard(a: frozenset, b: frozenset) -> float:
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


def max_jaccard(ids: Sequence[int], eval_grams: dict[str, frozenset]) -> float:
    """The largest 13-gram Jaccard of token list `ids` with any evaluation document."""
    grams = ngram_set(ids)
    return max((jaccard(grams, g) for g in eval_grams.values()), default=0.0)


def document_ngrams(patterns: Sequence[str], vocab_path: str) -> dict[str, frozenset]:
    """Evaluation documents (text_io formats, read on the launcher) -> {doc id: 13-gram set}."""
    from pipelines import special_tokens, text_io, vocab  # pylint: disable=g-import-not-at-top
    sp = vocab.load(vocab_path)
    out = {}
    for path in text_io.expand_patterns(list(patterns)):
        for doc in text_io.range_documents(text_io.ReadRange(path)):
            if "error" not in doc:
                out[doc["id"]] = ngram_set(special_tokens.escape_reserved_ids(sp.encode(doc["text"])))
    return out

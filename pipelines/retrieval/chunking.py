"""Documents -> RETRO chunks: non-overlapping M-token chunks, each with its M-token
continuation (the tokens that follow it in the document, padded with 0 at the end),
its document id and a stable 63-bit id.

    doc "book.txt", ids [5, 6, 7, 8, 9, 10, 11], M=3:
    {"chunk_id": h("book.txt", 0), "doc_id": "book.txt", "tokens": [5, 6, 7], "continuation": [8, 9, 10]}
    {"chunk_id": h("book.txt", 1), "doc_id": "book.txt", "tokens": [8, 9, 10], "continuation": [11, 0, 0]}
    {"chunk_id": h("book.txt", 2), "doc_id": "book.txt", "tokens": [11, 0, 0], "continuation": [0, 0, 0]}

Ids are a hash of (document id, chunk index): no global counter, the same on every
rebuild, usable directly as faiss ids (int64 >= 0).
"""
from __future__ import annotations

import hashlib
from typing import Iterator, Sequence

import numpy as np


def chunk_id(doc_id: str, index: int) -> int:
    """A stable non-negative int64 id for chunk `index` of document `doc_id`."""
    digest = hashlib.blake2b(f"{doc_id}\x00{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2 ** 63 - 1)


def doc_hash(doc_id: str) -> int:
    """A stable non-negative int64 id for a document (the neighbour job compares these)."""
    digest = hashlib.blake2b(doc_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2 ** 63 - 1)


def padded(ids: Sequence[int], start: int, length: int) -> np.ndarray:
    """ids[start:start+length] as int32, zero-padded to `length`."""
    out = np.zeros(length, np.int32)
    piece = np.asarray(ids[start:start + length], np.int32)
    out[:len(piece)] = piece
    return out


def document_chunks(doc_id: str, ids: Sequence[int], chunk_len: int) -> Iterator[dict]:
    """Every chunk of a tokenized document (the last one zero-padded), in order."""
    if chunk_len < 1:
        raise ValueError(f"chunk_len must be >= 1, got {chunk_len}")
    for i, start in enumerate(range(0, len(ids), chunk_len)):
        yield {"chunk_id": chunk_id(doc_id, i), "doc_id": doc_id, "doc_hash": doc_hash(doc_id),
               "tokens": padded(ids, start, chunk_len),
               "continuation": padded(ids, start + chunk_len, chunk_len)}

"""The nearest-neighbour index over chunk keys (faiss, inner product on unit vectors).

Choice by database size N (`--index=auto`), or named (`flat`, `ivfpq`, `hnsw`), or any
faiss factory string (`--index_factory`):

    flat    N <= 200k          exact ("Flat"): 1.5 KB per chunk at D=384, no training
    hnsw    200k < N <= 5M     "HNSW32": graph, ~97-99% recall@10, no training, ~1.8 KB/chunk
    ivfpq   N > 5M             "IVF{4 sqrt N},PQ{D/8}x8": trained on a sample, 48 B/chunk
                               at D=384 (+8 B id), nprobe sets the recall/speed trade

Build: train an empty index on a sample (`trained_empty`), fill copies of it in parallel
shards (`fill_shard`: each worker adds its own chunks with their ids), then merge the
shards (`merge`; IVF lists and flat codes merge by faiss' merge_from, HNSW graphs do
not, so their shards carry raw vectors and the merge inserts them). Indexes travel
between workers as bytes (faiss.serialize_index).
"""
from __future__ import annotations

import math

import faiss
import numpy as np

KINDS = ("auto", "flat", "hnsw", "ivfpq")
FLAT_MAX, HNSW_MAX = 200_000, 5_000_000


def factory_string(kind: str, n: int, dim: int) -> str:
    """The faiss factory string for `kind` ('auto' picks by n, see the module doc)."""
    if kind not in KINDS:
        raise ValueError(f"--index={kind!r}: choose one of {KINDS}")
    if kind == "auto":
        kind = "flat" if n <= FLAT_MAX else "hnsw" if n <= HNSW_MAX else "ivfpq"
    if kind == "flat":
        return "IDMap2,Flat"
    if kind == "hnsw":
        return "IDMap2,HNSW32"
    nlist = max(1, int(4 * math.sqrt(max(n, 1))))
    m = max(1, dim // 8)
    while dim % m:
        m -= 1
    return f"IVF{nlist},PQ{m}x8"


def needs_training(factory: str) -> bool:
    return "IVF" in factory or "PQ" in factory


def train_sample_size(factory: str) -> int:
    """Training vectors wanted: ~64 per IVF list (faiss warns below 39), else none."""
    if not needs_training(factory):
        return 0
    nlist = int(factory.split(",")[0].removeprefix("IVF")) if factory.startswith("IVF") else 256
    return max(64 * nlist, 256 * 64)


def trained_empty(factory: str, dim: int, sample: np.ndarray | None) -> bytes:
    """An empty index of `factory`, trained on `sample` [n, D] when it needs training."""
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if needs_training(factory):
        if sample is None or len(sample) == 0:
            raise ValueError(f"index {factory!r} needs a training sample")
        index.train(np.ascontiguousarray(sample, np.float32))
    return serialize(index)


def serialize(index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def deserialize(data: bytes):
    return faiss.deserialize_index(np.frombuffer(data, np.uint8))


def mergeable(factory: str) -> bool:
    return "HNSW" not in factory


def fill_shard(empty: bytes, factory: str, ids: np.ndarray, vectors: np.ndarray):
    """One shard: the trained empty index with this shard's vectors added (bytes), or,
    for unmergeable (graph) indexes, the raw (ids, vectors) for the merge to insert."""
    ids = np.ascontiguousarray(ids, np.int64)
    vectors = np.ascontiguousarray(vectors, np.float32)
    if not mergeable(factory):
        return ("raw", ids, vectors)
    index = deserialize(empty)
    index.add_with_ids(vectors, ids)
    return ("index", serialize(index))


def merge(empty: bytes, parts: list) -> bytes:
    """Shards from fill_shard -> one index (bytes)."""
    index = deserialize(empty)
    for part in parts:
        if part[0] == "raw":
            index.add_with_ids(part[2], part[1])
        else:
            index.merge_from(deserialize(part[1]), 0)
    return serialize(index)


def exact_search(db: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k row indices by inner product (the recall reference): [q, k] int64."""
    flat = faiss.IndexFlatIP(db.shape[1])
    flat.add(np.ascontiguousarray(db, np.float32))
    return flat.search(np.ascontiguousarray(queries, np.float32), k)[1]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each query's true top-k ids among its found top-k ids."""
    hits = [len(set(f[f >= 0]) & set(t)) / len(t) for f, t in zip(found, truth)]
    return float(np.mean(hits))


def set_search_effort(index, nprobe: int = 16, ef_search: int = 64) -> None:
    """IVF lists probed / HNSW beam width at search time (no-op for exact indexes)."""
    import faiss  # pylint: disable=g-import-not-at-top,reimported
    try:
        faiss.extract_index_ivf(index).nprobe = nprobe
    except (RuntimeError, TypeError):
        pass
    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    if hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = ef_search

r"""Beam job: training documents -> RETRO rows with their precomputed neighbours, as a SeqIO cache.

    python -m pipelines.retrieval.neighbours --input=train/*.txt --db_dir=/tmp/retro_db \
        --cache_dir=/tmp/cache --task=tapestry_retro --split=train --seq_len=512 \
        --num_neighbours=2 [--leak_threshold=0.8]

Each document is tokenized and cut into windows of seq_len + 1 tokens (stride seq_len:
inputs = window[:-1], targets = window[1:]). The inputs are C = seq_len / M chunks of
the database's chunk length M; chunk u's key is the MiniLM embedding of its text, and
its neighbours are the K nearest database chunks (each chunk ++ continuation, R = 2M
tokens) that come from another document (same document hash: skipped) and, with
`--leak_threshold`, whose 13-gram Jaccard with the text they would inform (chunks u
and u+1 of the row) does not exceed it. Because the key is built from the *input*
chunk, the model's attending chunk (last token of u onwards) has seen every token the
key was built from. Fewer than K found: the rest are 0 (padding, masked by the model).

Cached example (pipelines/seqio_cache.py layout, read by tasks/retrieval.py):

    targets               int32 [<= seq_len + 1]   the window (no EOS; 0-padded by the reader)
    retrieved_neighbours  int32 [C * K * R]        row-major [C, K, R]
    source_id             string  "<doc id>#<window index>"

Steps: ReadDocuments -> Windows (SentencePiece in setup) -> Reshuffle -> BatchElements
-> Neighbours (the database and its index loaded in setup; MiniLM keys, one batched
search, filters) -> WriteSeqioCache. Counters `retro_neighbours:{rows, chunks,
same_document_skipped, leaky_skipped, missing_neighbours}`.
At scale the in-memory database of a worker becomes a sharded search service or a
join by chunk id (README "RETRO: scale path").
"""
from __future__ import annotations

import json
import sys
from typing import Iterable, Sequence

import apache_beam as beam
import numpy as np

from pipelines import beam_options, fs, seqio_cache, special_tokens, text_io, vocab
from pipelines.retrieval import build_db, chunking, leakage

NAMESPACE = "retro_neighbours"
FEATURES = {
    "targets": seqio_cache.FeatureSpec("int32", [None]),
    "retrieved_neighbours": seqio_cache.FeatureSpec("int32", [None]),
    "source_id": seqio_cache.FeatureSpec("string", []),
}


def document_windows(doc_id: str, ids: Sequence[int], seq_len: int) -> Iterable[dict]:
    """Windows of seq_len + 1 tokens at stride seq_len (the last may be shorter; a
    window needs at least 2 tokens)."""
    for w, start in enumerate(range(0, max(len(ids) - 1, 0), seq_len)):
        window = np.asarray(ids[start:start + seq_len + 1], np.int32)
        if len(window) >= 2:
            yield {"source_id": f"{doc_id}#{w}", "doc_hash": chunking.doc_hash(doc_id),
                   "window": window}


class WindowDocuments(beam.DoFn):
    """(doc_id, text) -> windows with their input chunks' texts."""

    def __init__(self, vocab_path: str, seq_len: int, chunk_len: int):
        self._vocab_path, self._seq_len, self._chunk_len = vocab_path, seq_len, chunk_len

    def setup(self):
        self._sp = vocab.load(self._vocab_path)

    def process(self, doc):
        doc_id, text = doc
        ids = special_tokens.escape_reserved_ids(self._sp.encode(text))
        m = self._chunk_len
        for row in document_windows(doc_id, ids, self._seq_len):
            inputs = chunking.padded(row["window"][:-1], 0, self._seq_len)
            row["chunk_texts"] = [self._sp.decode([t for t in inputs[s:s + m].tolist() if t])
                                  for s in range(0, self._seq_len, m)]
            yield row


def select_neighbours(candidates: np.ndarray, query_doc: int, db: dict, k: int,
                      informed: np.ndarray | None = None, leak_threshold: float | None = None,
                      counters: dict | None = None) -> np.ndarray:
    """Candidate chunk ids (best first) -> [K, 2M] neighbour tokens (chunk ++ continuation):
    none from document `query_doc`, none leaking into `informed` tokens; 0-padded."""
    m = db["chunk_len"]
    out = np.zeros((k, 2 * m), np.int32)
    informed_grams = leakage.ngram_set(informed) if leak_threshold is not None else None
    n = 0
    for cid in candidates:
        if n == k or cid < 0:
            break
        row = db["row_of"][int(cid)]
        if db["doc_hashes"][row] == query_doc:
            _inc(counters, "same_document_skipped")
            continue
        tokens = np.concatenate([db["tokens"][row], db["continuations"][row]])
        if informed_grams is not None and leakage.jaccard(
                leakage.ngram_set(tokens), informed_grams) > leak_threshold:
            _inc(counters, "leaky_skipped")
            continue
        out[n] = tokens
        n += 1
    if n < k:
        _inc(counters, "missing_neighbours", k - n)
    return out


def _inc(counters, name, n=1):
    if counters is not None:
        counters[name].inc(n)


class FindNeighbours(beam.DoFn):
    """A batch of windows -> cached examples with `retrieved_neighbours` [C*K*R]."""

    def __init__(self, db_dir: str, num_neighbours: int, seq_len: int,
                 leak_threshold: float | None = None, candidates: int = 0):
        self._db_dir, self._k, self._seq_len = db_dir, num_neighbours, seq_len
        self._leak_threshold = leak_threshold
        self._candidates = candidates or 4 * num_neighbours + 16

    def setup(self):
        from pipelines.retrieval import faiss_index, minilm  # pylint: disable=g-import-not-at-top
        self._db = build_db.load_database(self._db_dir)
        faiss_index.set_search_effort(self._db["index"])
        self._encoder = minilm.MiniLMEncoder.load()
        names = ("rows", "chunks", "same_document_skipped", "leaky_skipped", "missing_neighbours")
        self._counters = {n: beam.metrics.Metrics.counter(NAMESPACE, n) for n in names}

    def process(self, rows: list[dict]):
        m = self._db["chunk_len"]
        texts = [t for r in rows for t in r["chunk_texts"]]
        keys = self._encoder.encode(texts)
        _, found = self._db["index"].search(keys, min(self._candidates, self._db["index"].ntotal))
        c = self._seq_len // m
        for i, r in enumerate(rows):
            inputs = chunking.padded(r["window"][:-1], 0, self._seq_len)
            neighbours = np.zeros((c, self._k, 2 * m), np.int32)
            for u in range(c):
                informed = inputs[u * m:(u + 2) * m]
                neighbours[u] = select_neighbours(found[i * c + u], r["doc_hash"], self._db, self._k,
                                                  informed, self._leak_threshold, self._counters)
            self._counters["rows"].inc()
            self._counters["chunks"].inc(c)
            yield {"targets": r["window"], "retrieved_neighbours": neighbours.reshape(-1),
                   "source_id": r["source_id"]}


class PrecomputeNeighbours(beam.PTransform):
    """PBegin -> the SeqIO cache of `task`/`split` with neighbours (see the module doc)."""

    def __init__(self, inputs: Sequence[str], db_dir: str, cache_dir: str, task: str, *,
                 split: str = "train", seq_len: int = 512, num_neighbours: int = 2,
                 vocab_path: str | None = None, leak_threshold: float | None = None,
                 num_shards: int = 8):
        super().__init__()
        meta = json.loads(fs.read_text(fs.join(db_dir, "db.json")))
        m = meta["chunk_len"]
        if seq_len % m:
            raise ValueError(f"--seq_len={seq_len} must be a multiple of the database's chunk_len={m}")
        self._inputs, self._db_dir, self._cache_dir, self._task = list(inputs), db_dir, cache_dir, task
        self._split, self._seq_len, self._k, self._m = split, seq_len, num_neighbours, m
        self._vocab = vocab_path or meta["vocab"]
        self._leak_threshold, self._num_shards = leak_threshold, num_shards

    def expand(self, pbegin):
        return (pbegin
                | "ReadDocuments" >> text_io.ReadDocuments(self._inputs)
                | "Windows" >> beam.ParDo(WindowDocuments(self._vocab, self._seq_len, self._m))
                | "Reshuffle" >> beam.Reshuffle()
                | "Batch" >> beam.BatchElements(min_batch_size=4, max_batch_size=32)
                | "Neighbours" >> beam.ParDo(FindNeighbours(self._db_dir, self._k, self._seq_len,
                                                            self._leak_threshold))
                | "Write" >> seqio_cache.WriteSeqioCache(self._cache_dir, self._task, self._split,
                                                         FEATURES, num_shards=self._num_shards))


def make_parser():
    parser = beam_options.make_parser(__doc__)
    parser.add_argument("--input", action="append", required=True, help="documents; repeatable")
    parser.add_argument("--db_dir", required=True, help="the database (pipelines.retrieval.build_db)")
    parser.add_argument("--cache_dir", required=True, help="root of the SeqIO caches")
    parser.add_argument("--task", default="tapestry_retro")
    parser.add_argument("--split", default="train")
    parser.add_argument("--seq_len", type=int, default=512, help="tokens per row (multiple of chunk_len)")
    parser.add_argument("--num_neighbours", type=int, default=2)
    parser.add_argument("--leak_threshold", type=float, default=None,
                        help="drop neighbours whose 13-gram Jaccard with the text they inform exceeds this")
    parser.add_argument("--num_shards", type=int, default=8)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = make_parser()
    args, options = beam_options.parse(parser, argv)
    transform = PrecomputeNeighbours(args.input, args.db_dir, args.cache_dir, args.task, split=args.split,
                                     seq_len=args.seq_len, num_neighbours=args.num_neighbours,
                                     leak_threshold=args.leak_threshold, num_shards=args.num_shards)
    with beam.Pipeline(options=options) as p:
        _ = p | "PrecomputeNeighbours" >> transform


if __name__ == "__main__":
    main(sys.argv[1:])

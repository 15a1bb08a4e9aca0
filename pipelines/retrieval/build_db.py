r"""Beam job: documents -> RETRO retrieval database (chunks, continuations, keys, faiss index).

    python -m pipelines.retrieval.build_db --input=../shared/data/text/gutenberg \
        --db_dir=/tmp/retro_db --chunk_len=64 [--index=auto|flat|hnsw|ivfpq] \
        [--index_factory='IVF1024,PQ48x8'] [--num_shards=8] [--exclude_like=eval/*.txt]

Steps: ReadDocuments (pipelines/text_io.py: plain text = one document, JSONL = one per
line) -> Chunk (SentencePiece in setup; non-overlapping `chunk_len`-token chunks with
their continuations, pipelines/retrieval/chunking.py) -> [DropLeaky: documents whose
13-gram Jaccard with any `--exclude_like` document exceeds `--leak_threshold`] ->
Reshuffle -> BatchElements -> Embed (all-MiniLM-L6-v2 in numpy, loaded in setup, over
each chunk's decoded text) -> by shard (chunk id mod num_shards) -> WriteShard (one
npz per shard) + FillIndex (each shard added to a copy of the empty index trained on
a sample) -> Merge -> index + db.json. Outputs, all through Beam's FileSystems:

    <db_dir>/chunks-NNNNN-of-MMMMM.npz   chunk_ids int64 [n], doc_hashes int64 [n],
                                         doc_ids str [n], tokens int32 [n, M],
                                         continuations int32 [n, M], embeddings float32 [n, 384]
    <db_dir>/index.faiss                 faiss index (inner product), ids = chunk_ids
    <db_dir>/db.json                     chunk_len, num_chunks, dim, index_factory, shards, vocab

Beam counters `retro_db:{documents, chunks, leaky_documents}`.
"""
from __future__ import annotations

import io
import json
import sys
import time
from typing import Iterable, Sequence

import apache_beam as beam
import numpy as np

from pipelines import beam_options, fs, special_tokens, text_io, vocab
from pipelines.retrieval import chunking, faiss_index, leakage

NAMESPACE = "retro_db"
DIM = 384
DEFAULT_TRAIN_SAMPLE = 65_536


def shard_path(db_dir: str, shard: int, num_shards: int) -> str:
    return fs.join(db_dir, f"chunks-{shard:05d}-of-{num_shards:05d}.npz")


class ChunkDocuments(beam.DoFn):
    """(doc_id, text) -> chunk records (chunking.document_chunks) with their `text`."""

    def __init__(self, vocab_path: str, chunk_len: int, leak_ngrams: dict | None = None,
                 leak_threshold: float = 0.8):
        self._vocab_path, self._chunk_len = vocab_path, chunk_len
        self._leak_ngrams, self._leak_threshold = leak_ngrams, leak_threshold

    def setup(self):
        self._sp = vocab.load(self._vocab_path)
        self._docs = beam.metrics.Metrics.counter(NAMESPACE, "documents")
        self._chunks = beam.metrics.Metrics.counter(NAMESPACE, "chunks")
        self._leaky = beam.metrics.Metrics.counter(NAMESPACE, "leaky_documents")

    def process(self, doc: tuple[str, str]) -> Iterable[dict]:
        doc_id, text = doc
        ids = special_tokens.escape_reserved_ids(self._sp.encode(text))
        if self._leak_ngrams and leakage.max_jaccard(ids, self._leak_ngrams) > self._leak_threshold:
            self._leaky.inc()
            return
        self._docs.inc()
        for chunk in chunking.document_chunks(doc_id, ids, self._chunk_len):
            self._chunks.inc()
            chunk["text"] = self._sp.decode(chunk["tokens"][chunk["tokens"] != 0].tolist())
            yield chunk


class EmbedChunks(beam.DoFn):
    """A batch of chunk records -> the same records with `embedding` (float32 [384])."""

    def __init__(self, batch_size: int = 64):
        self._batch_size = batch_size

    def setup(self):
        from pipelines.retrieval import minilm  # pylint: disable=g-import-not-at-top
        self._encoder = minilm.MiniLMEncoder.load()

    def process(self, batch: list[dict]) -> Iterable[dict]:
        keys = self._encoder.encode([c["text"] for c in batch], self._batch_size)
        for chunk, key in zip(batch, keys):
            yield dict(chunk, embedding=key)


def shard_arrays(records: Sequence[dict]) -> dict[str, np.ndarray]:
    """Chunk records -> the npz columns, sorted by chunk id (deterministic shards)."""
    records = sorted(records, key=lambda c: c["chunk_id"])
    return {
        "chunk_ids": np.array([c["chunk_id"] for c in records], np.int64),
        "doc_hashes": np.array([c["doc_hash"] for c in records], np.int64),
        "doc_ids": np.array([c["doc_id"] for c in records], str),
        "tokens": np.stack([c["tokens"] for c in records]).astype(np.int32),
        "continuations": np.stack([c["continuation"] for c in records]).astype(np.int32),
        "embeddings": np.stack([c["embedding"] for c in records]).astype(np.float32),
    }


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    fs.write_bytes(path, buf.getvalue())


def read_npz(path: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(fs.read_bytes(path)), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class WriteShardAndFill(beam.DoFn):
    """(shard, records) -> writes the shard's npz; yields its part of the index."""

    def __init__(self, db_dir: str, num_shards: int):
        self._db_dir, self._num_shards = db_dir, num_shards

    def process(self, item, empty):
        shard, records = item
        arrays = shard_arrays(list(records))
        write_npz(shard_path(self._db_dir, shard, self._num_shards), arrays)
        factory, index_bytes = empty
        yield faiss_index.fill_shard(index_bytes, factory, arrays["chunk_ids"], arrays["embeddings"])


def train_index(n: int, sample: list, kind: str, factory: str | None) -> tuple[str, bytes]:
    """(factory string, trained empty index bytes) for a database of n chunks."""
    factory = factory or faiss_index.factory_string(kind, n, DIM)
    vectors = np.stack(sample).astype(np.float32) if sample else None
    return factory, faiss_index.trained_empty(factory, DIM, vectors)


class BuildDatabase(beam.PTransform):
    """PBegin -> the database under `db_dir` (see the module doc); yields db.json's dict."""

    def __init__(self, inputs: Sequence[str], db_dir: str, *, vocab_path: str = vocab.DEFAULT_VOCAB,
                 chunk_len: int = 64, num_shards: int = 8, index: str = "auto",
                 index_factory: str | None = None, train_sample: int = DEFAULT_TRAIN_SAMPLE,
                 exclude_like: Sequence[str] = (), leak_threshold: float = 0.8,
                 embed_batch: int = 64):
        super().__init__()
        if chunk_len < 1 or num_shards < 1:
            raise ValueError(f"chunk_len={chunk_len} and num_shards={num_shards} must be >= 1")
        faiss_index.factory_string(index, 1, DIM)  # validates --index
        self._inputs, self._db_dir, self._vocab = list(inputs), db_dir, vocab_path
        self._chunk_len, self._num_shards = chunk_len, num_shards
        self._index, self._factory, self._train_sample = index, index_factory, train_sample
        self._leak = (leakage.document_ngrams(exclude_like, vocab_path) if exclude_like else None)
        self._leak_threshold, self._embed_batch = leak_threshold, embed_batch

    def expand(self, pbegin):
        db_dir, num_shards = self._db_dir, self._num_shards
        chunks = (pbegin
                  | "ReadDocuments" >> text_io.ReadDocuments(self._inputs)
                  | "Chunk" >> beam.ParDo(ChunkDocuments(self._vocab, self._chunk_len, self._leak,
                                                         self._leak_threshold))
                  | "Reshuffle" >> beam.Reshuffle())
        embedded = (chunks
                    | "Batch" >> beam.BatchElements(min_batch_size=16, max_batch_size=256)
                    | "Embed" >> beam.ParDo(EmbedChunks(self._embed_batch)))
        count = embedded | "Count" >> beam.combiners.Count.Globally()
        sample = (embedded
                  | "Keys" >> beam.Map(lambda c: c["embedding"])
                  | "Sample" >> beam.combiners.Sample.FixedSizeGlobally(self._train_sample))
        kind, factory = self._index, self._factory
        empty = count | "TrainIndex" >> beam.Map(
            lambda n, s: train_index(n, s, kind, factory), s=beam.pvalue.AsSingleton(sample))
        parts = (embedded
                 | "ByShard" >> beam.Map(lambda c: (c["chunk_id"] % num_shards, c))
                 | "GroupShards" >> beam.GroupByKey()
                 | "WriteShards" >> beam.ParDo(WriteShardAndFill(db_dir, num_shards),
                                               empty=beam.pvalue.AsSingleton(empty))
                 | "Parts" >> beam.combiners.ToList())
        meta = {"chunk_len": self._chunk_len, "dim": DIM, "num_shards": num_shards,
                "vocab": self._vocab, "encoder": "sentence-transformers/all-MiniLM-L6-v2",
                "leak_threshold": self._leak_threshold if self._leak else None}

        def finish(parts, empty, n):
            start = time.time()
            factory, index_bytes = empty
            merged = faiss_index.merge(index_bytes, parts)
            fs.write_bytes(fs.join(db_dir, "index.faiss"), merged)
            info = dict(meta, num_chunks=n, index_factory=factory,
                        shards=[fs.basename(shard_path(db_dir, s, num_shards))
                                for s in range(num_shards)],
                        merge_seconds=round(time.time() - start, 3))
            fs.write_text(fs.join(db_dir, "db.json"), json.dumps(info, indent=2))
            return info

        return parts | "MergeIndex" >> beam.Map(finish, empty=beam.pvalue.AsSingleton(empty),
                                                n=beam.pvalue.AsSingleton(count))


def load_database(db_dir: str, with_index: bool = True) -> dict:
    """The whole database in memory: db.json's fields, the concatenated shard columns
    (rows in shard order), `row_of` (chunk id -> row) and `index` (faiss)."""
    info = json.loads(fs.read_text(fs.join(db_dir, "db.json")))
    shards = [read_npz(fs.join(db_dir, name)) for name in info["shards"]
              if fs.exists(fs.join(db_dir, name))]
    cols = {k: np.concatenate([s[k] for s in shards]) for k in shards[0]} if shards else {}
    out = dict(info, **cols)
    out["row_of"] = {int(c): i for i, c in enumerate(cols.get("chunk_ids", []))}
    if with_index:
        out["index"] = faiss_index.deserialize(fs.read_bytes(fs.join(db_dir, "index.faiss")))
    return out


def make_parser():
    parser = beam_options.make_parser(__doc__)
    parser.add_argument("--input", action="append", required=True,
                        help="documents: file, directory or glob (any FileSystems URI); repeatable")
    parser.add_argument("--db_dir", required=True, help="output directory (any FileSystems URI)")
    parser.add_argument("--vocab", default=vocab.DEFAULT_VOCAB, help="SentencePiece model")
    parser.add_argument("--chunk_len", type=int, default=64, help="tokens per chunk (and continuation)")
    parser.add_argument("--num_shards", type=int, default=8, help="chunk shards (index filled per shard)")
    parser.add_argument("--index", default="auto", choices=faiss_index.KINDS,
                        help="index type; auto: exact <= 200k chunks, HNSW <= 5M, IVF-PQ beyond")
    parser.add_argument("--index_factory", default=None, help="a faiss factory string (overrides --index)")
    parser.add_argument("--train_sample", type=int, default=DEFAULT_TRAIN_SAMPLE,
                        help="keys sampled to train IVF/PQ indexes")
    parser.add_argument("--exclude_like", action="append", default=[],
                        help="evaluation documents: drop database documents whose 13-gram Jaccard with "
                             "any of them exceeds --leak_threshold; repeatable")
    parser.add_argument("--leak_threshold", type=float, default=0.8)
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    parser = make_parser()
    args, options = beam_options.parse(parser, argv)
    transform = BuildDatabase(args.input, args.db_dir, vocab_path=args.vocab, chunk_len=args.chunk_len,
                              num_shards=args.num_shards, index=args.index,
                              index_factory=args.index_factory, train_sample=args.train_sample,
                              exclude_like=args.exclude_like, leak_threshold=args.leak_threshold)
    with beam.Pipeline(options=options) as p:
        _ = p | "BuildDatabase" >> transform
    info = json.loads(fs.read_text(fs.join(args.db_dir, "db.json")))
    print(json.dumps(info))
    return info


if __name__ == "__main__":
    main(sys.argv[1:])

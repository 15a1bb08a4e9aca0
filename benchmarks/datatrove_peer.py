"""DataTrove 0.10.1's Gopher filters and MinHash dedup on a JSONL corpus, in DataTrove's own venv.

    ~/.cache/tapestry/datatrove-0.10.1/bin/python benchmarks/datatrove_peer.py CORPUS.jsonl OUT.json

Run by benchmarks/curation.py (which builds the corpus and compares); needs only
DataTrove (benchmarks/datatrove_env.sh), none of our packages. For every document
({"id", "text"}) it records GopherQualityFilter's and GopherRepetitionFilter's verdict
(True or the reason) and spaCy's words (DataTrove's split_into_words), runs the whole
MinHash dedup (MinhashDedupSignature -> MinhashDedupBuckets per bucket ->
MinhashDedupCluster -> MinhashDedupFilter, default MinhashConfig) and lists the ids it
removes and its clusters, and times each stage over the corpus on this one core
(quality, repetition, MinHash signatures; best of `--repeats`).
"""

import argparse
import json
import os
import struct
import tempfile
import time

from datatrove.data import Document
from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                              MinhashDedupFilter, MinhashDedupSignature)
from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
from datatrove.utils.text import split_into_words


def best_time(fn, docs, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for d in docs:
            fn(d)
        best = min(best, time.perf_counter() - start)
    return best


def _uint32s(path):
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    return list(struct.unpack(f"<{len(data) // 4}I", data))


def minhash_dedup(docs, tmp):
    """(ids DataTrove removes, its clusters as sorted id lists) from its four MinHash steps."""
    cfg = MinhashConfig()
    sig = MinhashDedupSignature(output_folder=f"{tmp}/sigs", config=cfg)
    sig.run(data=iter(docs), rank=0, world_size=1)
    for b in range(cfg.num_buckets):
        MinhashDedupBuckets(input_folder=f"{tmp}/sigs", output_folder=f"{tmp}/buckets", config=cfg).run(
            rank=b, world_size=cfg.num_buckets)
    MinhashDedupCluster(input_folder=f"{tmp}/buckets", output_folder=f"{tmp}/remove", config=cfg,
                        save_cluster_id=True).run()
    kept = {d.id for d in MinhashDedupFilter(input_folder=f"{tmp}/remove").run(
        data=iter([Document(text=d.text, id=d.id) for d in docs]))}
    pairs = _uint32s(f"{tmp}/remove/000000.clusters")  # (document index, cluster id) pairs
    clusters = {}
    for doc_index, cluster in zip(pairs[::2], pairs[1::2]):
        clusters.setdefault(cluster, []).append(docs[doc_index].id)
    return sorted(d.id for d in docs if d.id not in kept), sorted(sorted(c) for c in clusters.values()), sig


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("corpus")
    parser.add_argument("out")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with open(args.corpus, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    docs = [Document(text=r["text"], id=r["id"]) for r in records]
    quality, repetition = GopherQualityFilter(), GopherRepetitionFilter()

    def verdict(v):
        return True if v is True else v[1]

    result = {"quality": {d.id: verdict(quality.filter(d)) for d in docs},
              "repetition": {d.id: verdict(repetition.filter(d)) for d in docs},
              "words": {d.id: split_into_words(d.text, "en") for d in docs}}
    with tempfile.TemporaryDirectory() as tmp:
        result["minhash_removed"], result["minhash_clusters"], sig = minhash_dedup(docs, tmp)
    n_bytes = sum(len(d.text.encode("utf-8")) for d in docs)
    result["bytes"] = n_bytes
    result["seconds"] = {
        "quality": best_time(quality.filter, docs, args.repeats),
        "repetition": best_time(repetition.filter, docs, args.repeats),
        "minhash_signature": best_time(lambda d: sig.get_signature(sig.get_shingles(d.text)), docs, args.repeats),
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()

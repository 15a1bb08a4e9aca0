"""Curation vs DataTrove 0.10.1: keep/drop agreement per filter and MB/s per stage, same documents, same run.

    bash benchmarks/datatrove_env.sh                  # once: DataTrove in a side venv (not our dependency)
    nice -n 10 .venv/bin/python benchmarks/curation.py [--max_docs=N] [--repeats=2]

The corpus: real text from $TAPESTRY_DATA_DIR/text (../shared/data/text: Gutenberg books and
tinyshakespeare, cut at paragraph boundaries into documents of ~1-6k characters), plus
generated documents that each trip one Gopher rule (pipelines/curation/synthetic.py, 5 seeds),
good generated documents, and near-duplicate pairs at Jaccard 0.5-0.95 of their word 5-grams.

Agreement, per document: Gopher quality and repetition verdicts (keep, or the same
reason), MinHash dedup (whether the document is in a duplicate cluster, and that
cluster's members; which member is kept differs by design: DataTrove keeps its
union-find root, we keep the smallest id, so removed sets are compared up to that
choice), and word splitting (identical token lists to spaCy's). Every disagreement is
listed with both verdicts.

Throughput, one core each (this process, then DataTrove's in its own process,
sequentially; OMP/BLAS threads 1): quality (words + rules), repetition (words +
rules), MinHash signatures. Both sides time warm: after the agreement pass over the same
documents, spaCy's tokenizer cache (DataTrove) and our piece cache are filled, as
they are in a long-running worker; a last column times ours with its caches cleared
before each pass (every piece tokenized from scratch). Best of --repeats passes;
MB = 1e6 bytes of UTF-8 text. The issue's target: ours >= 3x DataTrove per core on each.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines import text_io  # noqa: E402
from pipelines.curation import dedup, minhash, quality, repetition, synthetic, words  # noqa: E402

DATA_DIR = os.environ.get("TAPESTRY_DATA_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
DT_PYTHON = os.environ.get("DATATROVE_PYTHON",
                           os.path.expanduser("~/.cache/tapestry/datatrove-0.10.1/bin/python"))


def build_corpus(max_docs: int) -> list[dict]:
    rng, docs = random.Random(0), []
    text_dir = os.path.join(DATA_DIR, "text")
    for root, _, files in sorted(os.walk(text_dir)):
        for name in sorted(files):
            if not name.endswith(".txt") or name.startswith("LICENSE"):
                continue
            with open(os.path.join(root, name), encoding="utf-8") as f:
                text = f.read()
            pieces = list(text_io.split_into_chunks(text, rng.randint(1000, 6000)))
            docs += [{"id": f"{name}#{i:04d}", "text": p} for i, p in enumerate(pieces) if p.strip()]
    for seed in range(5):
        docs += [{"id": f"trip{seed}-{k}", "text": v} for k, v in synthetic.rule_trippers(random.Random(seed)).items()
                 if k != "gopher_long_doc" or seed == 0]
        docs += [{"id": f"good{seed}-{i}", "text": synthetic.good_document(random.Random(seed * 100 + i))}
                 for i in range(10)]
    for i, s in enumerate([0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95] * 5):
        a, b = synthetic.near_duplicate_pair(random.Random(7000 + i), s)
        docs += [{"id": f"pair{i:02d}-j{s}-a", "text": a}, {"id": f"pair{i:02d}-j{s}-b", "text": b}]
    if max_docs and len(docs) > max_docs:
        docs = random.Random(1).sample(docs, max_docs)
    return docs


def _clear_caches():
    words._DEFAULT._cache.clear()  # pylint: disable=protected-access
    quality._WORD_STATS.clear()  # pylint: disable=protected-access


def best_time(fn, docs, repeats, cold=False):
    best = float("inf")
    for _ in range(repeats):
        if cold:
            _clear_caches()
        start = time.perf_counter()
        for d in docs:
            fn(d["text"])
        best = min(best, time.perf_counter() - start)
    return best


def ours(docs, repeats):
    qcfg, rcfg, mcfg = quality.QualityConfig(), repetition.RepetitionConfig(), minhash.MinHashConfig()
    hasher = minhash.MinHasher(mcfg)

    def q(text):
        return quality.quality_verdict(quality.quality_signals(text), qcfg)

    def r(text):
        return repetition.repetition_verdict(repetition.repetition_signals(text, cfg=rcfg), rcfg)

    res = {"quality": {}, "repetition": {}, "words": {}}
    for d in docs:
        res["quality"][d["id"]] = True if (v := q(d["text"])) is None else v[0]
        res["repetition"][d["id"]] = True if (v := r(d["text"])) is None else v[0]
        res["words"][d["id"]] = words.split_words(d["text"])
    edges = []
    for key_ids in _buckets(docs, hasher, mcfg).values():
        edges += list(dedup.star_edges(key_ids))
    removed = dict(dedup.resolve(edges))
    clusters = {}
    for doc_id, root in removed.items():
        clusters.setdefault(root, {root}).add(doc_id)
    res["minhash_removed"] = sorted(removed)
    res["minhash_clusters"] = sorted(sorted(c) for c in clusters.values())
    stages = {"quality": q, "repetition": r, "minhash_signature": hasher.signature}
    res["seconds"] = {name: best_time(fn, docs, repeats) for name, fn in stages.items()}
    res["seconds_cold"] = {name: best_time(fn, docs, repeats, cold=True) for name, fn in stages.items()}
    return res


def _buckets(docs, hasher, cfg):
    buckets = {}
    for d in docs:
        sig = hasher.signature(d["text"])
        if sig is not None:
            for key in minhash.band_keys(sig, cfg.rows):
                buckets.setdefault(key, []).append(d["id"])
    return {k: v for k, v in buckets.items() if len(v) > 1}


def compare(name, a: dict, b: dict):
    diff = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    print(f"{name:12s} agreement {1 - len(diff) / len(a):.4f} ({len(a) - len(diff)}/{len(a)} documents)")
    for k, (x, y) in sorted(diff.items())[:20]:
        print(f"    {k}: ours {x!r}  datatrove {y!r}")
    return diff


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max_docs", type=int, default=0, help="sample at most this many documents (0: all)")
    parser.add_argument("--repeats", type=int, default=2, help="timing passes per stage (best kept)")
    args = parser.parse_args()
    if not os.path.exists(DT_PYTHON):
        sys.exit(f"DataTrove's venv not found at {DT_PYTHON}: run `bash benchmarks/datatrove_env.sh` "
                 "(or set DATATROVE_PYTHON)")
    docs = build_corpus(args.max_docs)
    n_bytes = sum(len(d["text"].encode("utf-8")) for d in docs)
    print(f"corpus: {len(docs)} documents, {n_bytes / 1e6:.2f} MB (real text from {DATA_DIR}/text + generated)")
    mine = ours(docs, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        corpus, out = os.path.join(tmp, "corpus.jsonl"), os.path.join(tmp, "datatrove.json")
        with open(corpus, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
        peer = os.path.join(os.path.dirname(os.path.abspath(__file__)), "datatrove_peer.py")
        proc = subprocess.run([DT_PYTHON, peer, corpus, out, f"--repeats={args.repeats}"],
                              capture_output=True, text=True, check=False)
        if proc.returncode:
            sys.exit(f"datatrove_peer.py failed:\n{proc.stderr[-3000:]}")
        with open(out, encoding="utf-8") as f:
            theirs = json.load(f)

    print("\n== agreement (keep, or the same reason) ==")
    compare("quality", mine["quality"], theirs["quality"])
    compare("repetition", mine["repetition"], theirs["repetition"])
    compare("words", {k: v == theirs["words"][k] for k, v in mine["words"].items()},
            {k: True for k in mine["words"]})
    in_mine = {i for c in mine["minhash_clusters"] for i in c}
    in_theirs = {i for c in theirs["minhash_clusters"] for i in c}
    compare("minhash", {d["id"]: d["id"] in in_mine for d in docs}, {d["id"]: d["id"] in in_theirs for d in docs})
    same_clusters = mine["minhash_clusters"] == theirs["minhash_clusters"]
    print(f"minhash clusters identical: {same_clusters} ({len(mine['minhash_clusters'])} ours, "
          f"{len(theirs['minhash_clusters'])} DataTrove); removed {len(mine['minhash_removed'])} ours, "
          f"{len(theirs['minhash_removed'])} DataTrove (one kept per cluster: ours the smallest id, theirs its root)")

    print("\n== throughput, one core, MB/s ==")
    print(f"{'stage':20s} {'ours':>8s} {'datatrove':>10s} {'ratio':>7s}   {'ours, cold cache':>16s} {'ratio':>6s}")
    for stage in ("quality", "repetition", "minhash_signature"):
        a, b = n_bytes / 1e6 / mine["seconds"][stage], theirs["bytes"] / 1e6 / theirs["seconds"][stage]
        cold = n_bytes / 1e6 / mine["seconds_cold"][stage]
        print(f"{stage:20s} {a:8.2f} {b:10.2f} {a / b:6.1f}x   {cold:16.2f} {cold / b:5.1f}x")


if __name__ == "__main__":
    main()

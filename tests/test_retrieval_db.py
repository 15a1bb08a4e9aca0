"""RETRO database pieces (pipelines/retrieval/): MiniLM in numpy vs transformers, chunking,
leakage n-grams, approximate-index recall (the Beam job end to end: test_retrieval_neighbours.py)."""
import json
import os
import subprocess

import numpy as np
import pytest

from pipelines.retrieval import chunking, faiss_index, leakage, minilm

HF_PYTHON = os.path.join(os.environ.get("TAPESTRY_HF_VENV",
                                        os.path.expanduser("~/.cache/tapestry/hf-env")), "bin", "python")
SENTENCES = ["Hello world.",
             "It is a truth universally acknowledged, that a single man in possession of a good "
             "fortune, must be in want of a wife.",
             "Alice was beginning to get very tired of sitting by her sister on the bank."]
# sentence-transformers' all-MiniLM-L6-v2 = BertModel + mean over real tokens + L2 norm.
REFERENCE = """
import json, sys, torch
from transformers import AutoModel, AutoTokenizer
d, texts = sys.argv[1], json.loads(sys.argv[2])
tok = AutoTokenizer.from_pretrained(d); model = AutoModel.from_pretrained(d).eval()
enc = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
with torch.no_grad(): h = model(**enc).last_hidden_state
m = enc["attention_mask"].unsqueeze(-1).float()
e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)
print("EMBEDDINGS", json.dumps(e.numpy().tolist()))
"""


def test_minilm_numpy_equals_transformers():
    if not os.path.exists(HF_PYTHON):
        pytest.skip(f"HF side venv not found at {HF_PYTHON}; build it with bash tests/hf_env.sh")
    out = subprocess.run([HF_PYTHON, "-c", REFERENCE, minilm.model_dir(), json.dumps(SENTENCES)],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    reference = np.array(json.loads(out.split("EMBEDDINGS", 1)[1]))
    ours = minilm.MiniLMEncoder.load().encode(SENTENCES, batch_size=2)  # two padded batches
    assert ours.shape == (3, 384)
    np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_document_chunks_and_ids():
    chunks = list(chunking.document_chunks("book.txt", [5, 6, 7, 8, 9, 10, 11], 3))
    assert [c["tokens"].tolist() for c in chunks] == [[5, 6, 7], [8, 9, 10], [11, 0, 0]]
    assert [c["continuation"].tolist() for c in chunks] == [[8, 9, 10], [11, 0, 0], [0, 0, 0]]
    assert len({c["chunk_id"] for c in chunks}) == 3
    assert chunks[0]["chunk_id"] == chunking.chunk_id("book.txt", 0) >= 0
    a = leakage.ngram_set(range(2, 40))
    assert leakage.jaccard(a, leakage.ngram_set(range(2, 40))) == 1.0
    assert leakage.jaccard(a, leakage.ngram_set(range(100, 140))) == 0.0


@pytest.mark.parametrize("kind,min_recall", [("hnsw", 0.9), ("ivfpq", 0.2)])
def test_approximate_index_recall(kind, min_recall):
    """recall@10 of held-out queries vs exact search on clustered unit vectors (printed)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(64, 32))
    x = centres[rng.integers(0, 64, 5200)] + 0.5 * rng.normal(size=(5200, 32))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    db, queries = x[:5000], x[5000:5200]
    ids = np.arange(5000, dtype=np.int64) * 3 + 1
    factory = faiss_index.factory_string(kind, 10 ** 8 if kind == "ivfpq" else 10 ** 6, 32)
    if kind == "ivfpq":
        factory = "IVF32,PQ8x4"  # the auto string scaled down to this database
    empty = faiss_index.trained_empty(factory, 32, db[:2000])
    parts = [faiss_index.fill_shard(empty, factory, ids[s::3], db[s::3]) for s in range(3)]
    index = faiss_index.deserialize(faiss_index.merge(empty, parts))
    faiss_index.set_search_effort(index, nprobe=16, ef_search=64)
    truth = ids[faiss_index.exact_search(db, queries, 10)]
    recall = faiss_index.recall_at_k(index.search(queries, 10)[1], truth)
    print(f"recall@10 {factory}: {recall:.3f}")
    assert index.ntotal == 5000 and recall >= min_recall

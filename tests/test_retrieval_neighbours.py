"""RETRO jobs end to end: database (shards, ids, exact index) -> neighbours -> the cached task's batches."""
import apache_beam as beam
import numpy as np
import pytest

from pipelines import beam_options
from pipelines.retrieval import build_db, chunking, neighbours

M, L, K = 8, 32, 2


@pytest.fixture(scope="module")
def retro_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("retro")
    docs = root / "docs"
    docs.mkdir()
    topics = ["the cat sat on a mat while dogs ran over green hills",
              "ships sail across the cold grey sea under heavy storm clouds",
              "bakers knead warm bread and sweet cakes in the early morning"]
    rng = np.random.default_rng(0)
    for d, topic in enumerate(topics * 2):  # two documents per topic: same-topic neighbours exist
        words = topic.split()
        (docs / f"doc{d}.txt").write_text(" ".join(rng.choice(words, 70)))
    db_dir, cache_dir = str(root / "db"), str(root / "cache")
    options = beam_options.pipeline_options(["--runner=FnApiRunner"])
    with beam.Pipeline(options=options) as p:
        _ = p | build_db.BuildDatabase([str(docs)], db_dir, chunk_len=M, num_shards=2)
    with beam.Pipeline(options=options) as p:
        _ = p | neighbours.PrecomputeNeighbours([str(docs)], db_dir, cache_dir, "retro_test",
                                                seq_len=L, num_neighbours=K, num_shards=2)
    return db_dir, cache_dir


def test_database_job(retro_cache):
    db = build_db.load_database(retro_cache[0])
    n = db["num_chunks"]
    assert n == len(db["chunk_ids"]) == db["index"].ntotal > 12
    assert db["index_factory"] == "IDMap2,Flat"  # small: exact
    assert len(set(db["chunk_ids"].tolist())) == n
    assert set(db["doc_ids"]) == {f"doc{d}.txt" for d in range(6)}
    rows = {int(c): i for i, c in enumerate(db["chunk_ids"])}
    for doc in ("doc0.txt", "doc1.txt"):  # a chunk's continuation is its document's next chunk
        first, second = rows[chunking.chunk_id(doc, 0)], rows[chunking.chunk_id(doc, 1)]
        np.testing.assert_array_equal(db["continuations"][first], db["tokens"][second])
    np.testing.assert_allclose(np.linalg.norm(db["embeddings"], axis=1), 1.0, atol=1e-5)
    _, found = db["index"].search(db["embeddings"], 1)  # exact: each key finds its own chunk
    assert (found[:, 0] == db["chunk_ids"]).mean() > 0.9  # repeated short random text may tie


def test_neighbours_never_from_the_same_document(retro_cache):
    from tasks import retrieval  # SeqIO + TensorFlow: tasks/ only
    db_dir, cache_dir = retro_cache
    db = build_db.load_database(db_dir, with_index=False)
    doc_of_tokens = {tuple(np.concatenate([t, c]).tolist()): d for t, c, d in zip(
        db["tokens"], db["continuations"], db["doc_ids"])}
    retrieval.register_retro_task("retro_test")
    import seqio
    seqio.add_global_cache_dirs([cache_dir])
    rows = list(retrieval.examples("retro_test", "train"))
    assert rows
    checked = 0
    for ex in rows:
        doc = ex["source_id"].decode().split("#")[0]
        nbrs = ex["retrieved_neighbours"].reshape(L // M, K, 2 * M)
        for n in nbrs.reshape(-1, 2 * M):
            if not n.any():
                continue
            assert doc_of_tokens[tuple(n.tolist())] != doc
            checked += 1
    assert checked > len(rows)  # most chunks found neighbours


def test_batches_carry_neighbours(retro_cache):
    from tasks import retrieval
    from model.dataset_config import DatasetConfig
    _, cache_dir = retro_cache
    retrieval.register_retro_task("retro_test")
    cfg = DatasetConfig(mixture_or_task_name="retro_test", task_feature_lengths={"targets": L},
                        split="train", batch_size=2, shuffle=False, use_cached=True)
    batch = next(retrieval.get_dataset(cfg, cache_dirs=[cache_dir], chunk_len=M, num_neighbours=K))
    assert batch["retrieved_neighbours"].shape == (2, L // M, K, 2 * M)
    assert batch["decoder_input_tokens"].shape == (2, L)
    real = batch["decoder_segment_ids"][:, 1:] == 1  # the next input is this target
    np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 1:][real],
                                  batch["decoder_target_tokens"][:, :-1][real])
    plain = next(retrieval.get_dataset(cfg, cache_dirs=[cache_dir], chunk_len=M, num_neighbours=K,
                                       retrieval=False))
    assert "retrieved_neighbours" not in plain

"""MinHash LSH (S-curve, DataTrove-compatible details) and dedup clusters in Beam (deterministic keep)."""

import math
import random

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from pipelines.curation import dedup, minhash, synthetic


def test_lsh_candidate_rate_follows_the_s_curve():
    """P(candidate) over generated shingle-set pairs at Jaccard s vs 1 - (1 - s^r)^b, within 4 sigma."""
    cfg = minhash.MinHashConfig()
    hasher, rng = minhash.MinHasher(cfg), np.random.default_rng(0)
    pairs = 250
    for s in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95):
        shared = 100  # |A & B|; each side adds p private shingles: J = shared / (shared + 2p)
        private = round(shared * (1 - s) / (2 * s))
        hits = 0
        for _ in range(pairs):
            pool = rng.integers(0, 2**64, size=shared + 2 * private, dtype=np.uint64)
            a = hasher.signature_of(pool[:shared + private])
            b = hasher.signature_of(np.concatenate([pool[:shared], pool[shared + private:]]))
            hits += any(ka == kb for ka, kb in zip(minhash.band_keys(a, cfg.rows), minhash.band_keys(b, cfg.rows)))
        j = shared / (shared + 2 * private)
        p = minhash.candidate_probability(j, cfg.bands, cfg.rows)
        sigma = math.sqrt(max(p * (1 - p), 1e-3) / pairs)
        assert abs(hits / pairs - p) <= 4 * sigma + 1e-9, (s, hits / pairs, p)


def test_generated_near_duplicate_texts_have_the_planned_jaccard():
    hasher = minhash.MinHasher(minhash.MinHashConfig())
    for s in (0.5, 0.8, 0.95):
        a, b = synthetic.near_duplicate_pair(random.Random(int(s * 100)), s)
        sa, sb = set(hasher.shingles(a).tolist()), set(hasher.shingles(b).tolist())
        assert len(sa & sb) / len(sa | sb) == pytest.approx(s, abs=0.01)


def test_signature_is_minimum_of_the_permuted_shingles_and_ignores_case_digits_punctuation():
    hasher = minhash.MinHasher(minhash.MinHashConfig(bands=2, rows=2))
    text = "One two three four five six seven"
    assert np.array_equal(hasher.signature(text), hasher.signature("one, TWO; three four... five six seven!"))
    assert np.array_equal(hasher.signature("a 1 b c d e"), hasher.signature("a 7 b c d e"))  # digits -> 0
    assert hasher.signature("too few words") is None
    with pytest.raises(ValueError, match="bands"):
        minhash.MinHashConfig(bands=0)


def _components_by_simulation(edges, rounds):
    for _ in range(rounds):
        both = {}
        for u, v in edges:
            both.setdefault(u, []).append(v)
            both.setdefault(v, []).append(u)
        edges = [e for item in both.items() for e in dedup.large_star(item)]
        smaller = {}
        for u, v in edges:
            hi, lo = max(u, v), min(u, v)
            smaller.setdefault(hi, []).append(lo)
        edges = sorted({e for item in smaller.items() for e in dedup.small_star(item)})
    return edges


def test_large_star_small_star_converge_to_stars_on_the_smallest_id():
    rng = random.Random(0)
    nodes = [f"d{i:04d}" for i in range(400)]
    path = list(zip(nodes[:200], nodes[1:200]))  # a long chain: the worst case for label propagation
    rng.shuffle(path)
    random_edges = [(rng.choice(nodes[200:]), rng.choice(nodes[200:])) for _ in range(150)]
    edges = [(u, v) for u, v in path + random_edges if u != v]
    expected = dict(dedup.resolve(edges))
    converged = _components_by_simulation(edges, dedup.DEFAULT_ROUNDS)
    assert dict(converged) == expected  # every edge is (node, its component's smallest id)
    assert all(v not in dict(converged) for _, v in converged)


def _check_dedup(docs, rounds, near, exact):
    with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as p:
        drops = p | beam.Create(docs, reshuffle=True) | dedup.NearDuplicates(minhash.MinHashConfig(), rounds)
        assert_that(drops, equal_to(near), label="Near")
        exact_drops = p | "Exact" >> beam.Create(docs) | "E" >> dedup.ExactDuplicates()
        assert_that(exact_drops, equal_to(exact), label="ExactDrops")


def test_beam_clusters_join_chains_and_keep_the_smallest_id_in_any_order():
    rng = random.Random(5)
    # A chain a ~ b ~ c (a and c less similar), an exact copy of a (case aside), an unrelated document.
    base = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=8)) for _ in range(400)]
    a, b, c = base[:300], base[20:320], base[40:340]
    docs = [("doc-c", " ".join(c)), ("doc-b", " ".join(b)), ("doc-a", " ".join(a)),
            ("doc-a-copy", " ".join(a).upper()), ("z-unique", " ".join(base[::-1]))]
    near = [("doc-a-copy", "doc-a"), ("doc-b", "doc-a"), ("doc-c", "doc-a")]
    _check_dedup(docs, 3, near, [("doc-a-copy", "doc-a")])
    _check_dedup(docs[::-1], 0, near, [("doc-a-copy", "doc-a")])  # union-find alone, another order

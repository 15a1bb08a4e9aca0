"""Exact and MinHash-LSH near-duplicate clusters as Beam transforms; one kept document per cluster.

    (id, text) | ExactDuplicates()              -> (id, kept id) for every document to drop
    (id, text) | NearDuplicates(MinHashConfig()) -> (id, kept id) for every document to drop

Exact: documents whose text is equal up to case and whitespace (`exact_key`) form a
cluster. Near: documents sharing any LSH band of their MinHash signatures
(minhash.py) are joined by an edge (each bucket becomes a star on its smallest id),
and clusters are the connected components of those edges over the whole corpus.

Connected components run as `rounds` alternations of Kiveris et al.'s large-star and
small-star steps (2014, "Connected Components in MapReduce and Beyond"; O(log^2 n)
rounds), unrolled in the graph so the job is a fixed DAG on any runner. Each round
is one GroupByKey over edges; the edges shrink to at most one per clustered
document. A last step (`Resolve`) runs union-find over what remains (one edge per
document in a cluster, ids only), so the result is exact even if the rounds have not
fully converged, and counts the edges that still needed it
(`curation:components_unconverged_edges`; 0 when the rounds sufficed).

Every cluster keeps its smallest document id (string order), so the same documents
give the same kept set whatever the runner, sharding or bundle order. Document ids
must be unique (the jobs give `<file>:<line>` to records without one).
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Iterator

import apache_beam as beam

from pipelines.curation import minhash as minhash_lib

NAMESPACE = "curation"
DEFAULT_ROUNDS = 8


def exact_key(text: str) -> bytes:
    """128-bit hash of the text lower-cased with whitespace runs collapsed (digits and punctuation kept)."""
    return hashlib.blake2b(" ".join(text.lower().split()).encode("utf-8"), digest_size=16).digest()


def drop_all_but_smallest(ids: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(id, kept id) for every id of a cluster except the smallest."""
    ids = sorted(set(ids))
    for i in ids[1:]:
        yield i, ids[0]


def star_edges(ids: Iterable[str]) -> Iterator[tuple[str, str]]:
    """A bucket of candidate ids -> edges (smallest, other): a star, not all pairs."""
    ids = sorted(set(ids))
    for i in ids[1:]:
        yield ids[0], i


def large_star(node_and_neighbours) -> Iterator[tuple[str, str]]:
    """Connect every larger neighbour of u to the smallest of u's closed neighbourhood."""
    u, neighbours = node_and_neighbours
    neighbours = set(neighbours)
    m = min(neighbours | {u})
    for v in neighbours:
        if v > u:
            yield v, m


def small_star(node_and_smaller) -> Iterator[tuple[str, str]]:
    """Connect u and its smaller neighbours to the smallest of them."""
    u, smaller = node_and_smaller
    group = set(smaller) | {u}
    m = min(group)
    for v in group:
        if v != m:
            yield v, m


def _both_ways(edge):
    u, v = edge
    return [(u, v), (v, u)]


def _larger_first(edge):
    u, v = edge
    return (u, v) if u > v else (v, u)


def resolve(edges: Iterable[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """Union-find over edges -> (id, smallest id of its component) for every non-smallest id."""
    parent: dict[str, str] = {}

    def find(x):
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:
            parent[x], x = root, parent[x]
        return root

    for u, v in edges:
        ru, rv = find(u), find(v)
        if ru != rv:
            parent[max(ru, rv)] = min(ru, rv)
    for x in list(parent):
        root = find(x)
        if x != root:
            yield x, root


class ConnectedComponents(beam.PTransform):
    """PCollection[(u, v)] undirected edges -> PCollection[(node, smallest node of its component)]
    for every node that is not its component's smallest."""

    def __init__(self, rounds: int = DEFAULT_ROUNDS):
        super().__init__()
        if rounds < 0:
            raise ValueError(f"connected-component rounds must be >= 0, got {rounds}")
        self._rounds = rounds

    def expand(self, edges):
        for r in range(self._rounds):
            edges = (edges
                     | f"LargeStar{r}_BothWays" >> beam.FlatMap(_both_ways)
                     | f"LargeStar{r}_Group" >> beam.GroupByKey()
                     | f"LargeStar{r}" >> beam.FlatMap(large_star)
                     | f"SmallStar{r}_Orient" >> beam.Map(_larger_first)
                     | f"SmallStar{r}_Group" >> beam.GroupByKey()
                     | f"SmallStar{r}" >> beam.FlatMap(small_star)
                     | f"Distinct{r}" >> beam.Distinct())
        unconverged = beam.metrics.Metrics.counter(NAMESPACE, "components_unconverged_edges")

        def resolve_all(_, all_edges):
            all_edges = list(all_edges)
            roots = {v for _, v in all_edges}
            unconverged.inc(sum(u in roots for u, _ in all_edges))  # a parent that has a parent
            yield from resolve(all_edges)

        return (edges
                | "OneKey" >> beam.Map(lambda e: (None, e))
                | "All" >> beam.GroupByKey()
                | "Resolve" >> beam.FlatMapTuple(resolve_all))


class ExactDuplicates(beam.PTransform):
    """PCollection[(id, text)] -> PCollection[(id, kept id)] for every exact duplicate to drop."""

    def expand(self, docs):
        return (docs
                | "Key" >> beam.MapTuple(lambda doc_id, text: (exact_key(text), doc_id))
                | "Group" >> beam.GroupByKey()
                | "DropAllButSmallest" >> beam.FlatMapTuple(lambda _, ids: drop_all_but_smallest(ids)))


class _BandKeys(beam.DoFn):
    def __init__(self, cfg: minhash_lib.MinHashConfig):
        self._cfg = cfg

    def setup(self):
        self._hasher = minhash_lib.MinHasher(self._cfg)

    def process(self, element):
        doc_id, text = element
        sig = self._hasher.signature(text)
        if sig is not None:
            for key in minhash_lib.band_keys(sig, self._cfg.rows):
                yield key, doc_id


class NearDuplicates(beam.PTransform):
    """PCollection[(id, text)] -> PCollection[(id, kept id)] for every near duplicate to drop."""

    def __init__(self, cfg: minhash_lib.MinHashConfig = minhash_lib.MinHashConfig(), rounds: int = DEFAULT_ROUNDS):
        super().__init__()
        self._cfg, self._rounds = cfg, rounds

    def expand(self, docs):
        return (docs
                | "BandKeys" >> beam.ParDo(_BandKeys(self._cfg))
                | "Buckets" >> beam.GroupByKey()
                | "StarEdges" >> beam.FlatMapTuple(lambda _, ids: star_edges(ids))
                | "DistinctEdges" >> beam.Distinct()
                | "Components" >> ConnectedComponents(self._rounds))

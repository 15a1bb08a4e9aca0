"""Batched log-likelihood scoring of (context, continuation) token requests.

lm-eval's `loglikelihood` on our model batch: each request becomes one row whose
targets are `context + continuation` (left-truncated to the model length, keeping
the continuation), inputs are the targets shifted right (0 = start, as in SeqIO's
decoder-only feature converter), and the request's score is the summed
log-likelihood of the continuation positions. Only those positions are scored (the
score function gathers them before the vocabulary projection).

Throughput: requests are sorted by length (longest first, so the first jit
compile is the biggest and memory surprises come early), cut into batches of
`batch_size` rows, and each batch is padded to the smallest bucket length that
holds it. The jitted scorer then compiles once per bucket, and short prompts do not
pay for the longest one. `batch_size=1` is the one-example-at-a-time baseline.

Example (L = 8): context [5, 6], continuation [7]
    decoder_input_tokens  [0, 5, 6, 0, 0, 0, 0, 0]
    decoder_target_tokens [5, 6, 7, 0, 0, 0, 0, 0]
    decoder_loss_weights  [0, 0, 1, 0, 0, 0, 0, 0]   (continuation only)
    decoder_segment_ids   [1, 1, 1, 0, 0, 0, 0, 0]
    decoder_positions     [0, 1, 2, 0, 0, 0, 0, 0]
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

ScoreFn = Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray]
"""(batch, positions [B, P]) -> [B, P] log p(decoder_target_tokens) at those positions."""


@dataclasses.dataclass(frozen=True)
class Request:
    """One scoring request; `features` are per-row extras (e.g. media) of fixed shape.

    `starts_document`: the context begins a document, so the first token is predicted
    from the start token 0 (as in training). False for a window inside a document:
    its first context token is then only an input (lm-eval's rolling windows).
    """
    context: Sequence[int]
    continuation: Sequence[int]
    keep_token_scores: bool = False
    features: Mapping[str, np.ndarray] | None = None
    starts_document: bool = True


@dataclasses.dataclass(frozen=True)
class Score:
    """Summed continuation log-likelihood (nats), its token count, optional per-token values."""
    loglikelihood: float
    num_tokens: int
    token_logliks: np.ndarray | None = None


def default_buckets(max_length: int, smallest: int = 32) -> tuple[int, ...]:
    """Powers of two from `smallest` below `max_length`, then `max_length` itself."""
    out, b = [], smallest
    while b < max_length:
        out.append(b)
        b *= 2
    return tuple(out) + (max_length,)


def make_row(req: Request, max_length: int) -> tuple[list[int], list[int], int]:
    """(inputs, targets, n_continuation) for one request, left-truncated to max_length."""
    if not req.continuation:
        raise ValueError("a request needs a non-empty continuation to score")
    if len(req.continuation) > max_length:
        raise ValueError(
            f"continuation of {len(req.continuation)} tokens exceeds max_length={max_length}; "
            "split it into windows (see `rolling_requests`)")
    full = list(req.context) + list(req.continuation)
    if req.starts_document:
        full = [0] + full
    if len(full) < 2:
        raise ValueError("a mid-document request needs at least one context token")
    window = full[-(max_length + 1):]
    return window[:-1], window[1:], len(req.continuation)


def rolling_requests(tokens: Sequence[int], max_length: int, context: int = 0,
                     keep_token_scores: bool = False) -> list[Request]:
    """Windows that score every token of a document exactly once.

    Each window predicts up to `max_length - context` new tokens, seeing up to
    `context` earlier tokens plus the one shifted in as input (lm-eval's
    `get_rolling_token_windows`); only windows that reach the document start begin
    with the start token 0.
    """
    if not 0 <= context < max_length:
        raise ValueError(f"context must be in [0, max_length), got {context} (max_length={max_length})")
    step = max_length - context
    reqs = []
    for start in range(0, len(tokens), step):
        first = max(0, start - context - 1)
        reqs.append(Request(tokens[first:start], tokens[start:start + step], keep_token_scores,
                            starts_document=first == 0))
    return reqs


def _pow2(n: int, smallest: int) -> int:
    """Smallest power-of-two multiple of `smallest` that is >= n."""
    out = smallest
    while out < n:
        out *= 2
    return out


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """Smallest bucket >= length."""
    for b in buckets:
        if b >= length:
            return b
    raise ValueError(f"length {length} exceeds the largest bucket {buckets[-1]}")


def plan_batches(lengths: Sequence[int], batch_size: int,
                 buckets: Sequence[int]) -> list[tuple[list[int], int]]:
    """[(request indices, bucket length)]: longest first, `batch_size` rows per batch."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    plan = []
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        plan.append((idx, bucket_for(max(lengths[i] for i in idx), buckets)))
    return plan


def build_batch(rows: Sequence[tuple[list[int], list[int], int]], length: int, batch_size: int,
                features: Sequence[Mapping[str, np.ndarray] | None] = ()) -> dict[str, np.ndarray]:
    """Model batch [batch_size, length] from rows; padding rows are all zeros."""
    shape = (batch_size, length)
    batch = {k: np.zeros(shape, np.int32) for k in (
        "decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids",
        "decoder_positions")}
    batch["decoder_loss_weights"] = np.zeros(shape, np.float32)
    for r, (inp, tgt, n_cont) in enumerate(rows):
        n = len(tgt)
        batch["decoder_input_tokens"][r, :n] = inp
        batch["decoder_target_tokens"][r, :n] = tgt
        batch["decoder_segment_ids"][r, :n] = 1
        batch["decoder_positions"][r, :n] = np.arange(n)
        batch["decoder_loss_weights"][r, n - n_cont:n] = 1.0
    present = [f for f in features if f]
    if present:
        for key in present[0]:
            ref = np.asarray(present[0][key])
            arr = np.zeros((batch_size,) + ref.shape, ref.dtype)
            for r, f in enumerate(features):
                if f:
                    arr[r] = f[key]
            batch[key] = arr
    return batch


def in_request_order(batches: Iterator[tuple[Sequence[int], Sequence[Score]]], n: int) -> list[Score]:
    """(request indices, scores) batches, as `iter_scores` yields them -> scores in request order."""
    result: list[Score | None] = [None] * n
    for idx, scores in batches:
        for i, s in zip(idx, scores):
            result[i] = s
    return result  # type: ignore[return-value]


class BatchedScorer:
    """Scores requests with `score_fn`, `batch_size` rows per call, bucketed lengths."""

    def __init__(self, score_fn: ScoreFn, max_length: int, batch_size: int,
                 buckets: Sequence[int] | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.score_fn = score_fn
        self.max_length = max_length
        self.batch_size = batch_size
        self.buckets = tuple(buckets) if buckets else default_buckets(max_length)
        if self.buckets[-1] != max_length:
            raise ValueError(f"the largest bucket must equal max_length={max_length}, "
                             f"got buckets={self.buckets}")

    def iter_scores(self, requests: Sequence[Request]) -> Iterator[tuple[list[int], list[Score]]]:
        """Yields (request indices, their scores) batch by batch (longest first)."""
        rows = [make_row(r, self.max_length) for r in requests]
        plan = plan_batches([len(r[1]) for r in rows], self.batch_size, self.buckets)
        for idx, length in plan:
            batch = build_batch([rows[i] for i in idx], length, self.batch_size,
                                [requests[i].features for i in idx])
            # The last n_cont target positions of each row, padded to a power of two
            # (few jit shapes) by repeating the row's last position.
            p = min(_pow2(max(rows[i][2] for i in idx), 1), length)
            positions = np.zeros((self.batch_size, p), np.int32)
            for r, i in enumerate(idx):
                n, n_cont = len(rows[i][1]), rows[i][2]
                positions[r] = np.minimum(n - n_cont + np.arange(p), n - 1)
            ll = np.asarray(self.score_fn(batch, positions), dtype=np.float64)
            if ll.shape != (self.batch_size, p):
                raise ValueError(f"score_fn returned shape {ll.shape}, expected "
                                 f"{(self.batch_size, p)} (one value per position)")
            out = []
            for r, i in enumerate(idx):
                n_cont = rows[i][2]
                tok = ll[r, :n_cont]
                out.append(Score(float(tok.sum()), n_cont,
                                 tok.copy() if requests[i].keep_token_scores else None))
            yield idx, out

    def score(self, requests: Sequence[Request]) -> list[Score]:
        """Scores of all requests, in request order."""
        return in_request_order(self.iter_scores(requests), len(requests))

    def num_batches(self, requests: Sequence[Request]) -> int:
        return -(-len(requests) // self.batch_size)


# --------------------------------------------------------------------------------------
# Shared-context scoring (multiple choice): one row per context instead of one per choice.

CandidateFn = Callable[[dict[str, np.ndarray], np.ndarray, np.ndarray], np.ndarray]
"""(batch, positions [B, P], candidate ids [B, P, C]) -> log-probs [B, P, C] of each
candidate as the next token after input position p (log-softmax over the vocabulary)."""


def covering_prefixes(continuations: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Fewest token prefixes whose rows predict every token of every continuation.

    Continuation c is covered by a row ending in prefix p when c[:-1] is a prefix of p
    (its tokens are then all predicted at positions of that row). Returns the maximal
    c[:-1] under the prefix order, e.g. for [[276, 336], [980], [1611], [276, 900]]
    just [(276,)]: one row scores all four choices.
    """
    needs = sorted({tuple(c[:-1]) for c in continuations}, key=len, reverse=True)
    rows: list[tuple[int, ...]] = []
    for n in needs:
        if not any(r[:len(n)] == n for r in rows):
            rows.append(n)
    return rows


class SharedContextScorer:
    """lm-eval's multiple-choice trick on our model: requests that share a context are
    scored from one row (context + a covering prefix), reading the next-token
    distribution at each continuation position, instead of one full row per choice.

    Same results as `BatchedScorer` (up to float rounding); rows are still sorted by
    length, batched and bucketed.
    """

    def __init__(self, candidate_fn: CandidateFn, max_length: int, batch_size: int,
                 buckets: Sequence[int] | None = None):
        self.candidate_fn = candidate_fn
        self.max_length = max_length
        self.batch_size = batch_size
        self.buckets = tuple(buckets) if buckets else default_buckets(max_length)

    def _rows(self, requests: Sequence[Request]):
        """[(tokens, [(request index, positions, ids)])] grouped by context."""
        groups: dict[tuple[tuple[int, ...], bool], list[int]] = {}
        for i, r in enumerate(requests):
            if r.features or r.keep_token_scores:
                raise ValueError("SharedContextScorer scores text-only requests without "
                                 "token scores; use BatchedScorer for these")
            if len(r.continuation) > self.max_length:
                raise ValueError(f"continuation of {len(r.continuation)} tokens exceeds "
                                 f"max_length={self.max_length}")
            groups.setdefault((tuple(r.context), r.starts_document), []).append(i)
        rows = []
        for (ctx, starts), members in groups.items():
            head = ([0] if starts else []) + list(ctx)
            if not head:
                raise ValueError("a mid-document request needs at least one context token")
            todo = list(members)
            for prefix in covering_prefixes([requests[i].continuation for i in members]):
                full = head + list(prefix)
                cut = max(0, len(full) - self.max_length)
                # Continuation token k is predicted at the input position of the token
                # before it: the last context token for k = 0.
                first = len(head) - 1 - cut
                jobs, rest = [], []
                for i in todo:
                    c = tuple(requests[i].continuation)
                    (jobs if prefix[:len(c) - 1] == c[:-1] else rest).append((i, c))
                todo = [i for i, _ in rest]
                rows.append((full[cut:], first, jobs))
        return rows

    def score(self, requests: Sequence[Request]) -> list[Score]:
        """Scores of all requests, in request order."""
        return in_request_order(self.iter_scores(requests), len(requests))

    def num_batches(self, requests: Sequence[Request]) -> int:
        return -(-len(self._rows(requests)) // self.batch_size)

    def iter_scores(self, requests: Sequence[Request]) -> Iterator[tuple[list[int], list[Score]]]:
        rows = self._rows(requests)
        plan = plan_batches([len(r[0]) for r in rows], self.batch_size, self.buckets)
        for ridx, length in plan:
            # Padded to powers of two so the jitted fn sees few distinct shapes.
            p_max = _pow2(max(len(c) for i in ridx for _, c in rows[i][2]), 2)
            c_max = _pow2(max(len(rows[i][2]) for i in ridx), 4)
            batch = build_batch([(rows[i][0], rows[i][0], 0) for i in ridx], length,
                                self.batch_size)
            positions = np.zeros((self.batch_size, p_max), np.int32)
            ids = np.zeros((self.batch_size, p_max, c_max), np.int32)
            for b, i in enumerate(ridx):
                tokens, first, jobs = rows[i]
                positions[b] = np.minimum(first + np.arange(p_max), len(tokens) - 1)
                for c, (_, toks) in enumerate(jobs):
                    ids[b, :len(toks), c] = toks
            lp = np.asarray(self.candidate_fn(batch, positions, ids), dtype=np.float64)
            out_idx, out = [], []
            for b, i in enumerate(ridx):
                for c, (req_i, toks) in enumerate(rows[i][2]):
                    out_idx.append(req_i)
                    out.append(Score(float(lp[b, :len(toks), c].sum()), len(toks)))
            yield out_idx, out

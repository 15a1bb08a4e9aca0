"""Whole-book evaluation with memory (PG-19 protocol): each held-out book is read start
to end in consecutive segments, memory carried, every token scored once.

    result = evaluate_books(model, params, [tokens_a, tokens_b], segment_len=512,
                            num_bytes=[...], num_words=[...])
    result.bpb, result.word_perplexity, result.nll_by_position(edges)

`memory=False` scores the same segments with empty memory each time (what the model
sees without recurrence). Books run side by side, one row each (the last segments of
shorter books are padding). Token NLLs are kept per book, so NLL by position within
the book (the power-law plot) is a binning away.
Legend: B books, T segment length.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any, Sequence

import gin
import jax
import numpy as np

from model import eval as eval_lib
from model import fs
from model.config import EOS_ID
from model.nn.memory import empty_memory


@dataclasses.dataclass
class BookEval:
    nll: list[np.ndarray]  # per book: nats per target token (book tokens + EOS)
    num_bytes: int
    num_words: int

    @property
    def total_nll(self) -> float:
        return float(sum(x.sum() for x in self.nll))

    @property
    def num_tokens(self) -> int:
        return int(sum(x.size for x in self.nll))

    @property
    def bpb(self) -> float:
        return self.total_nll / math.log(2) / max(self.num_bytes, 1)

    @property
    def word_perplexity(self) -> float:
        return math.exp(self.total_nll / max(self.num_words, 1))

    @property
    def token_nll(self) -> float:
        return self.total_nll / max(self.num_tokens, 1)

    def nll_by_position(self, edges: Sequence[int]) -> list[float]:
        """Mean NLL of tokens at book positions in [edges[i], edges[i+1])."""
        pos = np.concatenate([np.arange(x.size) for x in self.nll])
        nll = np.concatenate(self.nll)
        return [float(nll[(pos >= a) & (pos < b)].mean()) if np.any((pos >= a) & (pos < b))
                else float("nan") for a, b in zip(edges[:-1], edges[1:])]


@functools.partial(jax.jit, static_argnums=0)
def _score_segment(model, params, batch, memory):
    """-> (log p(target) [B, T], advanced memory)."""
    (lse, target_logit, _), _, state = model._ce_parts(params, batch, False, memory)
    return target_logit - lse, state.get("memory")


def book_segments(books: Sequence[np.ndarray], segment_len: int):
    """Yields segment batches [B, T] of the books side by side (see module doc)."""
    n = max(len(b) for b in books) + 1
    num = -(-n // segment_len)
    total = num * segment_len
    inputs = np.zeros((len(books), total), np.int32)
    targets = np.zeros_like(inputs)
    seg = np.zeros_like(inputs)
    for r, b in enumerate(books):
        k = len(b) + 1
        inputs[r, 1:k] = b
        targets[r, :k] = np.append(b, EOS_ID)
        seg[r, :k] = r + 1
    pos = np.broadcast_to(np.arange(total, dtype=np.int32), inputs.shape)
    for i in range(num):
        s = slice(i * segment_len, (i + 1) * segment_len)
        yield {"decoder_input_tokens": inputs[:, s], "decoder_target_tokens": targets[:, s],
               "decoder_segment_ids": seg[:, s], "decoder_positions": np.array(pos[:, s]),
               "decoder_loss_weights": (seg[:, s] != 0).astype(np.int32)}


def evaluate_books(model: Any, params: Any, books: Sequence[np.ndarray], segment_len: int,
                   num_bytes: Sequence[int], num_words: Sequence[int], *,
                   memory: bool = True) -> BookEval:
    """Scores every token of every book once, reading each start to end (see module doc)."""
    scores, mem, empty = [], None, None
    for batch in book_segments(books, segment_len):
        if empty is None and model.config.memory is not None:
            empty = empty_memory(model, params, batch)
            mem = empty
        logp, new_mem = _score_segment(model, params, batch, mem)
        mem = new_mem if memory else empty
        scores.append(np.asarray(logp))
    logp = np.concatenate(scores, axis=1)
    nll = [-logp[r, :len(b) + 1] for r, b in enumerate(books)]
    return BookEval(nll, int(sum(num_bytes)), int(sum(num_words)))


@gin.configurable
def evaluate_memory(*, model: Any = gin.REQUIRED, books_fn: Any = gin.REQUIRED,
                    checkpoint_path: str | None = gin.REQUIRED, output_dir: str = gin.REQUIRED,
                    segment_len: int = gin.REQUIRED, step: int | None = None,
                    position_edges: Sequence[int] = (0, 128, 512, 2048, 8192, 32768, 131072,
                                                     1 << 30)) -> dict[str, Any]:
    """Whole-book eval of a checkpoint (None: untrained) on `books_fn()` (a list of dicts
    tokens / num_bytes / num_words / name, e.g. tasks/long_books.py:held_out_books), with
    memory carried and, for a memory model, without; writes output_dir/memory_eval.json."""
    params, step = eval_lib.load_params(model, checkpoint_path, step, 0, segment_len)
    params = jax.device_get(params)
    books = list(books_fn())
    args = ([b["tokens"] for b in books], segment_len, [b["num_bytes"] for b in books],
            [b["num_words"] for b in books])
    runs = {"memory": evaluate_books(model, params, *args)}
    if model.config.memory is not None:
        runs["no_memory"] = evaluate_books(model, params, *args, memory=False)
    out = {"step": step, "books": [b["name"] for b in books], "segment_len": segment_len,
           "position_edges": list(position_edges)}
    for name, r in runs.items():
        out[name] = {"bpb": r.bpb, "word_perplexity": r.word_perplexity,
                     "token_nll": r.token_nll, "num_tokens": r.num_tokens,
                     "nll_by_position": r.nll_by_position(position_edges)}
        print(f"{name}: bpb {r.bpb:.4f}, word perplexity {r.word_perplexity:.2f} over "
              f"{r.num_tokens} tokens of {len(books)} book(s)", flush=True)
    fs.makedirs(output_dir)
    fs.write_text(fs.join(output_dir, "memory_eval.json"), json.dumps(out, indent=1))
    return out


"""Tokenizing for eval inputs: the project vocabulary and lm-eval's pair encoding."""
from __future__ import annotations

from typing import Callable, Sequence

import gin


def _vocab(vocab_path: str | None):
    from tasks import vocabulary
    return vocabulary.get_vocabulary(*([vocab_path] if vocab_path else []))


def encode_pair(encode: Callable[[str], list[int]], context: str,
                continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's `_encode_pair`: trailing spaces of the context move to the
    continuation; the continuation ids are those of (context + continuation) past
    the context's ids, so the split matches how the joined text tokenizes."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode(context + continuation)
    ctx = encode(context)
    return ctx, whole[len(ctx):]


@gin.configurable(module="eval_inputs")
def tokenizer(vocab_path: str | None = None) -> Callable[[str], list[int]]:
    """str -> token ids (no EOS) with the project vocabulary."""
    vocab = _vocab(vocab_path)
    return lambda text: list(vocab.encode(text))


@gin.configurable(module="eval_inputs")
def detokenizer(vocab_path: str | None = None) -> Callable[[Sequence[int]], str]:
    """token ids -> str with the project vocabulary (ids after EOS are dropped)."""
    vocab = _vocab(vocab_path)
    return lambda ids: vocab.decode([int(i) for i in ids])


"""Language-modelling metrics: bits per byte and token perplexity.

    bpb        = total NLL in nats / (total UTF-8 bytes * ln 2)
    perplexity = exp(total NLL / total scored tokens)

Bytes are those of the text the scored tokens stand for (per document, the UTF-8
length of its text), so bpb compares across tokenizers; perplexity does not.

Example per-document record (what `aggregate` takes):
    {"nll": 812.4, "num_tokens": 300, "num_bytes": 1234}
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping


def bits_per_byte(total_nll_nats: float, total_bytes: int) -> float:
    """Total NLL (nats) over the text's UTF-8 bytes, in bits."""
    if total_bytes <= 0:
        raise ValueError(f"total_bytes must be positive, got {total_bytes}")
    return float(total_nll_nats / (total_bytes * math.log(2)))


def perplexity(total_nll_nats: float, num_tokens: int) -> float:
    """exp(mean NLL per token)."""
    if num_tokens <= 0:
        raise ValueError(f"num_tokens must be positive, got {num_tokens}")
    return float(math.exp(total_nll_nats / num_tokens))


def aggregate(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Corpus bpb / perplexity from per-document {nll, num_tokens, num_bytes}."""
    nll = tokens = nbytes = n = 0
    for r in records:
        nll += float(r["nll"])
        tokens += int(r["num_tokens"])
        nbytes += int(r["num_bytes"])
        n += 1
    if n == 0:
        raise ValueError("no documents to aggregate")
    return {
        "bits_per_byte": bits_per_byte(nll, nbytes),
        "token_perplexity": perplexity(nll, tokens),
        "nll_per_token": nll / tokens,
        "total_nll_nats": nll, "num_tokens": tokens, "num_bytes": nbytes, "n": n,
    }

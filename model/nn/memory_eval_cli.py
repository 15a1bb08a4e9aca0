"""Command line of the whole-book eval (model/nn/memory_eval.py's evaluate_memory).

    python -m model.nn.memory_eval_cli --gin_file=gin/experiments/memory_xl.gin \
      --gin.MODEL_DIR=/tmp/mem_xl --gin.CACHE_DIR=/tmp/books_cache

A module of its own so that `evaluate_memory` is registered with gin once (not also
as __main__). Writes MODEL_DIR/memory_eval.json and prints bpb / word perplexity.
"""
from __future__ import annotations

import sys
from typing import Sequence

from model import gin_flags
import model.train  # noqa: F401  (registers the configurables the training gin files bind)
from model.nn import memory_eval


def main(argv: Sequence[str] | None = None) -> int:
    """python -m model.nn.memory_eval_cli --gin_file=gin/experiments/memory_xl.gin ..."""
    try:
        gin_flags.parse_gin_flags(sys.argv[1:] if argv is None else argv,
                                  "Whole-book (PG-19 protocol) eval with long-range memory.")
    except gin_flags.GinFlagError as e:
        print(f"gin configuration error: {e}", file=sys.stderr)
        return 2
    memory_eval.evaluate_memory()
    return 0


if __name__ == "__main__":
    sys.exit(main())

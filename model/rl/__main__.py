"""`python -m model.rl --gin_file=gin/rl/memory_chain.gin --gin.MODEL_DIR=...` (see train.py)."""
from __future__ import annotations

import logging
import sys
from typing import Sequence

from model import gin_flags
from model.rl import train


def main(argv: Sequence[str] | None = None) -> int:
    logging.getLogger("tapestry").setLevel(logging.INFO)
    try:
        gin_flags.parse_gin_flags(argv, "Train a V-MPO agent (gin flags, as model.train).")
    except (ValueError, OSError, gin_flags.GinFlagError) as e:
        print(f"gin configuration error: {e}", file=sys.stderr)
        return 2
    rows = train.train_rl()
    if rows:
        last = rows[-1]
        print(f"done: iteration {last['step']}, env steps {last['env_steps']}, "
              f"mean return {last['mean_return']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Standard errors, as lm-evaluation-harness computes them.

- `mean_stderr`: sample standard deviation (ddof=1) / sqrt(n) (lm-eval `mean_stderr`).
- `pooled_stderr`: stderr of a size-weighted (micro) group mean from the members'
  stderrs (lm-eval `pooled_sample_stderr`, used for MMLU categories and the total).
- `macro_stderr`: stderr of an unweighted mean of independent estimates,
  sqrt(sum se_i^2) / k (lm-eval reports no macro stderr; this is the textbook one).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def mean_stderr(values: Sequence[float]) -> float:
    """Standard error of the mean with the n-1 sample deviation; nan for n < 2."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return float("nan")
    return float(np.std(x, ddof=1) / math.sqrt(x.size))


def pooled_stderr(stderrs: Sequence[float], sizes: Sequence[int]) -> float:
    """lm-eval's `pooled_sample_stderr`: stderr of the size-weighted mean of groups."""
    if len(stderrs) != len(sizes):
        raise ValueError(f"{len(stderrs)} stderrs but {len(sizes)} sizes; pass one size per stderr")
    total = sum(sizes)
    if total - len(sizes) <= 0:
        return float("nan")
    var = sum((n - 1) * se**2 * n for se, n in zip(stderrs, sizes)) / (total - len(sizes))
    return float(math.sqrt(var / total))


def macro_stderr(stderrs: Sequence[float]) -> float:
    """Stderr of the unweighted mean of k independent estimates."""
    if not stderrs:
        return float("nan")
    return float(math.sqrt(sum(se**2 for se in stderrs)) / len(stderrs))

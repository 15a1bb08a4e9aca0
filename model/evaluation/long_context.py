"""Long context: needle-in-a-haystack grids and NLL by token position.

NIAH: for each (context length, depth) cell a prompt is built from a public-domain
haystack with a needle sentence inserted at `depth` (fraction of the haystack) and a
question appended (`tasks/eval_inputs.niah_prompts`, the data side); the cell's recall
is the fraction of trials whose output holds the needle's answer.

NLL by position (Gemini 1.5 report, Fig. "cumulative average NLL"): for documents
scored in one window, the mean NLL at each position over documents, then its
cumulative average C(x) = mean_{t <= x} NLL(t), fit with L(x) = a * x**b + c
(scipy `curve_fit`), x = 1-based token position.

Example:
    niah_grid([{"context_length": 128, "depth": 0.5, "recalled": True}])["recall"] == [[1.0]]
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np


def needle_recalled(output: str, answer: str) -> bool:
    """True when the answer string appears in the model output (whitespace-insensitive)."""
    return "".join(answer.split()).lower() in "".join(output.split()).lower()


def niah_grid(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """records: {"context_length", "depth", "recalled"} -> recall per cell.

    Returns {"context_lengths": [...], "depths": [...], "recall": [[depth x length]],
    "mean_recall", "n"}; cells with no trial are None.
    """
    cells: dict[tuple[int, float], list[float]] = {}
    for r in records:
        cells.setdefault((int(r["context_length"]), float(r["depth"])), []).append(
            float(bool(r["recalled"])))
    if not cells:
        raise ValueError("no NIAH records")
    lengths = sorted({k[0] for k in cells})
    depths = sorted({k[1] for k in cells})
    grid = [[float(np.mean(cells[(l, d)])) if (l, d) in cells else None for l in lengths]
            for d in depths]
    all_vals = [v for vs in cells.values() for v in vs]
    return {"context_lengths": lengths, "depths": depths, "recall": grid,
            "mean_recall": float(np.mean(all_vals)), "n": len(all_vals)}


def mean_nll_by_position(token_nlls: Sequence[Sequence[float]]) -> np.ndarray:
    """Mean NLL at each position over documents (ragged: each position averages the
    documents long enough to have it). Returns [T_max] float64."""
    if not token_nlls:
        raise ValueError("no documents")
    t_max = max(len(x) for x in token_nlls)
    total = np.zeros(t_max)
    count = np.zeros(t_max)
    for x in token_nlls:
        total[: len(x)] += np.asarray(x, dtype=np.float64)
        count[: len(x)] += 1
    return total / count


def cumulative_average(values: Sequence[float]) -> np.ndarray:
    """C(x) = mean(values[:x]) for x = 1..T."""
    v = np.asarray(values, dtype=np.float64)
    return np.cumsum(v) / np.arange(1, v.size + 1)


def power_law(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """L(x) = a * x**b + c."""
    return a * np.power(x, b) + c


def fit_power_law(curve: Sequence[float]) -> dict[str, float]:
    """Least-squares fit of L(x) = a*x**b + c to curve[x-1], x = 1..T; returns a, b, c, r2."""
    from scipy.optimize import curve_fit  # scipy is heavy; only the fit needs it.

    y = np.asarray(curve, dtype=np.float64)
    if y.size < 4:
        raise ValueError(f"need at least 4 positions to fit 3 parameters, got {y.size}")
    x = np.arange(1, y.size + 1, dtype=np.float64)
    p0 = (max(y[0] - y[-1], 1e-3), -0.5, float(y[-1]))
    # b is bounded to a decaying/flat range so x**b cannot overflow during the search.
    with np.errstate(over="ignore", invalid="ignore"):
        params, _ = curve_fit(power_law, x, y, p0=p0, maxfev=20000,
                              bounds=([-np.inf, -5.0, -np.inf], [np.inf, 1.0, np.inf]))
    resid = y - power_law(x, *params)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else float("nan")
    return {"a": float(params[0]), "b": float(params[1]), "c": float(params[2]), "r2": r2}

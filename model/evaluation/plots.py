"""Report plots as PNG bytes (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

import numpy as np


def _figure(width: float = 6.4, height: float = 3.6):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    return plt, fig, ax


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def accuracy_bars(groups: Mapping[str, Mapping[str, float]], *, title: str,
                  chance: float | None = None, key: str = "acc") -> bytes:
    """Bar chart of accuracy per group with ±1 stderr error bars (and a chance line)."""
    plt, fig, ax = _figure()
    names = list(groups)
    vals = [groups[n][key] for n in names]
    errs = [np.nan_to_num(groups[n].get(f"{key}_stderr", 0.0) or 0.0) for n in names]
    ax.bar(range(len(names)), vals, yerr=errs, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names],
                  rotation=30 if len(names) > 5 else 0, ha="right" if len(names) > 5 else "center")
    if chance is not None:
        ax.axhline(chance, color="#c44e52", ls="--", label=f"chance ({chance:.2f})")
        ax.legend()
    ax.set_ylim(0, 1)
    ax.set_ylabel(key)
    ax.set_title(title)
    return _png(plt, fig)


def histogram(values: Sequence[float], *, title: str, xlabel: str, bins: int = 20) -> bytes:
    """Histogram (e.g. per-utterance WER)."""
    plt, fig, ax = _figure()
    ax.hist(np.asarray(values, dtype=np.float64), bins=bins, color="#55a868")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)
    return _png(plt, fig)


def heatmap(grid: Sequence[Sequence[float | None]], xlabels: Sequence[Any],
            ylabels: Sequence[Any], *, title: str, xlabel: str, ylabel: str) -> bytes:
    """Heatmap in [0, 1] with the value written in each cell (NIAH recall)."""
    plt, fig, ax = _figure()
    arr = np.array([[np.nan if v is None else v for v in row] for row in grid], dtype=np.float64)
    im = ax.imshow(arr, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(xlabels)), [str(x) for x in xlabels])
    ax.set_yticks(range(len(ylabels)), [f"{y:g}" if isinstance(y, float) else str(y) for y in ylabels])
    for i in range(arr.shape[0]):
        for j in range(arr.shape[1]):
            if not np.isnan(arr[i, j]):
                ax.text(j, i, f"{arr[i, j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _png(plt, fig)


def curve_with_fit(y: Sequence[float], fit: Mapping[str, float] | None, *, title: str,
                   xlabel: str, ylabel: str) -> bytes:
    """Curve over x = 1..T (log x axis) and its power-law fit a*x**b + c."""
    plt, fig, ax = _figure()
    y = np.asarray(y, dtype=np.float64)
    x = np.arange(1, y.size + 1)
    ax.plot(x, y, label="measured", color="#4c72b0")
    if fit:
        ax.plot(x, fit["a"] * x ** fit["b"] + fit["c"], "--", color="#c44e52",
                label=f"fit {fit['a']:.3g}·x^{fit['b']:.3g} + {fit['c']:.3g} (R²={fit['r2']:.3f})")
        ax.legend()
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _png(plt, fig)


def lines(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str,
          xlabel: str, ylabel: str, logy: bool = False) -> bytes:
    """Several (x, y) series on one axis (e.g. training curves)."""
    plt, fig, ax = _figure()
    for name, (x, y) in series.items():
        ax.plot(x, y, label=name)
    if len(series) > 1:
        ax.legend()
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _png(plt, fig)

"""Training curves for the report, from the trainer's MODEL_DIR/metrics.jsonl.

    evaluate.extra_sections = [@training_curves_section]
    training_curves_section.model_dir = %CHECKPOINT_PATH

adds a section with loss (train and eval splits), MoE auxiliary losses, and per MoE
layer the expert usage over time plus a table of the last training window: each
expert's mean usage as a fraction of its fair share (1/E); an expert under
`starved_fraction` of its fair share is flagged.

Rows look like {"step": 200, "split": "train", "loss": 3.2, "moe_aux_loss": 1.01,
"moe_layer_0/expert_usage": [0.26, 0.24, 0.25, 0.25], ...}.
"""
from __future__ import annotations

from typing import Any, Mapping

import gin
import numpy as np

from model import fs, metric_writers
from model.evaluation import plots
from model.evaluation.report import Figure, Section, Table


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def expert_usage_summary(rows: list[dict[str, Any]], window: int = 10,
                         starved_fraction: float = 0.05) -> dict[str, dict[str, Any]]:
    """Per MoE layer: mean usage over the last `window` logged train steps, as fractions
    of the fair share 1/E, and whether any expert is below `starved_fraction` of it."""
    out = {}
    keys = sorted({k for r in rows for k in r if k.endswith("/expert_usage")})
    for key in keys:
        vals = [r[key] for r in rows if isinstance(r.get(key), list)][-window:]
        if not vals:
            continue
        mean = np.mean(np.asarray(vals, dtype=np.float64), axis=0)
        share = mean / mean.sum() * mean.size if mean.sum() > 0 else mean
        out[key.rsplit("/", 1)[0]] = {
            "usage": mean.tolist(), "fraction_of_fair_share": share.tolist(),
            "min_fraction_of_fair_share": float(share.min()),
            "starved": bool(share.min() < starved_fraction), "window": len(vals)}
    return out


@gin.configurable
def training_curves_section(out_dir: fs.PathLike, results: Mapping[str, Any], *,
                            model_dir: str | None = gin.REQUIRED, window: int = 10,
                            starved_fraction: float = 0.05) -> list[Section]:
    """The report section (a SectionsFn for `evaluate.extra_sections`)."""
    del out_dir, results
    if not model_dir:
        return []
    path = fs.path(model_dir) / "metrics.jsonl"  # local or gs:// / s3://
    if not path.exists():
        return [Section("Training curves", [f"No {path}: nothing to plot."])]
    train = metric_writers.read_jsonl(path, "train")
    evals = [r for r in metric_writers.read_jsonl(path) if r.get("split") not in (None, "train")]
    figures = []
    loss = {"train loss": _series(train, "loss")}
    for split in sorted({r["split"] for r in evals}):
        loss[f"{split} loss"] = _series([r for r in evals if r["split"] == split], "loss")
    loss = {k: v for k, v in loss.items() if v[0]}
    if loss:
        figures.append(Figure("training_loss", "Loss over training steps",
                              plots.lines(loss, title="loss", xlabel="step", ylabel="loss")))
    aux = {k: _series(train, k) for k in ("moe_aux_loss", "moe_z_loss")}
    aux = {k: v for k, v in aux.items() if v[0] and any(v[1])}
    if aux:
        figures.append(Figure("training_aux_loss", "MoE auxiliary losses",
                              plots.lines(aux, title="MoE aux losses", xlabel="step", ylabel="loss")))
    tables = []
    usage = expert_usage_summary(train, window, starved_fraction)
    for layer in usage:
        key = f"{layer}/expert_usage"
        rows = [r for r in train if isinstance(r.get(key), list)]
        steps = [r["step"] for r in rows]
        arr = np.asarray([r[key] for r in rows], dtype=np.float64)
        series = {f"expert {e}": (steps, arr[:, e].tolist()) for e in range(arr.shape[1])}
        figures.append(Figure(f"training_{layer}_usage", f"{layer}: expert usage over steps",
                              plots.lines(series, title=f"{layer} expert usage", xlabel="step",
                                          ylabel="fraction of routed tokens")))
    if usage:
        tables.append(Table(
            ("MoE layer", "min usage / fair share", "starved (< %g)" % starved_fraction,
             "usage / fair share per expert"),
            [(layer, u["min_fraction_of_fair_share"], "yes" if u["starved"] else "no",
              " ".join(f"{x:.2f}" for x in u["fraction_of_fair_share"])) for layer, u in usage.items()]))
    last = train[-1] if train else {}
    paragraphs = [f"From {path} ({len(train)} train logs; last step {last.get('step')}, "
                  f"loss {last.get('loss', float('nan')):.4f})."]
    if usage:
        paragraphs.append(f"Expert usage: mean over the last {window} logged train steps.")
    return [Section("Training curves", paragraphs, tables, figures)]

"""Metrics out: JSONL, TensorBoard event files, a terminal progress bar, config.gin.

    MODEL_DIR/metrics.jsonl          one JSON object per log: {"step", "split", ...}
    MODEL_DIR/tensorboard/<split>/   event files (`tensorboard --logdir MODEL_DIR`)
    MODEL_DIR/config.gin             the effective gin configuration

MODEL_DIR may be local or remote (`gs://`, `s3://`): every path goes through
`model/fs.py`. On an object store metrics.jsonl is rewritten every `flush_secs`
(objects cannot be appended to) and TensorBoard events go through tensorboardX's own
gs:// / s3:// writers.

TensorBoard events come from `tensorboardX`, which (unlike clu.metric_writers) does
not import TensorFlow: model/ stays importable on a JAX-only host (TRAPS.md). It is
imported lazily, when the first TensorBoard writer is made. Scalars are written as
scalars; vector metrics (e.g. a layer's `expert_usage` [E]) as one scalar per entry
(`name/0`, `name/1`, ...) plus a histogram.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Any, Mapping, Sequence

import gin

from model import fs

Scalars = Mapping[str, Any]

log = logging.getLogger("tapestry.metric_writers")


class JsonlWriter:
    """Appends one JSON line per `write` (local: flushed, so a killed run keeps its log;
    remote: uploaded every `flush_secs` and on close, see `fs.Appender`)."""

    def __init__(self, path: fs.PathLike, flush_secs: float = 10.0):
        self.path = fs.path(path)
        self._file = fs.Appender(self.path, flush_secs=flush_secs)

    def write(self, step: int, split: str, values: Scalars) -> None:
        row = {"step": int(step), "split": split, "time": round(time.time(), 3)}
        row.update({k: _jsonable(v) for k, v in values.items()})
        self._file.write(json.dumps(row) + "\n")

    def close(self) -> None:
        self._file.close()


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf; keep them visible as strings
    return value


class TensorBoardWriter:
    """Event files per split under `logdir/<split>` (via tensorboardX)."""

    def __init__(self, logdir: fs.PathLike):
        self.logdir = fs.path(logdir)
        self._writers: dict[str, Any] = {}

    def _writer(self, split: str):
        if split not in self._writers:
            from tensorboardX import SummaryWriter  # lazy: keeps start-up light
            self._writers[split] = SummaryWriter(os.fspath(self.logdir / split), flush_secs=10)
        return self._writers[split]

    def write(self, step: int, split: str, values: Scalars) -> None:
        writer = self._writer(split)
        for key, value in values.items():
            if isinstance(value, (list, tuple)):
                for i, v in enumerate(value):
                    writer.add_scalar(f"{key}/{i}", float(v), step)
                if value:
                    import numpy as np
                    writer.add_histogram(key, np.asarray(value, np.float64), step)
            elif isinstance(value, (int, float)):
                writer.add_scalar(key, float(value), step)

    def flush(self) -> None:
        for w in self._writers.values():
            w.flush()

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()


class ProgressBar:
    """tqdm bar with ETA on a terminal; a plain log line per update otherwise."""

    def __init__(self, total: int, initial: int = 0, enabled: bool | None = None):
        self.total = total
        self._start_step = initial
        self._start = time.time()
        self._bar = None
        if enabled is None:
            enabled = sys.stderr.isatty()
        if enabled:
            from tqdm import tqdm
            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def eta_s(self, step: int) -> float:
        done = step - self._start_step
        if done <= 0:
            return float("nan")
        return (time.time() - self._start) / done * (self.total - step)

    def update(self, step: int, postfix: Mapping[str, float]) -> None:
        text = " ".join(f"{k}={v:.4g}" for k, v in postfix.items())
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.refresh()
        else:
            log.info("step %d/%d %s eta=%s", step, self.total, text,
                         _format_eta(self.eta_s(step)))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


class MetricWriters:
    """JSONL + TensorBoard (process 0 only) behind one `write(step, split, values)`."""

    def __init__(self, model_dir: fs.PathLike, tensorboard: bool = True,
                 is_chief: bool = True):
        self.model_dir = fs.path(model_dir)
        self._writers: Sequence[Any] = []
        if is_chief:
            self._writers = [JsonlWriter(self.model_dir / "metrics.jsonl")]
            if tensorboard:
                self._writers.append(TensorBoardWriter(self.model_dir / "tensorboard"))

    def write(self, step: int, split: str, values: Scalars) -> None:
        for w in self._writers:
            w.write(step, split, values)

    def close(self) -> None:
        for w in self._writers:
            w.close()


def write_config_gin(model_dir: fs.PathLike, operative: bool = False) -> fs.epath.Path:
    """Writes the effective gin config to MODEL_DIR/config.gin (operative: only the
    bindings that were actually used, written after the first step)."""
    path = fs.path(model_dir) / ("operative_config.gin" if operative else "config.gin")
    text = gin.operative_config_str() if operative else gin.config_str()
    return fs.write_text(path, text)


def read_jsonl(path: fs.PathLike, split: str | None = None) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl (optionally one split) as the run now stands.

    A run restarted from a checkpoint logs the steps after it again; as TensorBoard
    purges orphaned events, a row whose step is not past the last one of its split
    discards the earlier rows of that split from that step on. Tolerates a cut last line.
    """
    by_split: dict[str, list[dict[str, Any]]] = {}
    for line in fs.read_text(path).splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if split is not None and row.get("split") != split:
            continue
        rows = by_split.setdefault(row.get("split"), [])
        while rows and rows[-1]["step"] >= row["step"]:
            rows.pop()
        rows.append(row)
    return sorted((r for rows in by_split.values() for r in rows),
                  key=lambda r: (r["step"], r.get("time", 0)))

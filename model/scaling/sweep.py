"""IsoFLOP sweeps: one training run per (budget, model size), then the fits.

A point is a shape from `model.scaling.shapes` (our presets' rules at that size),
trained on tokens = budget / (6·N) (or, with flops='exact', budget / the shape's
training FLOPs per token from `model.flops`: embeddings, logits and attention
included, so every size of a budget gets the same real compute) with a cosine schedule over exactly that many
steps (Chinchilla: the cycle length matches the run). Each point trains in its own
`python -m model.train` process under `<out>/points/<name>/`, so a sweep is resumable:
a finished point (its `FINAL.json`) is skipped, an interrupted one resumes from its
checkpoint with the same data order. Points may run several at a time.

The final loss of a point is its training loss smoothed over the last
`smooth_fraction` of its logged steps (the paper's "final smoothed training loss").
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import subprocess
import sys
import time
from typing import Any, Sequence

import numpy as np

from model import flops as flops_lib
from model import fs, metric_writers
from model.config import TransformerConfig
from model.scaling import shapes

log = logging.getLogger("tapestry.sweep")
FLOP_RULES = ("6nd", "exact")  # how a point's tokens are derived from its budget


@dataclasses.dataclass(frozen=True)
class Point:
    """One run of the sweep: a shape trained for `steps` steps at a FLOP budget."""
    budget: float
    cfg: TransformerConfig
    n: int  # parameters as counted for the fit (shapes.count_params)
    steps: int
    batch_size: int
    seq_len: int

    @property
    def tokens(self) -> int:
        return self.steps * self.batch_size * self.seq_len

    @property
    def name(self) -> str:
        return f"C{self.budget:.3g}_d{self.cfg.d_model}_l{self.cfg.num_layers}".replace("+", "")

    def overrides(self) -> dict[str, Any]:
        fields = ("d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "d_ff")
        out: dict[str, Any] = {f: getattr(self.cfg, f) for f in fields}
        out.update(image=None, video=None, audio=None)
        if self.cfg.moe is not None:
            out["moe.expert_hidden"] = self.cfg.moe.expert_hidden
        return out


def plan_points(budgets: Sequence[float], sizes_per_budget: int, base: TransformerConfig, *,
                seq_len: int, batch_size: int, spread: float = 4.0, ratio: float = 20.0,
                count: str = "non_embedding", aspect: float = 64.0, min_steps: int = 10,
                flops: str = "6nd") -> list[Point]:
    """`sizes_per_budget` distinct shapes per budget, log-spaced over [N*/spread, N*·spread]
    around the 20-tokens-per-parameter optimum N* = sqrt(C / 120); each trained on
    budget / (6N) tokens (flops='6nd') or budget / exact FLOPs per token ('exact')."""
    if flops not in FLOP_RULES:
        raise ValueError(f"flops={flops!r}: choose one of {FLOP_RULES}")
    if sizes_per_budget < 3:
        raise ValueError(f"sizes_per_budget={sizes_per_budget}: a parabola needs >= 3 sizes")
    cands = shapes.candidates(base, aspect)
    counts = np.array([shapes.count_params(c, count) for c in cands], float)
    points = []
    for budget in sorted(budgets):
        centre = math.sqrt(budget / (6.0 * ratio))
        targets = np.geomspace(centre / spread, centre * spread, sizes_per_budget)
        chosen: list[int] = []
        for t in targets:  # nearest unused shape in log space
            order = np.argsort(np.abs(np.log(counts / t)))
            chosen.append(next(int(i) for i in order if int(i) not in chosen))
        for i in sorted(chosen, key=lambda i: counts[i]):
            n = int(counts[i])
            per_token = (6.0 * n if flops == "6nd"
                         else flops_lib.flops_per_token(cands[i], seq_len))
            steps = int(round(budget / per_token / (batch_size * seq_len)))
            if steps < min_steps:
                raise ValueError(
                    f"budget {budget:.3g} gives the {n:,}-parameter shape only {steps} steps "
                    f"of {batch_size} x {seq_len} tokens (< {min_steps}); raise the budget or "
                    "lower the batch size")
            points.append(Point(budget, cands[i], n, steps, batch_size, seq_len))
    return points


def train_command(point: Point, gin_files: Sequence[str], model_dir: str, preset: str,
                  extra_bindings: Sequence[str] = ()) -> list[str]:
    cmd = [sys.executable, "-m", "model.train"]
    cmd += [f"--gin_file={g}" for g in gin_files]
    bindings = [
        f"MODEL_DIR = '{model_dir}'",
        f"TRAIN_STEPS = {point.steps}",
        f"BATCH_SIZE = {point.batch_size}",
        f"TASK_FEATURE_LENGTHS = {{'targets': {point.seq_len}}}",
        f"model_config.preset = '{preset}'",
        f"model_config.overrides = {point.overrides()!r}",
        "warmup_cosine_schedule.decay_steps = %TRAIN_STEPS",
        f"warmup_cosine_schedule.warmup_steps = {max(1, min(100, point.steps // 10))}",
        "train.eval_every = 0",
        f"CheckpointConfig.save_every = {max(1, point.steps // 4)}",
        "CheckpointConfig.keep = 1",
        f"train.log_every = {max(1, min(10, point.steps // 20))}",
    ]
    cmd += [f"--gin_bindings={b}" for b in list(bindings) + list(extra_bindings)]
    return cmd


def final_loss(model_dir: str, smooth_fraction: float = 0.1) -> float:
    """Mean training loss over the last `smooth_fraction` of the logged steps."""
    rows = [r for r in metric_writers.read_jsonl(fs.join(model_dir, "metrics.jsonl"), "train")
            if "loss" in r]
    if not rows:
        raise ValueError(f"{model_dir}: no training loss logged")
    last_step = rows[-1]["step"]
    window = max(1.0, smooth_fraction * last_step)
    tail = [r["loss"] for r in rows if r["step"] > last_step - window]
    return float(np.mean(tail))


def run_points(points: Sequence[Point], out_dir: str, gin_files: Sequence[str], preset: str,
               *, parallel: int = 1, extra_bindings: Sequence[str] = (),
               smooth_fraction: float = 0.1) -> list[dict[str, Any]]:
    """Trains every unfinished point (`parallel` at a time); returns one row per point."""
    pending = []
    for p in points:
        final = fs.join(out_dir, "points", p.name, "FINAL.json")
        if fs.exists(final):
            log.info("%s: finished earlier, skipped", p.name)
        else:
            pending.append(p)
    running: list[tuple[Point, subprocess.Popen, float]] = []
    failures = []
    while pending or running:
        while pending and len(running) < max(1, parallel):
            p = pending.pop(0)
            model_dir = fs.join(out_dir, "points", p.name)
            log.info("%s: %d steps (%s tokens, N=%s)", p.name, p.steps, f"{p.tokens:,}", f"{p.n:,}")
            running.append((p, subprocess.Popen(train_command(p, gin_files, model_dir, preset,
                                                              extra_bindings)), time.time()))
        time.sleep(0.5)
        for item in list(running):
            p, proc, start = item
            if proc.poll() is None:
                continue
            running.remove(item)
            model_dir = fs.join(out_dir, "points", p.name)
            if proc.returncode != 0:
                failures.append(f"{p.name} (exit {proc.returncode})")
                continue
            row = _row(p, final_loss(model_dir, smooth_fraction), time.time() - start)
            fs.write_text(fs.join(model_dir, "FINAL.json"), json.dumps(row, indent=1))
    if failures:
        raise RuntimeError(f"sweep points failed: {failures}; rerun the same command to resume")
    return [json.loads(fs.read_text(fs.join(out_dir, "points", p.name, "FINAL.json")))
            for p in points]


def _row(p: Point, loss: float, seconds: float) -> dict[str, Any]:
    return {"name": p.name, "budget": p.budget, "n": p.n, "tokens": p.tokens, "loss": loss,
            "steps": p.steps, "d_model": p.cfg.d_model, "num_layers": p.cfg.num_layers,
            "flops_exact": flops_lib.flops_per_token(p.cfg, p.seq_len) * p.tokens,
            "seconds": seconds}

"""Chinchilla planner: `python -m model.plan --flops=5.76e23` (or --params / --tokens).

Prints the compute-optimal model size N and token count D for the budget by

- Approach 1: the power law through the paper's Table 3 (N, D ∝ C^0.50), and the
  rule of thumb of ≈ 20 tokens per parameter (`--tokens_per_param`);
- Approach 3, closed form under C = 6ND, with Hoffmann et al.'s fit and with
  Besiroglu et al.'s refit (and the loss each law predicts);
- Approach 3 again with the exact FLOPs of our architecture (`model.flops`: attention
  and the output layer included, MoE by active parameters) over concrete shapes;

then picks a concrete shape near N_opt by our presets' rules (`model.scaling.shapes`)
and, with `--gin_out`, writes a gin file with that model and the run: batch size,
steps, and a cosine schedule over the whole run (Chinchilla: the cosine cycle should
match the run length). Example:

    python -m model.plan --flops=1e19 --seq_len=2048 --gin_out=/tmp/plan.gin
    python -m model.train --gin_file=gin/runs/pretrain.gin --gin_file=/tmp/plan.gin \
        --gin.MODEL_DIR=... --gin.MIXTURE_OR_TASK_NAME=tapestry_text --gin.CACHE_DIR=...
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from typing import Any, Sequence

from model import flops as flops_lib
from model import fs
from model.config import PRESETS, TransformerConfig
from model.scaling import laws, shapes


@dataclasses.dataclass(frozen=True)
class Plan:
    """One row of the plan: how N and D were chosen, and what the model would be."""
    method: str
    flops: float
    n: float
    d: float
    loss: float | None = None

    def row(self) -> str:
        loss = f"{self.loss:.4f}" if self.loss is not None else "-"
        return (f"| {self.method} | {self.flops:.3g} | {_human(self.n)} | {_human(self.d)} | "
                f"{self.d / self.n:.1f} | {loss} |")


def _human(x: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def budget_from(flops: float | None, params: float | None, tokens: float | None) -> float:
    """The FLOP budget from exactly one of flops, params, tokens (via Approach 1)."""
    given = [v is not None for v in (flops, params, tokens)]
    if sum(given) != 1:
        raise ValueError("give exactly one of --flops, --params, --tokens")
    rule = laws.APPROACH1
    if flops is not None:
        value = flops
    elif params is not None:
        value = rule.for_params(params)[0]
    else:
        value = rule.for_tokens(tokens)[0]
    if not value > 0:
        raise ValueError(f"the budget must be positive, got {value}")
    return value


def plans(budget: float, ratio: float = 20.0) -> list[Plan]:
    """Approach 1/2 and Approach 3 (both published fits) under C = 6ND."""
    out = [Plan("Approach 1 (Table 3 law)", budget, *laws.APPROACH1.optimal(budget)),
           Plan(f"{ratio:g} tokens/param", budget, *laws.TokensPerParameter(ratio).optimal(budget))]
    for name, law in laws.LAWS.items():
        n, d = law.optimal(budget)
        out.append(Plan(f"Approach 3, {name} (6ND)", budget, n, d, law.loss(n, d)))
    return out


def exact_flops_plan(budget: float, base: TransformerConfig, seq_len: int, law_name: str,
                     count: str, aspect: float) -> tuple[Plan, TransformerConfig]:
    """Approach 3 over our concrete shapes with their exact FLOPs per token."""
    law = laws.LAWS[law_name]
    cands = shapes.candidates(base, aspect)
    i, d, loss = laws.optimal_for_flops_per_token(
        law, budget, [(shapes.count_params(c, count),
                       (lambda c=c: flops_lib.flops_per_token(c, seq_len))) for c in cands])
    n = shapes.count_params(cands[i], count)
    return Plan(f"Approach 3, {law_name} (exact FLOPs)", budget, n, d, loss), cands[i]


def run_settings(tokens: float, seq_len: int, batch_size: int | None, min_steps: int
                 ) -> tuple[int, int]:
    """(batch size in sequences, steps) for `tokens` training tokens.

    Default batch: the largest power of two that still leaves >= min_steps steps,
    capped at 2^21 tokens per batch (≈ Chinchilla's 1.5-3M at scale)."""
    if batch_size is None:
        limit = max(1, min(2 ** 21 // seq_len, tokens / (seq_len * min_steps)))
        batch_size = 2 ** int(math.floor(math.log2(limit)))
    steps = max(1, int(round(tokens / (batch_size * seq_len))))
    return batch_size, steps


def gin_text(cfg: TransformerConfig, preset: str, base: TransformerConfig, seq_len: int,
             batch_size: int, steps: int, header: str) -> str:
    """A gin file: the model (preset + overrides) and the run (batch, steps, schedule)."""
    fields = ("d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "d_ff")
    overrides = {f: getattr(cfg, f) for f in fields}
    overrides.update(image=None, video=None, audio=None, max_len=max(seq_len, base.max_len))
    if cfg.moe is not None:
        overrides["moe.expert_hidden"] = cfg.moe.expert_hidden
        if cfg.moe.shared_hidden:
            overrides["moe.shared_hidden"] = cfg.moe.shared_hidden
    body = ",\n    ".join(f"{k!r}: {v!r}" for k, v in overrides.items())
    warmup = max(1, min(1000, steps // 20))
    return (f"{header}"
            f"# {flops_lib.describe(cfg, seq_len)}\n"
            "DecoderOnlyModel.config = @model_config()\n"
            f"model_config.preset = {preset!r}\n"
            f"model_config.overrides = {{\n    {body}}}\n\n"
            f"BATCH_SIZE = {batch_size}\n"
            f"TRAIN_STEPS = {steps}\n"
            f"TASK_FEATURE_LENGTHS = {{'targets': {seq_len}}}\n"
            "# Cosine over the whole run, to 10% of the peak (Chinchilla, section 3 / Fig. A1).\n"
            "train.learning_rate_schedule = @warmup_cosine_schedule()\n"
            f"warmup_cosine_schedule.warmup_steps = {warmup}\n"
            "warmup_cosine_schedule.decay_steps = %TRAIN_STEPS\n"
            "warmup_cosine_schedule.end_ratio = 0.1\n")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--flops", type=float, help="training FLOP budget")
    p.add_argument("--params", type=float, help="or: a parameter count (budget = its optimum)")
    p.add_argument("--tokens", type=float, help="or: a token count (budget = its optimum)")
    p.add_argument("--tokens_per_param", type=float, default=20.0, help="the rule-of-thumb row's ratio")
    p.add_argument("--law", choices=sorted(laws.LAWS), default="besiroglu",
                   help="the Approach 3 fit used for the exact-FLOPs plan and the shape")
    p.add_argument("--preset", choices=sorted(PRESETS), default="base",
                   help="vocabulary, attention and MoE settings come from this preset")
    p.add_argument("--dense", action="store_true", help="drop the preset's MoE layers")
    p.add_argument("--seq_len", type=int, default=2048)
    p.add_argument("--count", choices=shapes.COUNTS, default="total",
                   help="which parameters N counts (Chinchilla: total)")
    p.add_argument("--aspect", type=float, default=64.0, help="d_model / num_layers")
    p.add_argument("--batch_size", type=int, default=None, help="sequences per batch")
    p.add_argument("--min_steps", type=int, default=1000, help="for the default batch size")
    p.add_argument("--gin_out", default=None, help="write the plan as a gin file here")
    args = p.parse_args(argv)
    try:
        budget = budget_from(args.flops, args.params, args.tokens)
    except ValueError as e:
        p.error(str(e))
    base = PRESETS[args.preset]
    if args.dense:
        base = dataclasses.replace(base, moe=None, layer_pattern="d")
    rows = plans(budget, args.tokens_per_param)
    exact, cfg = exact_flops_plan(budget, base, args.seq_len, args.law, args.count, args.aspect)
    rows.append(exact)
    print(f"Compute-optimal plan for C = {budget:.4g} FLOPs (sequence length {args.seq_len})\n")
    print("| method | FLOPs | N | D | tokens/param | predicted loss |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(r.row())
    batch, steps = run_settings(exact.d, args.seq_len, args.batch_size, args.min_steps)
    print(f"\nshape: d_model {cfg.d_model}, layers {cfg.num_layers}, heads {cfg.num_heads} "
          f"(kv {cfg.num_kv_heads}), d_ff {cfg.d_ff}"
          + (f", {cfg.moe.num_experts} experts top-{cfg.moe.top_k}" if cfg.moe else "")
          + f"; {flops_lib.describe(cfg, args.seq_len)}")
    print(f"run: batch {batch} x {args.seq_len} tokens, {steps} steps "
          f"({batch * args.seq_len * steps:.3g} tokens), cosine schedule over {steps} steps")
    if args.gin_out:
        header = (f"# Written by `python -m model.plan {' '.join(argv or sys.argv[1:])}`.\n"
                  f"# Compute-optimal for C = {budget:.4g} FLOPs: {exact.method}.\n"
                  "# Use after gin/runs/pretrain.gin (or pretrain_synthetic.gin), which set the\n"
                  "# rest of the loop; MODEL_DIR and the task are still required.\n")
        fs.write_text(args.gin_out, gin_text(cfg, args.preset, base, args.seq_len, batch,
                                             steps, header))
        print(f"gin: {args.gin_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Eval scoring throughput: batched vs one example at a time, on real MMLU prompts.

    python benchmarks/eval_throughput.py [--num_questions 200] [--num_shots 5]
        [--batch_size 32] [--checkpoint MODEL_DIR] [--preset tiny]

Scores the same MMLU requests (question x choice, lm-eval pair encoding) three ways
with the tiny model and prints a table (wall time after a warm-up call per shape, so
jit compiles are excluded and reported separately):

  one_at_a_time   one request per jitted call, padded to the model length (the naive loop)
  batched         `BatchedScorer`: batch_size rows per call, sorted by length, bucketed
  batched_shared  `SharedContextScorer`: additionally one row per question (all four
                  choices read from the next-token distributions of one row)

and how often their predictions agree. `batched_shared` is what the MMLU suite runs
(issue 6 target: >= 5x one request at a time). Needs $TAPESTRY_DATA_DIR/mmlu.

Measured 2026-11-26 on 2 CPU cores (load 2), 200 questions: one_at_a_time 3.94 s,
batched 2.27 s (1.7x), batched_shared 0.65 s (6.0x) with untrained tiny params; with
the `make demo` checkpoint (--preset tiny_moe) 5.43 / 2.66 (2.0x) / 0.84 s (6.5x).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import numpy as np

from model import eval as eval_lib, host_malloc
from model.config import model_config
from model.evaluation import mmlu as mmlu_metrics, scoring
from model.models import DecoderOnlyModel


def _requests(num_questions: int, num_shots: int, split: str):
    from tasks import eval_inputs  # data side; the benchmark runs where tasks/ is installed

    records = eval_inputs.mmlu_inputs(split=split, num_shots=num_shots)
    rng = np.random.default_rng(0)
    records = [records[i] for i in sorted(rng.choice(len(records), num_questions, replace=False))]
    reqs = [scoring.Request(r["context_ids"], c) for r in records for c in r["continuation_ids"]]
    return records, reqs


def _timed(scorer, reqs):
    # Warm up: compile every (batch, length) shape the run will use.
    seen = set()
    warm = []
    rows = [scoring.make_row(r, scorer.max_length) for r in reqs]
    for i, r in enumerate(rows):
        key = scoring.bucket_for(len(r[1]), scorer.buckets)
        if key not in seen:
            seen.add(key)
            warm.append(reqs[i])
    t0 = time.perf_counter()
    for r in warm:
        scorer.score([r] * scorer.batch_size)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = scorer.score(reqs)
    return scores, time.perf_counter() - t0, compile_s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num_questions", type=int, default=200)
    ap.add_argument("--num_shots", type=int, default=5)
    ap.add_argument("--split", default="test")
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--checkpoint", default=None, help="MODEL_DIR (default: untrained params)")
    ap.add_argument("--json", default=None, help="also write the table here")
    args = ap.parse_args(argv)

    model = DecoderOnlyModel(model_config(args.preset))
    max_len = model.config.max_len
    params, step = eval_lib.load_params(model, args.checkpoint, None, 0, max_len)
    records, reqs = _requests(args.num_questions, args.num_shots, args.split)
    score_fn = eval_lib.make_score_fn(model, params)
    cand_fn = eval_lib.make_candidate_fn(model, params)
    scorers = {
        "one_at_a_time": scoring.BatchedScorer(score_fn, max_len, 1, buckets=(max_len,)),
        "batched": scoring.BatchedScorer(score_fn, max_len, args.batch_size),
        "batched_shared": scoring.SharedContextScorer(cand_fn, max_len, args.batch_size),
    }
    results, preds = {}, {}
    for name, scorer in scorers.items():
        if name == "batched_shared":
            t0 = time.perf_counter()
            scorer.score(reqs[: 4 * args.batch_size])  # compiles the shapes it will use
            compile_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            scores = scorer.score(reqs)
            secs = time.perf_counter() - t0
        else:
            scores, secs, compile_s = _timed(scorer, reqs)
        ll = np.array([s.loglikelihood for s in scores]).reshape(len(records), 4)
        preds[name] = [mmlu_metrics.predict(x) for x in ll]
        results[name] = {"seconds": secs, "compile_seconds": compile_s,
                         "questions_per_s": len(records) / secs,
                         "requests_per_s": len(reqs) / secs}
    base = results["one_at_a_time"]["seconds"]
    for r in results.values():
        r["speedup"] = base / r["seconds"]
    agree = {n: float(np.mean(np.array(p) == np.array(preds["one_at_a_time"]))) for n, p in preds.items()}
    print(f"device: {jax.devices()[0].device_kind}; model {args.preset} (max_len {max_len}), "
          f"checkpoint step {step}; {len(records)} MMLU questions, {args.num_shots}-shot, "
          f"{len(reqs)} requests; batch_size {args.batch_size}")
    print(f"{'mode':16s} {'seconds':>8s} {'compile_s':>9s} {'questions/s':>11s} {'requests/s':>10s} "
          f"{'speedup':>7s} {'same preds':>10s}")
    for n, r in results.items():
        print(f"{n:16s} {r['seconds']:8.2f} {r['compile_seconds']:9.2f} {r['questions_per_s']:11.1f} "
              f"{r['requests_per_s']:10.1f} {r['speedup']:6.1f}x {agree[n]:10.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "agreement": agree, "args": vars(args)}, f, indent=2)
    return 0


if __name__ == "__main__":
    host_malloc.reexec_with_malloc_settings()
    sys.exit(main())

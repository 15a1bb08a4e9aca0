"""Batch evaluation entry point: `python -m model.eval --gin_file=gin/runs/eval.gin ...`.

    python -m model.eval --gin_file=gin/models/tiny.gin --gin_file=gin/runs/eval.gin \
        --gin.CHECKPOINT_PATH=/tmp/tiny --gin.EVAL_OUTPUT_DIR=/tmp/tiny/eval

loads a checkpoint (`model.checkpointing.restore_params`; CHECKPOINT_PATH=None
evaluates the untrained model from `init_seed`), runs each configured suite with
batched, length-bucketed, jitted scoring, and writes the report directory
(`model/evaluation/report.py`): results.json (ours, and the same results in
lm-evaluation-harness's schema: `results`/`groups`/`configs`/`versions`/`n-shot`,
model/evaluation/lm_eval_schema.py), samples_<suite>.jsonl, report.md, report.html.
Rerunning with the same output dir resumes: finished suites are kept, and a suite that
was cut short scores only its missing samples. `--limit=N` (or `evaluate.limit`) scores
only the first N documents of each task, as lm-eval's --limit (N < 1: a fraction).

Sharded and multi-host: parameters are restored (or initialised) straight into the
shardings the partitioner rules give on the mesh from gin (`Partitioner.mesh_shape`,
as in training), and the score/decode functions are jitted with those shardings, so a
preset larger than one device is evaluated as it is trained. On several processes
(`python -m model.launch_local --num_processes=2 -- python -m model.eval ...`, or the
same command on every pod host) each host scores its share of every batch's rows, the
scores are gathered, and process 0 alone writes the report
(`model/evaluation/sharded.py`).

Eval inputs (tokenized prompts, documents) reach the suites through gin bindings to
`tasks/eval_inputs.py`; this module never imports tasks/, SeqIO or TensorFlow.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any, Callable, Sequence

import gin
import jax
import numpy as np

from model import fs, gin_flags, host_malloc, partitioning
from model import models  # noqa: F401  - registers DecoderOnlyModel with gin
from model import train  # noqa: F401  - so experiment gins (train loop included) parse here too
from model.evaluation import generation  # noqa: F401  - registers GenerationSuite with gin
from model.evaluation import lm_eval_schema, report, scoring, sharded, suites as suites_lib
from model.evaluation import training_curves  # noqa: F401  - registers the curves section
from model.partitioning import Partitioner

log = logging.getLogger("tapestry.eval")

SectionsFn = Callable[[fs.epath.Path, dict[str, Any]], list[report.Section]]


def one_device_runner(model: Any, max_length: int | None = None) -> sharded.MeshRunner:
    """A `MeshRunner` on the first device alone (the one-device baseline; tests)."""
    part = Partitioner(mesh_shape=(1, 1, 1), num_devices=1)
    return sharded.MeshRunner(model, part, max_length or model.config.max_len)


def make_score_fn(model: Any, params: Any) -> scoring.ScoreFn:
    """(numpy batch, positions [B, P]) -> numpy [B, P] log-likelihoods of the targets
    there, on one device; vocabulary logits are computed at those positions only."""
    runner = one_device_runner(model)
    return runner.score_fn(runner.place(params))


def make_candidate_fn(model: Any, params: Any) -> scoring.CandidateFn:
    """(batch, positions [B, P], ids [B, P, C]) -> log-probs [B, P, C] via `model.logits_at`
    (for `SharedContextScorer`: multiple-choice continuations read from one row)."""
    runner = one_device_runner(model)
    return runner.candidate_fn(runner.place(params))


def prompt_batch(prompts: Sequence[tuple[Sequence[int], dict[str, np.ndarray] | None]]
                 ) -> dict[str, np.ndarray]:
    """Decoding batch: `decoder_input_tokens` [B, P] = start token 0 + prompt, right-padded
    (the model reads the whole prompt and continues after its last token), with
    `prompt_lengths` and segment ids/positions, plus each row's media arrays."""
    rows = [([0] + list(p), [0] + list(p), 0) for p, _ in prompts]
    length = max(len(r[0]) for r in rows)
    batch = scoring.build_batch(rows, length, len(prompts), [f for _, f in prompts])
    batch["prompt_lengths"] = np.array([len(r[0]) for r in rows], np.int32)
    return batch


def make_generate_fn(model: Any, params: Any) -> Callable[..., list[list[int]]]:
    """Greedy decoding through `model.decoding.generate` (KV cache; prefill + step) on one
    device: ([(prompt ids, media features)], max_new_tokens) -> new token ids per prompt."""
    runner = one_device_runner(model)
    return runner.generate_fn(runner.place(params), prompt_batch)


def load_params(model: Any, checkpoint_path: str | None, step: int | None,
                init_seed: int, max_length: int) -> tuple[Any, int | None]:
    """Checkpoint params (and step), or freshly initialised ones, on one device."""
    runner = one_device_runner(model, max_length)
    if checkpoint_path:
        return runner.restore(checkpoint_path, step)
    return runner.init(init_seed), None


@gin.configurable
def evaluate(*, model: Any = gin.REQUIRED, suites: Sequence[Any] = gin.REQUIRED,
             output_dir: str = gin.REQUIRED, checkpoint_path: str | None = gin.REQUIRED,
             step: int | None = None, batch_size: int = 16, max_length: int | None = None,
             buckets: Sequence[int] | None = None, init_seed: int = 0,
             title: str = "Tapestry evaluation", progress: bool = True,
             extra_sections: Sequence[SectionsFn] = (),
             shared_context: bool = True, skip_missing_data: bool = False,
             detokenizer: Callable[[Sequence[int]], str] | None = None,
             score_fn: scoring.ScoreFn | None = None,
             params: Any = None, partitioner: Partitioner | None = None,
             rows_per_device: int | None = None,
             limit: int | float | None = None) -> dict[str, Any]:
    """Runs `suites` and writes the report to `output_dir`; returns results.json's content.

    `extra_sections` are callables (output_dir, results) -> [Section] appended to the
    report (e.g. training curves). `detokenizer` (ids -> text) is needed by decoding
    suites (`GenerationSuite`). `shared_context`: multiple-choice suites score all
    choices of a question from one row (`SharedContextScorer`) instead of one row per
    choice. `skip_missing_data`: a suite whose inputs are absent (FileNotFoundError,
    e.g. no MMLU data dir) is reported as skipped instead of failing the run. Suites
    with `compare_untrained` also score the untrained model (init from `init_seed`)
    when a checkpoint is evaluated.
    `partitioner`: the mesh and rules (default: `Partitioner()` as configured in gin,
    i.e. the training mesh); `batch_size` rows are split over its 'data' x 'expert'
    shards (padded up to a multiple). `rows_per_device`: run each batch in calls of
    that many rows per batch shard, so every device computes the same shapes whatever
    the mesh size: results then equal the one-device run's bit for bit on meshes with
    'model' = 1 (None: one call per batch, fastest). `params` (host arrays) replace the
    checkpoint and `score_fn` the model scorer (tests). `limit`: lm-eval's --limit, the
    first `limit` documents of each task (MMLU: of each subject; < 1: that fraction).
    """
    lm_eval_schema.sample_size(1, limit)  # a bad limit fails before any compute
    coll = sharded.Collective()
    out = fs.path(output_dir)  # local or gs:// / s3:// (model/fs.py)
    if coll.writer:
        out.mkdir(parents=True, exist_ok=True)
    max_length = max_length or model.config.max_len
    ckpt_step = step
    runner = None
    if score_fn is None:
        runner = sharded.MeshRunner(model, partitioner or Partitioner(), max_length,
                                    rows_per_device)
        if params is not None:
            params = runner.place(params)
        elif checkpoint_path:
            params, ckpt_step = runner.restore(checkpoint_path, step)
        else:
            params = runner.init(init_seed)
        score_fn = runner.score_fn(params)
        per_call = runner.rows_per_call(batch_size)
        if -(-batch_size // per_call) * per_call != batch_size:
            log.warning("batch_size %d is not a multiple of %d rows per call (batch shards "
                        "data x expert = %d, rows_per_device=%s): calls are padded",
                        batch_size, per_call, runner.num_row_shards, rows_per_device)
    scorer = scoring.BatchedScorer(score_fn, max_length, batch_size, buckets)
    choice_scorer = None
    if shared_context and runner is not None:
        choice_scorer = scoring.SharedContextScorer(runner.candidate_fn(params), max_length,
                                                    batch_size, buckets)
    baseline_scorer = None
    if (checkpoint_path and runner is not None
            and any(getattr(s, "compare_untrained", False) for s in suites)):
        baseline_scorer = scoring.BatchedScorer(runner.score_fn(runner.init(init_seed)),
                                                max_length, batch_size, buckets)
    generate = None
    if runner is not None and any(isinstance(s, generation.GenerationSuite) for s in suites):
        generate = runner.generate_fn(params, prompt_batch)
    ctx = suites_lib.Context(scorer=scorer, out_dir=out, progress=progress and coll.writer,
                             choice_scorer=choice_scorer, baseline_scorer=baseline_scorer,
                             generate=generate, detokenize=detokenizer,
                             writer=coll.writer, agree=coll.agree, limit=limit)
    results = report.load_results(out)
    mesh = dict(runner.partitioner.mesh_shape) if runner is not None else None
    meta = report.run_metadata(checkpoint_path, ckpt_step, max_length=max_length,
                               batch_size=batch_size, rows_per_device=rows_per_device,
                               devices=str(jax.devices()),
                               processes=jax.process_count(), mesh=mesh,
                               model_config=repr(getattr(model, "config", None)))
    if results.get("meta", {}).get("checkpoint_step") not in (None, ckpt_step):
        raise ValueError(
            f"{out} holds results of checkpoint step {results['meta']['checkpoint_step']}, "
            f"not {ckpt_step}; use another output dir to evaluate this step")
    results["meta"] = meta
    run_config = {"model": "tapestry", "model_args": f"checkpoint={checkpoint_path}",
                  "checkpoint_step": ckpt_step, "batch_size": batch_size, "limit": limit,
                  "max_length": max_length}

    def save() -> None:
        results.update(lm_eval_schema.merge(
            [t["lm_eval"] for t in results["tasks"].values() if t.get("lm_eval")], run_config))
        results["git_hash"], results["date"] = meta["git_commit"], time.time()
        if coll.writer:
            report.save_results(out, results)

    sections: list[report.Section] = []
    for suite in suites:
        t0 = time.perf_counter()
        try:
            res = suite.run(ctx)
        except FileNotFoundError as e:
            if not skip_missing_data:
                raise
            name = getattr(suite, "name", type(suite).__name__)
            log.warning("%s skipped: %s", name, e)
            results["tasks"][name] = {"skipped": str(e)}
            save()
            sections.append(report.Section(f"{name} (skipped)", [f"Not run: {e}"]))
            continue
        log.info("%s done in %.1fs: %s", res.name, time.perf_counter() - t0,
                 {k: v for k, v in res.metrics.items() if isinstance(v, (int, float))})
        prev = results["tasks"].get(res.name, {})
        m = res.metrics
        results["tasks"][res.name] = {
            "n": m.get("n", m.get("overall", {}).get("n")), "n_shot": res.config.get("num_shots", 0),
            "metrics": m, "config": res.config, "lm_eval": res.lm_eval,
            "timing": res.timing if res.timing["new_samples"] else prev.get("timing", res.timing),
            **{k: meta[k] for k in ("date", "checkpoint_step", "git_commit", "versions")},
        }
        save()
        sections += res.sections
    if not coll.writer:
        return results
    extra = [s for fn in extra_sections for s in fn(out, results)]
    md, html = report.write_report(out, title, _meta_for_report(meta, results), sections, extra)
    log.info("report: %s", html)
    print(f"eval report: {html}")
    return results


def _meta_for_report(meta: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    shown = {k: meta[k] for k in ("date", "git_commit", "checkpoint", "checkpoint_step",
                                  "max_length", "batch_size", "devices", "processes", "mesh")
             if k in meta}
    for name, t in results["tasks"].items():
        timing = t.get("timing", {})
        if timing.get("seconds"):
            shown[f"{name} time"] = (f"{timing['seconds']:.1f}s, "
                                     f"{timing['samples_per_second']:.1f} samples/s")
    return shown


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--limit", type=float, default=None,
                       help="lm-eval's --limit: the first N documents of each task "
                            "(N < 1: that fraction); same as --gin.evaluate.limit")
    known, rest = flags.parse_known_args(sys.argv[1:] if argv is None else argv)
    limit = known.limit
    if limit is not None and limit >= 1:
        limit = int(limit)
    try:
        if limit is not None:
            lm_eval_schema.sample_size(1, limit)
        gin_flags.parse_gin_flags(rest, "Evaluate a Tapestry checkpoint (T5X-style gin flags).")
    except (ValueError, gin_flags.GinFlagError) as e:
        print(f"gin configuration error: {e}", file=sys.stderr)
        return 2
    # Before gin builds the Partitioner (which lists devices) inside evaluate().
    partitioning.initialize_distributed()
    evaluate(**({"limit": limit} if limit is not None else {}))
    return 0


if __name__ == "__main__":
    host_malloc.reexec_with_malloc_settings()
    sys.exit(main())

"""Eval suites: each turns its inputs into model calls, samples and metrics.

A suite is gin-configurable; its `inputs_fn` is bound in gin to a function of
`tasks/eval_inputs.py` (model/ never imports tasks/). `run(ctx)` scores or decodes
only the samples not already in `samples_<name>.jsonl` (resume), appends each
finished sample there, and returns a `SuiteResult` built from *all* samples in the
log, so an interrupted eval resumed later reports exactly what an uninterrupted one
would.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any, Callable, Mapping, Sequence

import gin

from model import fs
from model.evaluation import lm as lm_metrics
from model.evaluation import lm_eval_schema, long_context, mmlu as mmlu_metrics, plots, report
from model.evaluation import scoring
from model.evaluation.report import Figure, Section, Table

InputsFn = Callable[[], list[dict[str, Any]]]


@gin.configurable
def jsonl_records(path: str = gin.REQUIRED) -> list[dict[str, Any]]:
    """Eval inputs already tokenized, one JSON object per line (local or gs://): the
    records a suite's `inputs_fn` returns, e.g. `{"sample_id", "text", "token_ids"}` for
    `TextLMSuite`, or `tasks/eval_inputs.mmlu_inputs`'s records for `MMLUSuite`. Lets a
    host with only JAX (no SeqIO/TensorFlow) evaluate inputs exported elsewhere."""
    return [json.loads(line) for line in fs.read_text(path).splitlines() if line.strip()]


def _alone(what: str, value: str = "") -> None:
    """`Context.agree` of a one-process run: nothing to agree with."""
    del what, value


@dataclasses.dataclass
class Context:
    """What suites may use: a batched scorer, the output dir, a progress switch.

    Multi-process eval: every process runs every suite on the same requests (the model
    calls are collectives); `writer` is True on process 0 only, which writes the samples
    files; `agree(what, value)` is a barrier at which all processes must hold the same
    value (`model/evaluation/sharded.py`).
    """
    scorer: scoring.BatchedScorer
    out_dir: pathlib.Path
    progress: bool = True
    choice_scorer: scoring.SharedContextScorer | None = None  # multiple choice, optional
    baseline_scorer: scoring.BatchedScorer | None = None  # the untrained model, optional
    generate: Callable[..., list[list[int]]] | None = None  # decoding suites
    detokenize: Callable[[Sequence[int]], str] | None = None
    writer: bool = True
    agree: Callable[[str, str], None] = _alone
    limit: int | float | None = None  # lm-eval's --limit: first docs of each task (< 1: a fraction)

    def open_log(self, name: str, fingerprint: str) -> report.SampleLog:
        """`samples_<name>.jsonl` for resuming: the writer opens it first; the other
        processes then read it, and all must see the same finished samples (so they
        score the same missing ones)."""
        log = report.SampleLog(self.out_dir, name, fingerprint) if self.writer else None
        self.agree(f"inputs of samples_{name}", fingerprint)
        if log is None:
            log = report.SampleLog(self.out_dir, name, fingerprint, read_only=True)
        self.agree(f"finished samples in samples_{name}", "\n".join(sorted(log.done)))
        return log


@dataclasses.dataclass
class SuiteResult:
    name: str
    metrics: dict[str, Any]
    config: dict[str, Any]
    sections: list[Section]
    timing: dict[str, float]
    lm_eval: dict[str, Any] | None = None  # this suite's part of lm-eval's schema


def limited(records: list[dict[str, Any]], ctx: Context, task_of: Callable[[Any], str] | None = None
            ) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
    """`ctx.limit` applied like lm-eval's --limit (the first docs of each task), and the
    `n-samples` counts {task: {"original", "effective"}}."""
    return lm_eval_schema.apply_limit(records, ctx.limit, task_of)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, disable=not enabled, unit="batch", dynamic_ncols=True)


def _timing(start: float, n_new: int, n_requests: int) -> dict[str, float]:
    secs = time.perf_counter() - start
    return {"seconds": secs, "new_samples": n_new, "requests": n_requests,
            "samples_per_second": n_new / secs if secs > 0 and n_new else 0.0}


def _tokens_cut(sample: Mapping[str, Any], max_len: int) -> int:
    """Prompt tokens left out of a sample's row (samples logged before this was recorded
    get it from their prompt length)."""
    if "prompt_tokens_cut" in sample:
        return int(sample["prompt_tokens_cut"])
    return max(0, int(sample["num_prompt_tokens"]) + 1 - max_len) if sample["truncated"] else 0


def prompt_cut_paragraph(samples: Sequence[Mapping[str, Any]], max_len: int) -> str:
    """What the report says about prompt length: all whole, or which were cut and by how much."""
    cut = [(s["sample_id"], _tokens_cut(s, max_len)) for s in samples]
    cut = [(sid, n) for sid, n in cut if n]
    longest = max(int(s["num_prompt_tokens"]) for s in samples)
    if not cut:
        return (f"Every prompt was scored whole (the longest has {longest} tokens; the "
                f"model's context is {max_len}).")
    shown = ", ".join(sid for sid, _ in cut[:5]) + (", ..." if len(cut) > 5 else "")
    return (f"{len(cut)} of {len(samples)} prompts were longer than the model's context of "
            f"{max_len} tokens and were cut: their first tokens were dropped (left "
            f"truncation, up to {max(n for _, n in cut)} tokens; longest prompt {longest}). "
            f"They are marked `truncated` with `prompt_tokens_cut` in the samples file: "
            f"{shown}. Raise `evaluate.max_length` (and the model's max_len) to score them whole.")


@gin.configurable
class MMLUSuite:
    """MMLU multiple choice, scored like lm-eval (argmax log-likelihood of ` A`..` D`)."""

    def __init__(self, inputs_fn: InputsFn = gin.REQUIRED, name: str = "mmlu"):
        self.inputs_fn = inputs_fn
        self.name = name

    def run(self, ctx: Context) -> SuiteResult:
        start = time.perf_counter()
        records = self.inputs_fn()
        if not records:
            raise ValueError(f"{self.name}: inputs_fn returned no records")
        records, n_samples = limited(records, ctx, lambda r: r["subject"])
        log = ctx.open_log(self.name, report.fingerprint(
            "mmlu", "lm-eval hashes", ctx.scorer.max_length,
            [(r["sample_id"], r["context_ids"], r["continuation_ids"]) for r in records]))
        todo = [r for r in records if r["sample_id"] not in log.done]
        requests, owner = [], []
        for qi, r in enumerate(todo):
            for ci, cont in enumerate(r["continuation_ids"]):
                requests.append(scoring.Request(r["context_ids"], cont))
                owner.append((qi, ci))
        lls: dict[int, dict[int, float]] = {}
        scorer = ctx.choice_scorer or ctx.scorer
        max_len = scorer.max_length
        with _progress(scorer.num_batches(requests), self.name, ctx.progress) as bar:
            for idx, scores in scorer.iter_scores(requests):
                finished = []
                for i, s in zip(idx, scores):
                    qi, ci = owner[i]
                    lls.setdefault(qi, {})[ci] = s.loglikelihood
                    if len(lls[qi]) == len(todo[qi]["continuation_ids"]):
                        finished.append(qi)
                log.append(self._sample(todo[qi], lls.pop(qi), max_len) for qi in finished)
                bar.update(1)
        samples = [log.done[r["sample_id"]] for r in records]
        metrics = mmlu_metrics.aggregate(samples)
        num_shots = records[0].get("num_shots")
        cut = [_tokens_cut(s, max_len) for s in samples]
        config = {"num_shots": num_shots, "num_questions": len(records),
                  "num_subjects": metrics["overall"]["num_subjects"],
                  "max_length": max_len, "batch_size": scorer.batch_size,
                  "scorer": type(scorer).__name__, "limit": ctx.limit,
                  "truncated_prompts": sum(1 for c in cut if c),
                  "max_prompt_tokens_cut": max(cut),
                  "longest_prompt_tokens": max(s["num_prompt_tokens"] for s in samples),
                  "prompt": "lm-eval mmlu default template, first_n few-shot from dev"}
        lm_eval = lm_eval_schema.mmlu_document(
            self.name, metrics, num_shots or 0, n_samples, records[0].get("split", "test"),
            mmlu_metrics.SUBJECT_CATEGORIES)
        return SuiteResult(self.name, metrics, config, self._sections(metrics, config, samples),
                           _timing(start, len(todo), len(requests)), lm_eval)

    @staticmethod
    def _sample(r: Mapping[str, Any], lls: Mapping[int, float], max_len: int) -> dict[str, Any]:
        ll = [lls[i] for i in range(len(r["continuation_ids"]))]
        pred = mmlu_metrics.predict(ll)
        pred_norm = mmlu_metrics.predict_norm(ll, r["choices"])
        longest = max(len(c) for c in r["continuation_ids"])
        doc = json.loads(r["doc"]) if isinstance(r["doc"], str) else r["doc"]
        # lm-eval's target: doc_to_target(doc), the CSV's answer letter.
        target = doc.get("answer", r["target"]) if isinstance(doc, dict) else r["target"]
        cut = max(0, len(r["context_ids"]) + longest - max_len)
        return {
            "sample_id": r["sample_id"], "doc_id": r.get("doc_id"), "subject": r["subject"],
            "doc": doc, "prompt": r["prompt"], "choices": r["choices"], "target": target,
            "label": r["label"], "loglikelihoods": ll, "prediction": pred,
            "prediction_norm": pred_norm, "acc": float(pred == r["label"]),
            "acc_norm": float(pred_norm == r["label"]),
            "num_prompt_tokens": len(r["context_ids"]),
            "truncated": cut > 0, "prompt_tokens_cut": cut,
            **lm_eval_schema.sample_hashes(doc, r["prompt"], target),
        }

    def _sections(self, m: Mapping[str, Any], config: Mapping[str, Any],
                  samples: Sequence[Mapping[str, Any]]) -> list[Section]:
        o = m["overall"]
        limit = f" (limit {config['limit']} per subject)" if config.get("limit") else ""
        paragraphs = [
            f"{config['num_shots']}-shot, {o['n']} questions over {o['num_subjects']} "
            f"subjects{limit}. Chance is 0.25. acc_norm (lm-eval's: log-likelihood / choice "
            f"length in characters) equals acc for one-letter choices.",
            prompt_cut_paragraph(samples, config["max_length"]),
        ]
        se = o["acc_stderr"]
        if se == se and abs(o["acc"] - 0.25) <= 2 * se:  # (se == se: not nan)
            paragraphs.append(f"Accuracy {o['acc']:.3f} ± {se:.3f} is within two standard "
                              "errors of chance: this model does not answer MMLU better than "
                              "guessing (expected for a model this small).")
        overall = Table(("average", "acc", "stderr", "n"), [
            ("micro (weighted by questions)", o["acc"], o["acc_stderr"], o["n"]),
            ("micro, acc_norm", o.get("acc_norm"), o.get("acc_norm_stderr"), o["n"]),
            ("macro (mean over subjects)", o["acc_macro"], o["acc_macro_stderr"],
             o["num_subjects"])])
        cats = Table(("category", "acc", "stderr", "n", "subjects"),
                     [(c, v["acc"], v["acc_stderr"], v["n"], v["num_subjects"])
                      for c, v in m["categories"].items()])
        subs = Table(("subject", "category", "acc", "stderr", "n"),
                     [(s, mmlu_metrics.category_of(s), v["acc"], v["acc_stderr"], v["n"])
                      for s, v in m["subjects"].items()])
        fig = Figure(f"{self.name}_categories", "MMLU accuracy per category (±1 stderr)",
                     plots.accuracy_bars(m["categories"], title="MMLU by category", chance=0.25))
        return [Section(f"MMLU ({self.name})", paragraphs, [overall, cats, subs], [fig])]


@gin.configurable
class TextLMSuite:
    """Bits per byte and token perplexity on held-out documents.

    Every token of a document is scored once, in windows of the model length seeing up
    to `context` earlier tokens. With `position_curve`, the first window of each
    document keeps its per-token NLL for the cumulative-NLL-by-position curve and its
    power-law fit (documents shorter than `min_curve_tokens` are left out of the curve).
    """

    def __init__(self, inputs_fn: InputsFn = gin.REQUIRED, name: str = "text_lm",
                 context: int = 0, position_curve: bool = False, min_curve_tokens: int = 64,
                 compare_untrained: bool = False):
        self.inputs_fn = inputs_fn
        self.name = name
        self.context = context
        self.position_curve = position_curve
        self.min_curve_tokens = min_curve_tokens
        self.compare_untrained = compare_untrained

    def run(self, ctx: Context) -> SuiteResult:
        start = time.perf_counter()
        docs = [d for d in self.inputs_fn() if d["token_ids"]]
        if not docs:
            raise ValueError(f"{self.name}: inputs_fn returned no non-empty documents")
        docs, n_samples = limited(docs, ctx)
        samples, n_new, n_req = self._score_docs(ctx.scorer, docs, self.name, ctx)
        baseline = None
        if self.compare_untrained and ctx.baseline_scorer is not None:
            base, b_new, b_req = self._score_docs(ctx.baseline_scorer, docs,
                                                  f"{self.name}_untrained", ctx)
            baseline = lm_metrics.aggregate(base)
            n_new, n_req = n_new + b_new, n_req + b_req
        metrics = self._metrics(samples)
        if baseline is not None:
            metrics["untrained"] = {k: baseline[k] for k in (
                "bits_per_byte", "token_perplexity", "nll_per_token")}
        config = {"max_length": ctx.scorer.max_length, "context": self.context,
                  "num_documents": len(docs), "batch_size": ctx.scorer.batch_size,
                  "compared_with_untrained": baseline is not None, "limit": ctx.limit}
        lm_eval = lm_eval_schema.single_task_document(
            self.name, {"bits_per_byte": metrics["bits_per_byte"],
                        "byte_perplexity": 2.0 ** metrics["bits_per_byte"],
                        "token_perplexity": metrics["token_perplexity"]},
            len(docs), 0, {"output_type": "loglikelihood_rolling",
                           "max_length": ctx.scorer.max_length},
            {"bits_per_byte": False, "byte_perplexity": False, "token_perplexity": False},
            n_samples[""])
        return SuiteResult(self.name, metrics, config, self._sections(metrics),
                           _timing(start, n_new, n_req), lm_eval)

    def _score_docs(self, scorer: scoring.BatchedScorer, docs: list[dict[str, Any]], log_name: str,
                    ctx: Context) -> tuple[list[dict[str, Any]], int, int]:
        """Per-document samples (resumable through `samples_<log_name>.jsonl`)."""
        log = ctx.open_log(log_name, report.fingerprint(
            "text_lm", scorer.max_length, self.context, self.position_curve,
            [(d["sample_id"], d["token_ids"]) for d in docs]))
        todo = [d for d in docs if d["sample_id"] not in log.done]
        requests, owner = [], []
        for di, d in enumerate(todo):
            windows = scoring.rolling_requests(d["token_ids"], scorer.max_length, self.context)
            for wi, w in enumerate(windows):
                keep = self.position_curve and wi == 0
                requests.append(dataclasses.replace(w, keep_token_scores=keep))
                owner.append((di, wi, len(windows)))
        acc: dict[int, dict[int, scoring.Score]] = {}
        with _progress(scorer.num_batches(requests), log_name, ctx.progress) as bar:
            for idx, scores in scorer.iter_scores(requests):
                finished = []
                for i, s in zip(idx, scores):
                    di, wi, nw = owner[i]
                    acc.setdefault(di, {})[wi] = s
                    if len(acc[di]) == nw:
                        finished.append(di)
                log.append(self._sample(todo[di], acc.pop(di)) for di in finished)
                bar.update(1)
        return [log.done[d["sample_id"]] for d in docs], len(todo), len(requests)

    def _metrics(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        metrics = lm_metrics.aggregate(samples)
        curve_docs = [s["first_window_nll"] for s in samples
                      if s.get("first_window_nll") and
                      len(s["first_window_nll"]) >= self.min_curve_tokens]
        if self.position_curve and curve_docs:
            mean = long_context.mean_nll_by_position(curve_docs)
            cum = long_context.cumulative_average(mean)
            fit = long_context.fit_power_law(cum) if cum.size >= 4 else None
            metrics["nll_by_position"] = {"num_documents": len(curve_docs),
                                          "cumulative_nll": cum.round(5).tolist(),
                                          "power_law_fit": fit}
        return metrics

    @staticmethod
    def _sample(d: Mapping[str, Any], windows: Mapping[int, scoring.Score]) -> dict[str, Any]:
        nll = -sum(w.loglikelihood for w in windows.values())
        n_tok = sum(w.num_tokens for w in windows.values())
        n_bytes = len(d["text"].encode("utf-8"))
        first = windows[0].token_logliks
        return {
            "sample_id": d["sample_id"], "text": d["text"], "target": d["text"],
            "nll": nll, "num_tokens": n_tok, "num_bytes": n_bytes,
            "bits_per_byte": lm_metrics.bits_per_byte(nll, n_bytes),
            "first_window_nll": None if first is None else (-first).round(5).tolist(),
            **lm_eval_schema.sample_hashes(d["text"], d["text"], d["text"]),
        }

    def _sections(self, m: Mapping[str, Any]) -> list[Section]:
        u = m.get("untrained")
        rows = [(name, m[key]) + ((u[key],) if u else ()) for name, key in (
            ("bits per byte", "bits_per_byte"), ("token perplexity", "token_perplexity"),
            ("NLL per token (nats)", "nll_per_token"))]
        rows += [(name, m[key]) + (("",) if u else ()) for name, key in (
            ("documents", "n"), ("tokens", "num_tokens"), ("bytes", "num_bytes"))]
        table = Table(("metric", "this checkpoint") + (("untrained model",) if u else ()), rows)
        paragraphs = ["bpb = total NLL in nats / (UTF-8 bytes × ln 2); "
                      "perplexity = exp(total NLL / scored tokens)."]
        if u:
            verdict = "below" if m["bits_per_byte"] < u["bits_per_byte"] else "NOT below"
            paragraphs.append(f"Held-out bpb {m['bits_per_byte']:.4f} is {verdict} the untrained "
                              f"model's {u['bits_per_byte']:.4f} (same architecture, init seed).")
        figures = []
        curve = m.get("nll_by_position")
        if curve:
            fit = curve["power_law_fit"]
            if fit:
                paragraphs.append(
                    f"Cumulative average NLL by position over {curve['num_documents']} documents, "
                    f"fit L(x) = a·x^b + c: a={fit['a']:.4g}, b={fit['b']:.4g}, c={fit['c']:.4g}, "
                    f"R²={fit['r2']:.4f}.")
            figures.append(Figure(f"{self.name}_nll_by_position",
                                  "Cumulative average NLL by token position, with power-law fit",
                                  plots.curve_with_fit(curve["cumulative_nll"], fit,
                                                       title="NLL vs position",
                                                       xlabel="token position",
                                                       ylabel="cumulative avg NLL (nats)")))
        return [Section(f"Language modelling ({self.name})", paragraphs, [table], figures)]

"""Decoding suites: greedy generation from prompts (with media), scored by task kind.

Inputs (from a gin-bound `tasks/eval_inputs.py` function), one record per sample:

    {"sample_id": "1089-134686-0000", "prompt_ids": [7, 6, 6, ..., 8, 912],
     "features": {"audio": float16 [Ma, T, n_mels], "audio_lengths": int32 [Ma]},  # one row's media
     "answer": "HE HOPED THERE WOULD BE STEW FOR DINNER", "prompt_text": "...",
     "meta": {...}}   # per metric: options/label/type (MC), type (open), context_length/depth (NIAH)

`metric` picks the scoring:
    wer / cer        ASR: jiwer on Whisper-normalised text, corpus level (model/evaluation/asr.py)
    multiple_choice  answer letter parsed deterministically, unparseable = wrong (video_qa.py)
    exact_match      open-ended, exact match after normalisation, per question type (video_qa.py)
    contains         needle-in-a-haystack: the answer appears in the output (long_context.py)
    slots            named attributes (e.g. colour and shape of a caption): for each slot,
                     the first word of the output from that slot's vocabulary must equal
                     the reference's; reported per slot and all slots together

`Context.generate(prompts, max_new_tokens) -> [[token ids]]` (greedy, ids after the
prompt, EOS and what follows removed) is built by model/eval.py from model/decoding.py.
The decoded text is cut at the first of `stop_strings` (default: newline), like
lm-eval's `until`.
"""
from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import gin
import numpy as np

from model.evaluation import asr, lm_eval_schema, long_context, plots, report, stats, video_qa
from model.evaluation.report import Figure, Section, Table
from model.evaluation.suites import Context, InputsFn, SuiteResult, _progress, _timing, limited

METRICS = ("wer", "cer", "multiple_choice", "exact_match", "contains", "slots")
EOS_ID = 1


def slot_values(text: str, slot_vocab: Mapping[str, Sequence[str]]) -> dict[str, str | None]:
    """For each slot, the first word of `text` in that slot's vocabulary (None if none)."""
    words = video_qa.normalize_answer(text).split()
    return {slot: next((w for w in words if w in set(vocab)), None)
            for slot, vocab in slot_vocab.items()}


def strip_eos(tokens: Sequence[int]) -> list[int]:
    """Tokens up to (not including) the first EOS or padding 0."""
    out = []
    for t in tokens:
        if int(t) in (EOS_ID, 0):
            break
        out.append(int(t))
    return out


@gin.configurable
class GenerationSuite:
    """Greedy decoding of every prompt, then the metric named by `metric`."""

    def __init__(self, inputs_fn: InputsFn = gin.REQUIRED, name: str = gin.REQUIRED,
                 metric: str = gin.REQUIRED, max_new_tokens: int = 32, batch_size: int = 8,
                 language: str = "en", slot_vocab: Mapping[str, Sequence[str]] | None = None,
                 stop_strings: Sequence[str] = ("\n",)):
        if metric not in METRICS:
            raise ValueError(f"GenerationSuite {name}: metric must be one of {METRICS}, "
                             f"got {metric!r}")
        if (metric == "slots") != bool(slot_vocab):
            raise ValueError(f"GenerationSuite {name}: slot_vocab is needed by (and only by) "
                             "metric='slots', e.g. {'colour': ['red', ...], 'shape': [...]}")
        self.slot_vocab = {k: [w.lower() for w in v] for k, v in (slot_vocab or {}).items()}
        self.stop_strings = tuple(stop_strings)
        self.inputs_fn, self.name, self.metric = inputs_fn, name, metric
        self.max_new_tokens, self.batch_size, self.language = max_new_tokens, batch_size, language

    def run(self, ctx: Context) -> SuiteResult:
        if ctx.generate is None or ctx.detokenize is None:
            raise ValueError(f"{self.name}: decoding suites need Context.generate and "
                             "Context.detokenize (evaluate.detokenizer in gin)")
        start = time.perf_counter()
        records = self.inputs_fn()
        if not records:
            raise ValueError(f"{self.name}: inputs_fn returned no records")
        records, n_samples = limited(records, ctx)
        log = ctx.open_log(self.name, report.fingerprint(
            "generation", self.metric, self.max_new_tokens, self.stop_strings,
            [(r["sample_id"], r["prompt_ids"], r["answer"]) for r in records]))
        todo = sorted((r for r in records if r["sample_id"] not in log.done),
                      key=lambda r: -len(r["prompt_ids"]))
        batches = [todo[i:i + self.batch_size] for i in range(0, len(todo), self.batch_size)]
        with _progress(len(batches), self.name, ctx.progress) as bar:
            for chunk in batches:
                outs = ctx.generate([(r["prompt_ids"], r.get("features")) for r in chunk],
                                    self.max_new_tokens)
                log.append(self._sample(r, strip_eos(o), ctx) for r, o in zip(chunk, outs))
                bar.update(1)
        samples = [log.done[r["sample_id"]] for r in records]
        metrics = self._score(samples)
        config = {"metric": self.metric, "max_new_tokens": self.max_new_tokens,
                  "stop_strings": list(self.stop_strings),
                  "slot_vocab": self.slot_vocab or None,
                  "batch_size": self.batch_size, "num_samples": len(records),
                  "decoding": "greedy", "limit": ctx.limit}
        return SuiteResult(self.name, metrics, config, self._sections(metrics, samples),
                           _timing(start, len(todo), len(todo)),
                           self._lm_eval(metrics, config, n_samples[""]))

    def _lm_eval(self, m: Mapping[str, Any], config: Mapping[str, Any],
                 n_samples: Mapping[str, int]) -> dict[str, Any]:
        """This suite as one task in lm-eval's schema (`generate_until`)."""
        key = {"wer": "wer", "cer": "cer", "multiple_choice": "acc", "exact_match": "exact_match",
               "slots": "exact_match", "contains": "mean_recall"}[self.metric]
        values = {k: m[k] for k in (key, f"{key}_stderr") if k in m}
        return lm_eval_schema.single_task_document(
            self.name, values, m["n"], 0,
            {"output_type": "generate_until",
             "generation_kwargs": {"until": config["stop_strings"],
                                   "max_gen_toks": self.max_new_tokens, "do_sample": False}},
            {key: self.metric not in ("wer", "cer")}, n_samples)

    def _sample(self, r: Mapping[str, Any], out_ids: list[int], ctx: Context) -> dict[str, Any]:
        output = ctx.detokenize(out_ids)
        for stop in self.stop_strings:  # like lm-eval's `until`: the answer ends there
            output = output.split(stop, 1)[0] if stop else output
        prompt = r.get("prompt_text") or " ".join(map(str, r["prompt_ids"]))
        doc = r.get("doc", {"prompt_ids": list(r["prompt_ids"]), "answer": r["answer"]})
        rec = {"sample_id": r["sample_id"], "prompt": prompt, "target": r["answer"],
               "output": output, "output_ids": out_ids, "meta": r.get("meta", {}),
               **lm_eval_schema.sample_hashes(doc, prompt, r["answer"])}
        self._score([rec])  # adds this sample's own metric (wer / correct / recalled)
        return rec

    def _score(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        if self.metric in ("wer", "cer"):
            res = asr.score_corpus([s["target"] for s in samples], [s["output"] for s in samples],
                                   language=self.language,
                                   unit="word" if self.metric == "wer" else "char")
            per = res.pop("per_utterance")
            for s, p in zip(samples, per):
                s[self.metric] = p[self.metric]
            res["per_utterance_" + self.metric] = [p[self.metric] for p in per]
            return res
        if self.metric == "multiple_choice":
            res = video_qa.score_multiple_choice(
                {"output": s["output"], "label": s["meta"]["label"],
                 "options": s["meta"]["options"], "type": s["meta"].get("type", "")}
                for s in samples)
        elif self.metric == "exact_match":
            res = video_qa.score_open_ended(
                {"output": s["output"], "answer": s["target"], "type": s["meta"].get("type", "")}
                for s in samples)
        elif self.metric == "slots":
            return self._score_slots(samples)
        else:  # contains
            recalled = [long_context.needle_recalled(s["output"], s["target"]) for s in samples]
            res = long_context.niah_grid(
                {"context_length": s["meta"]["context_length"], "depth": s["meta"]["depth"],
                 "recalled": ok} for s, ok in zip(samples, recalled))
            res["per_sample"] = [{"recalled": ok} for ok in recalled]
        for s, p in zip(samples, res.pop("per_sample")):
            s.update(p)
        return res

    def _score_slots(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        per_slot: dict[str, list[float]] = {k: [] for k in self.slot_vocab}
        all_ok = []
        for s in samples:
            ref = slot_values(s["target"], self.slot_vocab)
            out = slot_values(s["output"], self.slot_vocab)
            oks = {k: float(ref[k] is not None and out[k] == ref[k]) for k in self.slot_vocab}
            for k, v in oks.items():
                per_slot[k].append(v)
            all_ok.append(float(all(oks.values())))
            s.update(slots_output=out, slots_reference=ref, correct=all_ok[-1])
        return {"exact_match": float(np.mean(all_ok)), "exact_match_stderr": stats.mean_stderr(all_ok),
                "n": len(all_ok),
                "per_slot": {k: {"acc": float(np.mean(v)), "acc_stderr": stats.mean_stderr(v)}
                             for k, v in per_slot.items()}}

    def _sections(self, m: Mapping[str, Any], samples: list[dict[str, Any]]) -> list[Section]:
        examples = Table(("sample", "target", "output"),
                         [(s["sample_id"], s["target"][:80], s["output"][:80]) for s in samples[:5]])
        figures, tables = [], []
        if self.metric in ("wer", "cer"):
            k = self.metric
            tables.append(Table(("metric", "value"), [
                (k.upper(), m[k]), ("substitutions", m["substitutions"]),
                ("deletions", m["deletions"]), ("insertions", m["insertions"]),
                ("reference units", m["reference_units"]), ("utterances", m["n"])]))
            vals = [v for v in m[f"per_utterance_{k}"] if v is not None]
            if vals:
                figures.append(Figure(f"{self.name}_{k}_hist", f"Per-utterance {k.upper()}",
                                      plots.histogram(vals, title=f"{self.name}: per-utterance {k.upper()}",
                                                      xlabel=k.upper())))
            paragraph = (f"Corpus {k.upper()} = total edits / total reference "
                         f"{'words' if k == 'wer' else 'characters'}, after Whisper's "
                         f"{'English' if self.language == 'en' else 'basic'} normaliser.")
        elif self.metric == "multiple_choice":
            tables.append(Table(("type", "acc", "stderr", "n"),
                                [("all", m["acc"], m["acc_stderr"], m["n"])]
                                + [(t, v["acc"], v["acc_stderr"], v["n"])
                                   for t, v in m["per_type"].items()]))
            if set(m["per_type"]) - {""}:  # the inputs carry question types
                figures.append(Figure(f"{self.name}_types", "Accuracy per question type",
                                      plots.accuracy_bars(m["per_type"], title=self.name)))
            paragraph = (f"Answer letter parsed deterministically; {m['unparseable']:.1%} of "
                         "outputs had no parseable letter and count as wrong.")
        elif self.metric == "slots":
            tables.append(Table(("slots", "exact match", "stderr", "n"),
                                [("all (" + " + ".join(self.slot_vocab) + ")", m["exact_match"],
                                  m["exact_match_stderr"], m["n"])]
                                + [(k, v["acc"], v["acc_stderr"], m["n"])
                                   for k, v in m["per_slot"].items()]))
            paragraph = ("A sample is right when, for every slot, the first word of the output "
                         "from that slot's vocabulary equals the reference's.")
        elif self.metric == "exact_match":
            tables.append(Table(("type", "exact match", "stderr", "n"),
                                [("all", m["exact_match"], m["exact_match_stderr"], m["n"])]
                                + [(t, v["exact_match"], v["exact_match_stderr"], v["n"])
                                   for t, v in m["per_type"].items()]))
            paragraph = "Exact match after lower-casing and dropping punctuation and articles."
        else:
            tables.append(Table(("depth \\ length", *map(str, m["context_lengths"])),
                                [(f"{d:g}", *row) for d, row in zip(m["depths"], m["recall"])]))
            figures.append(Figure(f"{self.name}_heatmap", "Needle recall per context length and depth",
                                  plots.heatmap(m["recall"], m["context_lengths"], m["depths"],
                                                title="Needle in a haystack", xlabel="context length (tokens)",
                                                ylabel="needle depth")))
            paragraph = f"Mean recall {m['mean_recall']:.3f} over {m['n']} prompts."
        return [Section(f"{self.name}", [paragraph], tables + [examples], figures)]

"""The curation stages as Beam PTransforms, composable before any tokenizer.

    docs = ...                                    # PCollection[{"id": str, "text": str}]
    out = docs | Curate(CurationConfig(...))      # {"kept", "rejects", "histograms"}

Steps (each a named transform; per-document logic is `score_document`, plain Python):

    Score           language (langid.py) -> Gopher quality (quality.py) -> Gopher repetition
                    (repetition.py) -> decontamination (decontaminate.py, the n-gram index
                    built once in the pipeline and given to every worker as a side input);
                    the first failing rule drops the document
    ExactDedup      normalised-text hash clusters (dedup.py), smallest id kept
    NearDedup       MinHash LSH + connected components (dedup.py, minhash.py), smallest id kept
    Histograms      every quality/repetition signal, binned (report.py's bins)

A reject is `{"id", "stage", "reason", "value", "detail"}`: the rule that dropped the
document (DataTrove's reason names for the Gopher rules), the value it had, and for
duplicates the id of the document kept in its place. Beam counters
`curation:{documents_in, kept, dropped_<reason>, decontaminated_by_cut}`.
"""

from __future__ import annotations

import argparse
import dataclasses

import apache_beam as beam

from pipelines.curation import decontaminate as decontaminate_lib
from pipelines.curation import dedup, langid, minhash, quality, repetition, report
from pipelines.curation import words as words_lib

NAMESPACE = "curation"


@dataclasses.dataclass(frozen=True)
class CurationConfig:
    """Which stages run and their settings; None turns a stage off."""

    langid: langid.LangIdConfig | None = langid.LangIdConfig()
    quality: quality.QualityConfig | None = quality.QualityConfig()
    repetition: repetition.RepetitionConfig | None = repetition.RepetitionConfig()
    eval_sets: tuple[str, ...] = ()  # decontaminate.parse_eval_set specs; () = no decontamination
    decontamination_mode: str = "drop"
    ngram: int = decontaminate_lib.NGRAM
    exact_dedup: bool = True
    minhash: minhash.MinHashConfig | None = minhash.MinHashConfig()
    rounds: int = dedup.DEFAULT_ROUNDS

    def __post_init__(self):
        if self.decontamination_mode not in ("drop", "cut"):
            raise ValueError(f"decontamination mode must be 'drop' or 'cut', got {self.decontamination_mode!r}")
        for spec in self.eval_sets:
            decontaminate_lib.parse_eval_set(spec)


def reject(doc_id: str, stage: str, reason: str, value, detail: str = "") -> dict:
    return {"id": doc_id, "stage": stage, "reason": reason, "value": value, "detail": detail}


def score_document(doc: dict, cfg: CurationConfig, identifier: langid.LanguageIdentifier | None,
                   index: decontaminate_lib.NgramIndex | None) -> tuple[dict | None, dict | None, dict]:
    """One document -> (kept doc or None, reject or None, signals). Stages in the module's order."""
    text, signals = doc["text"], {}
    if cfg.langid is not None and identifier is not None:
        lang, prob = identifier.identify(text, cfg.langid.max_chars)
        signals["language_probability"] = prob if lang in cfg.langid.languages else 0.0
        if (v := langid.language_verdict(lang, prob, cfg.langid)) is not None:
            return None, reject(doc["id"], "language", v[0], round(v[1], 4), f"identified as {lang}"), signals
    words = words_lib.split_words(text) if cfg.quality or cfg.repetition else None
    for stage, stage_cfg, measure, verdict in (
            ("quality", cfg.quality, lambda c: quality.quality_signals(text, words, c.stop_words),
             quality.quality_verdict),
            ("repetition", cfg.repetition, lambda c: repetition.repetition_signals(text, words, c),
             repetition.repetition_verdict)):
        if stage_cfg is None:
            continue
        s = measure(stage_cfg)
        signals.update(s)
        if (v := verdict(s, stage_cfg)) is not None:
            return None, reject(doc["id"], stage, v[0], round(float(v[1]), 4)), signals
    if index is not None:
        kept, matches, which = decontaminate_lib.decontaminate(text, index, cfg.decontamination_mode)
        if kept is None:
            return None, reject(doc["id"], "decontamination", f"contaminated_{which}", matches,
                                f"{matches} {index.ngram}-gram matches with {which}"), signals
        if matches:
            signals["decontamination_cut_ngrams"] = matches
            doc = {**doc, "text": kept}
    return doc, None, signals


class _Score(beam.DoFn):
    def __init__(self, cfg: CurationConfig):
        self._cfg = cfg

    def setup(self):
        self._identifier = langid.LanguageIdentifier() if self._cfg.langid else None
        self._counters = {}

    def _count(self, name):
        if name not in self._counters:
            self._counters[name] = beam.metrics.Metrics.counter(NAMESPACE, name)
        self._counters[name].inc()

    def process(self, doc, index=None):
        self._count("documents_in")
        kept, rej, signals = score_document(doc, self._cfg, self._identifier, index)
        yield beam.pvalue.TaggedOutput("signals", signals)
        if rej is not None:
            self._count(f"dropped_{rej['reason']}")
            yield beam.pvalue.TaggedOutput("rejects", rej)
        else:
            if "decontamination_cut_ngrams" in signals:
                self._count("decontaminated_by_cut")  # kept, with the matching spans cut out
            yield kept


class _DropDuplicates(beam.PTransform):
    """(docs by id, (id, kept id) to drop) -> (kept docs, rejects)."""

    def __init__(self, stage: str, reason: str):
        super().__init__()
        self._stage, self._reason = stage, reason

    def expand(self, pcolls):
        docs, drops = pcolls
        stage, reason = self._stage, self._reason
        counter = beam.metrics.Metrics.counter(NAMESPACE, f"dropped_{reason}")

        def split(element):
            doc_id, grouped = element
            kept_ids = list(grouped["drop"])
            for doc in grouped["doc"]:
                if kept_ids:
                    counter.inc()
                    yield beam.pvalue.TaggedOutput("rejects", reject(doc_id, stage, reason, 1,
                                                                     f"duplicate of {min(kept_ids)}"))
                else:
                    yield doc

        keyed = docs | "ById" >> beam.Map(lambda d: (d["id"], d))
        return ({"doc": keyed, "drop": drops}
                | "Join" >> beam.CoGroupByKey()
                | "Split" >> beam.FlatMap(split).with_outputs("rejects", main="kept"))


def _id_text(doc: dict) -> tuple[str, str]:
    return doc["id"], doc["text"]


class Curate(beam.PTransform):
    """PCollection[{"id", "text"}] -> {"kept": docs, "rejects": reject dicts, "histograms": one dict}."""

    def __init__(self, cfg: CurationConfig = CurationConfig()):
        super().__init__()
        self._cfg = cfg

    def expand(self, docs):
        cfg = self._cfg
        side = {}
        if cfg.eval_sets:
            specs, ngram = cfg.eval_sets, cfg.ngram
            index = (docs.pipeline
                     | "EvalSets" >> beam.Create([specs])
                     | "BuildIndex" >> beam.Map(lambda s: decontaminate_lib.build_index(s, ngram)))
            side["index"] = beam.pvalue.AsSingleton(index)
        scored = docs | "Score" >> beam.ParDo(_Score(cfg), **side).with_outputs("rejects", "signals", main="kept")
        kept, rejects = scored.kept, [scored.rejects]
        if cfg.exact_dedup:
            drops = kept | "ExactPairs" >> beam.Map(_id_text) | "ExactDedup" >> dedup.ExactDuplicates()
            out = (kept, drops) | "DropExact" >> _DropDuplicates("exact_dedup", "exact_duplicate")
            kept = out.kept
            rejects.append(out.rejects)
        if cfg.minhash is not None:
            drops = (kept | "NearPairs" >> beam.Map(_id_text)
                     | "NearDedup" >> dedup.NearDuplicates(cfg.minhash, cfg.rounds))
            out = (kept, drops) | "DropNear" >> _DropDuplicates("near_dedup", "near_duplicate")
            kept = out.kept
            rejects.append(out.rejects)
        histograms = scored.signals | "Histograms" >> beam.CombineGlobally(report.HistogramFn())
        counter = beam.metrics.Metrics.counter(NAMESPACE, "kept")
        kept = kept | "CountKept" >> beam.Map(lambda d: (counter.inc(), d)[1])
        return {"kept": kept, "rejects": rejects | "AllRejects" >> beam.Flatten(), "histograms": histograms}


def config_from_flags(args) -> CurationConfig:
    """A CurationConfig from the flags `add_flags` defines."""
    qcfg = quality.QualityConfig(min_words=args.min_words, max_words=args.max_words) if args.quality else None
    return CurationConfig(
        langid=langid.LangIdConfig(tuple(l for l in args.languages.split(",") if l), args.min_language_probability)
        if args.languages else None,
        quality=qcfg,
        repetition=repetition.RepetitionConfig() if args.repetition else None,
        eval_sets=tuple(args.eval_set or ()),
        decontamination_mode=args.decontamination,
        exact_dedup=args.exact_dedup,
        minhash=minhash.MinHashConfig(args.minhash_ngrams, args.minhash_bands, args.minhash_rows, args.minhash_seed)
        if args.near_dedup else None,
        rounds=args.cc_rounds)


def add_flags(parser) -> None:
    """The curation flags (shared by the curation job and `--curate` on the text and corpus jobs)."""
    b = {"action": argparse.BooleanOptionalAction}
    parser.add_argument("--languages", default="en",
                        help="comma-separated languages to keep (py3langid codes); empty: no language filter")
    parser.add_argument("--min_language_probability", type=float, default=0.0,
                        help="drop documents whose language probability is lower")
    parser.add_argument("--quality", default=True, help="Gopher quality filter", **b)
    parser.add_argument("--min_words", type=int, default=50, help="Gopher quality: fewest words")
    parser.add_argument("--max_words", type=int, default=100_000, help="Gopher quality: most words")
    parser.add_argument("--repetition", default=True, help="Gopher repetition filter", **b)
    parser.add_argument("--eval_set", action="append",
                        help="evaluation set to decontaminate against, [name=]kind:path with kind in "
                             f"{decontaminate_lib.EVAL_KINDS}; repeatable (e.g. mmlu:../shared/data/mmlu)")
    parser.add_argument("--decontamination", choices=("drop", "cut"), default="drop",
                        help="drop a contaminated document, or cut the matching spans out of it")
    parser.add_argument("--exact_dedup", default=True, help="drop exact duplicates (normalised text)", **b)
    parser.add_argument("--near_dedup", default=True, help="drop MinHash-LSH near duplicates", **b)
    parser.add_argument("--minhash_ngrams", type=int, default=5, help="MinHash shingle size in words")
    parser.add_argument("--minhash_bands", type=int, default=14, help="LSH bands")
    parser.add_argument("--minhash_rows", type=int, default=8, help="hashes per LSH band")
    parser.add_argument("--minhash_seed", type=int, default=1, help="seed of the MinHash permutations")
    parser.add_argument("--cc_rounds", type=int, default=dedup.DEFAULT_ROUNDS,
                        help="large-star/small-star rounds of the connected components")

"""Beam job: the generated multimodal corpus of the demo, written as real-data manifests.

    python -m pipelines.generate_corpus --output_dir=/tmp/corpus --split=train --seed=0
    python -m pipelines.generate_corpus --output_dir=/tmp/corpus --split=train,validation,test  # the demo's

writes `<output_dir>/<split>/` (every path in a manifest is relative to it):

    images/captions.jsonl        {"image": "img/000001.png", "caption": "a red circle on the left",
                                  "colour": "red", "shape": "circle", "position": "left"}
    speech/manifest.jsonl        {"audio": "audio/000001.wav", "text": "three four seven",
                                  "sample_rate": 22050, "duration_s": 1.02, "voice": "en-us+f2", ...}
    video_qa/<split>.csv         NExT-QA columns: video, frame_count, width, height, question,
                                  answer (index of the right option), qid, type, a0..a4
    video_qa/<split>_q.json      ActivityNet-QA [{"question", "question_id", "video_name"}]
    video_qa/<split>_a.json      ActivityNet-QA [{"answer", "question_id", "type"}]
    video_qa/v_motion000001.mp4  the videos, beside the annotations (both readers' default
                                  file names: NExT-QA `{video}.mp4`, ActivityNet `v_{video}.mp4`)
    interleaved/documents.jsonl  {"id": "interleaved-000001", "parts": [{"text"}, {"image": "media/..."}, ...]}
    text/documents.jsonl         {"text": "..."}: generated, or whole paragraphs of --books when given
    corpus_info.json             written last: config, counts, seconds, and `reader_inputs`
                                  ({preprocess_multimodal --kind: manifest}); its presence = complete

Every video has one open-ended question (ActivityNet-QA, answer "left" / "right" /
"up" / "down", type 0 = motion) and the same question as multiple choice
(NExT-QA, the four directions and "it stays still", shuffled; type "TC").

Defaults are the demo's sizes (`DEMO_SIZES`), chosen so a tiny model learns
every task within the demo's training budget:

    split       images  speech  videos  interleaved  text
    train         3000    4000    3000         1000  2000
    validation     200     200     200          100   100
    test           300     300     300          100   100

with small media: 32x32 PNG images; MPEG-4 videos of 4 frames of 32x32 at 1 fps
(the preprocessing default of 1 fps keeps all 4); 3-4 spoken digits at 22.05 kHz
(about 0.7-1.8 s). All three splits take about 40-60 s on 2 busy cores and
~320 MB (mostly WAV). Examples are
deterministic from (seed, split, kind, index) (`synthetic/seeding.py`; spoken
clips also from the clips before them in their fixed chunk), so the
same flags give byte-identical files whatever the runner, worker count or
order, and held-out splits draw from disjoint seeds.

Beam: work items (kind, chunk of 50 indices) -> Reshuffle -> generate + write
media (eSpeak checked once per worker in `setup`, one fresh eSpeak session per
chunk) -> group by kind -> one manifest per kind, sorted by index. Local runs
use the FnApiRunner with one process per core (`pipelines.beam_options`);
`--runner=DataflowRunner ...` with a gs:// output_dir works through
PipelineOptions alone. `generate_in_process` writes the same files in a plain
loop (tests check they are byte-identical to the job's).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import os
import shutil
import sys
import time
from typing import Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np

from pipelines import beam_options, media_io
from pipelines.synthetic import interleaved, motion_video, seeding, shapes, speech, text

KINDS = ("image", "speech", "video", "interleaved", "text")
INFO_FILE = "corpus_info.json"
# Demo sizes per split: (images, speech, videos, interleaved documents, text documents).
DEMO_SIZES = {
    "train": {"image": 3000, "speech": 4000, "video": 3000, "interleaved": 1000, "text": 2000},
    "validation": {"image": 200, "speech": 200, "video": 200, "interleaved": 100, "text": 100},
    "test": {"image": 300, "speech": 300, "video": 300, "interleaved": 100, "text": 100},
}
NEXTQA_COLUMNS = ("video", "frame_count", "width", "height", "question", "answer", "qid", "type",
                  "a0", "a1", "a2", "a3", "a4")
ACTIVITYNET_MOTION_TYPE = 0  # ActivityNet-QA question type 0 = Motion
NEXTQA_TYPE = "TC"           # NExT-QA "temporal current": what is happening
# Examples are made in fixed chunks of consecutive indices (one Beam element, one eSpeak
# session each); fixed, so the files never depend on the runner or worker count.
CHUNK_SIZE = 50


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    """What to generate; `counts` maps each kind to its number of examples."""
    output_dir: str
    split: str
    seed: int = 0
    counts: tuple[tuple[str, int], ...] = tuple(DEMO_SIZES["train"].items())
    image_size: int = 32
    frame_size: int = 32
    num_frames: int = 4
    fps: int = 1
    num_digits: tuple[int, int] = speech.NUM_DIGITS
    books: tuple[str, ...] = ()  # book files; when given, text documents come from them

    def __post_init__(self):
        if self.split not in seeding.SPLITS:
            raise ValueError(f"--split must be one of {seeding.SPLITS}, got {self.split!r}")
        if self.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {self.seed}")
        unknown = set(dict(self.counts)) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown kinds {sorted(unknown)} in counts; use {KINDS}")
        for kind, n in self.counts:
            if n < 0:
                raise ValueError(f"--num_{kind} must be >= 0, got {n}")
        # Fail here, not on a worker: sample once with every size setting.
        rng = np.random.default_rng(0)
        shapes.sample_shape_spec(rng, self.image_size)
        motion_video.sample_motion_spec(rng, self.frame_size, self.num_frames, self.fps)
        speech.sample_speech_spec(rng, self.num_digits)

    @classmethod
    def demo(cls, output_dir: str, split: str, seed: int = 0, **overrides) -> "CorpusConfig":
        """The demo's corpus for `split` (sizes from `DEMO_SIZES`)."""
        if split not in DEMO_SIZES:
            raise ValueError(f"split must be one of {tuple(DEMO_SIZES)}, got {split!r}")
        return cls(output_dir=output_dir, split=split, seed=seed,
                   counts=tuple(DEMO_SIZES[split].items()), **overrides)

    @property
    def split_dir(self) -> str:
        return join(self.output_dir, self.split)

    def count(self, kind: str) -> int:
        return dict(self.counts).get(kind, 0)

    def media_sizes(self) -> interleaved.MediaSizes:
        return interleaved.MediaSizes(self.image_size, self.frame_size, self.num_frames, self.fps,
                                      self.num_digits)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["counts"] = dict(self.counts)
        d["num_digits"] = list(self.num_digits)
        d["books"] = list(self.books)
        del d["output_dir"]
        return d


# ---------------------------------------------------------------- files


def join(base: str, *parts: str) -> str:
    if media_io.has_scheme(base):
        return "/".join([base.rstrip("/"), *parts])
    return os.path.join(base, *parts)


def write_file(path: str, data: bytes) -> None:
    """Writes `data` to a local path (parents created) or any Beam FileSystems URI."""
    if media_io.has_scheme(path):
        from apache_beam.io.filesystems import FileSystems
        with FileSystems.create(path) as f:
            f.write(data)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def jsonl(records: Iterable[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


# ---------------------------------------------------------------- one example (pure)


def video_stem(index: int) -> str:
    """The id of video `index`; its file is `v_<stem>.mp4` (ActivityNet's naming)."""
    return f"motion{index:06d}"


def num_chunks(cfg: CorpusConfig, kind: str) -> int:
    return -(-cfg.count(kind) // CHUNK_SIZE)


def make_examples(cfg: CorpusConfig, kind: str, chunk: int) -> list[tuple[int, dict, list[tuple[str, bytes]]]]:
    """Examples `chunk * CHUNK_SIZE ...` (up to the kind's count) of `kind`, in index order:
    [(index, manifest record, [(path relative to the split dir, bytes)])].

    One eSpeak session per chunk: a clip depends on its chunk, never on the worker or order.
    """
    indices = range(chunk * CHUNK_SIZE, min((chunk + 1) * CHUNK_SIZE, cfg.count(kind)))
    if not indices:
        raise ValueError(f"chunk {chunk} of {kind} is empty ({cfg.count(kind)} examples, {CHUNK_SIZE} per chunk)")
    if kind not in ("speech", "interleaved"):
        return [(i, *_make(cfg, kind, i, None)) for i in indices]
    with speech.session() as synth:
        return [(i, *_make(cfg, kind, i, synth)) for i in indices]


def make_example(cfg: CorpusConfig, kind: str, index: int) -> tuple[dict, list[tuple[str, bytes]]]:
    """(record, files) of one example (generates its whole chunk; for tests and inspection)."""
    for i, record, files in make_examples(cfg, kind, index // CHUNK_SIZE):
        if i == index:
            return record, files
    raise IndexError(f"{kind} example {index} is beyond the configured {cfg.count(kind)}")


def _make(cfg: CorpusConfig, kind: str, index: int, synth) -> tuple[dict, list[tuple[str, bytes]]]:
    rng = seeding.example_rng(cfg.seed, cfg.split, kind, index)
    name = f"{index:06d}"
    if kind == "image":
        png, caption, spec = shapes.generate(rng, cfg.image_size)
        record = {"image": f"img/{name}.png", "caption": caption,
                  "colour": spec.colour, "shape": spec.shape, "position": spec.position}
        return record, [(f"images/img/{name}.png", png)]
    if kind == "speech":
        samples, rate, spec = speech.generate(rng, cfg.num_digits, synth)
        record = {"audio": f"audio/{name}.wav", "text": spec.text, "sample_rate": rate,
                  "duration_s": round(len(samples) / rate, 4), "voice": spec.voice,
                  "rate_wpm": spec.rate, "pitch": spec.pitch}
        return record, [(f"speech/audio/{name}.wav", speech.wav_bytes(samples, rate))]
    if kind == "video":
        mp4, spec = motion_video.generate(rng, cfg.frame_size, cfg.num_frames, cfg.fps)
        options, answer = motion_video.choices(rng, spec)
        stem = video_stem(index)
        record = {"stem": stem, "question": motion_video.question(spec), "direction": spec.direction,
                  "options": options, "answer_index": answer, "colour": spec.colour, "shape": spec.shape}
        return record, [(f"video_qa/v_{stem}.mp4", mp4)]
    if kind == "interleaved":
        doc = interleaved.generate(rng, f"media/{name}", cfg.media_sizes(), synth)
        record = {"id": f"interleaved-{name}", "parts": doc.parts}
        return record, [(f"interleaved/{path}", data) for path, data in doc.media]
    if kind == "text":
        return {"text": text.generated_document(rng)}, []
    raise ValueError(f"unknown kind {kind!r}; use one of {KINDS}")


# ---------------------------------------------------------------- manifests (pure)


def manifest_files(cfg: CorpusConfig, kind: str, records: Sequence[dict]) -> list[tuple[str, bytes]]:
    """The manifest file(s) of `kind`, from its records in index order."""
    if kind == "image":
        return [("images/captions.jsonl", jsonl(records))]
    if kind == "speech":
        return [("speech/manifest.jsonl", jsonl(records))]
    if kind == "interleaved":
        return [("interleaved/documents.jsonl", jsonl(records))]
    if kind == "text":
        return [("text/documents.jsonl", jsonl(records))]
    if kind != "video":
        raise ValueError(f"unknown kind {kind!r}; use one of {KINDS}")
    rows, questions, answers = [], [], []
    for r in records:
        rows.append({"video": f"v_{r['stem']}", "frame_count": cfg.num_frames, "width": cfg.frame_size,
                     "height": cfg.frame_size, "question": r["question"], "answer": r["answer_index"],
                     "qid": 0, "type": NEXTQA_TYPE, **{f"a{i}": o for i, o in enumerate(r["options"])}})
        qid = f"v_{r['stem']}_0"
        questions.append({"video_name": r["stem"], "question": r["question"], "question_id": qid})
        answers.append({"answer": r["direction"], "type": ACTIVITYNET_MOTION_TYPE, "question_id": qid})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=NEXTQA_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return [(f"video_qa/{cfg.split}.csv", buf.getvalue().encode("utf-8")),
            (f"video_qa/{cfg.split}_q.json", json.dumps(questions).encode("utf-8")),
            (f"video_qa/{cfg.split}_a.json", json.dumps(answers).encode("utf-8"))]


def reader_inputs(split: str) -> dict[str, str]:
    """{`preprocess_multimodal --kind`: its input, relative to the split dir} for one split.

    E.g. `--kind=nextqa --input=<output_dir>/<split>/video_qa/<split>.csv` (videos beside it).
    """
    return {"captions": "images/captions.jsonl", "speech_manifest": "speech/manifest.jsonl",
            "nextqa": f"video_qa/{split}.csv", "activitynet_qa": f"video_qa/{split}_q.json",
            "interleaved": "interleaved/documents.jsonl", "text": "text/documents.jsonl"}


def book_records(cfg: CorpusConfig) -> list[dict]:
    """Text documents of this split cut from `cfg.books` (in the order given)."""
    docs = []
    for path in cfg.books:
        docs.extend(text.book_documents(media_io.read_text(path), cfg.split))
    return [{"text": d} for d in docs]


# ---------------------------------------------------------------- Beam


class GenerateExamples(beam.DoFn):
    """(kind, chunk) -> writes the chunk's media, yields (kind, (index, record)) per example."""

    def __init__(self, cfg: CorpusConfig):
        self._cfg = cfg

    def setup(self):
        if self._cfg.count("speech") or self._cfg.count("interleaved"):
            speech.engine()  # load eSpeak NG once per worker

    def process(self, item: tuple[str, int]) -> Iterator[tuple[str, tuple[int, dict]]]:
        kind, chunk = item
        for index, record, files in make_examples(self._cfg, kind, chunk):
            for rel, data in files:
                write_file(join(self._cfg.split_dir, rel), data)
            beam.metrics.Metrics.counter("generate_corpus", f"{kind}_examples").inc()
            beam.metrics.Metrics.counter("generate_corpus", f"{kind}_media_files").inc(len(files))
            yield kind, (index, record)


def write_manifests(cfg: CorpusConfig, kind_records: tuple[str, Iterable[tuple[int, dict]]]) -> tuple[str, int]:
    kind, indexed = kind_records
    records = [r for _, r in sorted(indexed, key=lambda x: x[0])]
    for rel, data in manifest_files(cfg, kind, records):
        write_file(join(cfg.split_dir, rel), data)
    return kind, len(records)


def write_info(cfg: CorpusConfig, counts: dict[str, int], started: float) -> None:
    info = {**cfg.to_json(), "written": {k: counts.get(k, 0) for k in KINDS},
            "reader_inputs": reader_inputs(cfg.split), "seconds": round(time.time() - started, 1)}
    write_file(join(cfg.split_dir, INFO_FILE), json.dumps(info, indent=1).encode("utf-8"))


class GenerateCorpus(beam.PTransform):
    """Writes every example and manifest of one split; outputs {kind: count} once."""

    def __init__(self, cfg: CorpusConfig, started: float):
        super().__init__()
        self._cfg = cfg
        self._started = started

    def expand(self, pbegin):
        cfg, started = self._cfg, self._started
        generated_kinds = [k for k in KINDS if not (k == "text" and cfg.books)]
        items = [(k, c) for k in generated_kinds for c in range(num_chunks(cfg, k))]
        generated = (pbegin
                     | "WorkItems" >> beam.Create(items)
                     | "Spread" >> beam.Reshuffle()
                     | "Generate" >> beam.ParDo(GenerateExamples(cfg)))
        if cfg.books:
            books = pbegin | "Books" >> beam.Create(
                [("text", (i, r)) for i, r in enumerate(book_records(cfg))])
            generated = (generated, books) | "WithBooks" >> beam.Flatten()
        # Empty kinds still get (empty) manifests, so readers never miss a file.
        empty = pbegin | "AllKinds" >> beam.Create([(k, None) for k in KINDS])
        return ((generated, empty)
                | "Together" >> beam.Flatten()
                | "ByKind" >> beam.GroupByKey()
                | "Manifests" >> beam.Map(lambda kv: write_manifests(cfg, (kv[0], [x for x in kv[1] if x])))
                | "Counts" >> beam.combiners.ToDict()
                | "Info" >> beam.Map(lambda counts: write_info(cfg, counts, started)))


def generate_in_process(cfg: CorpusConfig) -> dict[str, int]:
    """The same corpus as the Beam job, in a plain loop (small sets, tests, timing baselines)."""
    started = time.time()
    counts = {}
    for kind in KINDS:
        if kind == "text" and cfg.books:
            records = book_records(cfg)
        else:
            records = []
            for chunk in range(num_chunks(cfg, kind)):
                for _, record, files in make_examples(cfg, kind, chunk):
                    for rel, data in files:
                        write_file(join(cfg.split_dir, rel), data)
                    records.append(record)
        counts[kind] = write_manifests(cfg, (kind, enumerate(records)))[1]
    write_info(cfg, counts, started)
    return counts


# ---------------------------------------------------------------- driver


def is_complete(cfg: CorpusConfig) -> bool:
    """True when `cfg.split_dir` holds a finished corpus made with exactly `cfg`."""
    path = join(cfg.split_dir, INFO_FILE)
    try:
        info = json.loads(media_io.read_text(path))
    except (OSError, ValueError):
        return False
    return all(info.get(k) == v for k, v in cfg.to_json().items())


def run_splits(cfgs: Sequence[CorpusConfig], beam_args: Sequence[str] = (), *,
               force: bool = False) -> dict[str, dict]:
    """Generates several splits in one Beam pipeline (complete ones skipped unless `force`).

    Returns {split: corpus_info}.
    """
    started = time.time()
    todo = []
    for cfg in cfgs:
        if not force and is_complete(cfg):
            print(f"[generate_corpus] {cfg.split_dir} is complete for these settings; skipping "
                  f"(--force to regenerate)", flush=True)
            continue
        if not media_io.has_scheme(cfg.split_dir) and os.path.isdir(cfg.split_dir):
            shutil.rmtree(cfg.split_dir)  # no stale files from an earlier, different run
        todo.append(cfg)
    if todo:
        print(f"[generate_corpus] generating {', '.join(c.split for c in todo)} ...", flush=True)
        with beam.Pipeline(options=beam_options.pipeline_options(beam_args)) as pipeline:
            for cfg in todo:
                _ = pipeline | f"GenerateCorpus_{cfg.split}" >> GenerateCorpus(cfg, started)
    infos = {}
    for cfg in cfgs:
        info = infos[cfg.split] = json.loads(media_io.read_text(join(cfg.split_dir, INFO_FILE)))
        counts = ", ".join(f"{n} {k}" for k, n in info["written"].items())
        print(f"[generate_corpus] {cfg.split}: {counts} -> {cfg.split_dir}", flush=True)
    print(f"[generate_corpus] done in {time.time() - started:.1f} s", flush=True)
    return infos


def run(cfg: CorpusConfig, beam_args: Sequence[str] = (), *, force: bool = False) -> dict:
    """Generates one split (skipped when already complete, unless `force`); returns its info."""
    return run_splits([cfg], beam_args, force=force)[cfg.split]


def parse_args(argv: Sequence[str]) -> tuple[list[CorpusConfig], bool, list[str]]:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", required=True, help="the corpus root; a split goes to <output_dir>/<split>")
    p.add_argument("--split", default="train",
                   help=f"one of {seeding.SPLITS}, or several joined by commas (one Beam pipeline)")
    p.add_argument("--seed", type=int, default=0, help="base seed; the split is mixed in (disjoint streams)")
    p.add_argument("--num_examples", type=int, default=None,
                   help="every kind's count at once (overridden by the --num_<kind> flags)")
    for kind in KINDS:
        p.add_argument(f"--num_{kind}", type=int, default=None,
                       help=f"number of {kind} examples (demo default: train {DEMO_SIZES['train'][kind]}, "
                            f"validation {DEMO_SIZES['validation'][kind]}, test {DEMO_SIZES['test'][kind]})")
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--frame_size", type=int, default=32)
    p.add_argument("--num_frames", type=int, default=4)
    p.add_argument("--fps", type=int, default=1)
    p.add_argument("--min_digits", type=int, default=speech.NUM_DIGITS[0])
    p.add_argument("--max_digits", type=int, default=speech.NUM_DIGITS[1])
    p.add_argument("--books", nargs="*", default=[],
                   help="book text files (e.g. Gutenberg); when given, text documents are their paragraphs "
                        "(18/20 of chunks to train, 1/20 each to validation and test) instead of generated text")
    p.add_argument("--force", action="store_true", help="regenerate even when the split is complete")
    args, beam_args = p.parse_known_args(argv)
    splits = [s.strip() for s in args.split.split(",") if s.strip()]
    bad = [s for s in splits if s not in seeding.SPLITS]
    if bad or not splits or len(set(splits)) != len(splits):
        p.error(f"--split={args.split!r}: use distinct names from {seeding.SPLITS}, e.g. --split=train,test")
    missing = [b for b in args.books if not media_io.has_scheme(b) and not os.path.isfile(b)]
    if missing:
        p.error(f"--books: no such file(s) {missing}")
    cfgs = []
    for split in splits:
        counts = {}
        for kind in KINDS:
            n = getattr(args, f"num_{kind}")
            if n is None:
                n = args.num_examples if args.num_examples is not None else DEMO_SIZES[split][kind]
            counts[kind] = n
        try:
            cfgs.append(CorpusConfig(
                output_dir=args.output_dir, split=split, seed=args.seed, counts=tuple(counts.items()),
                image_size=args.image_size, frame_size=args.frame_size, num_frames=args.num_frames,
                fps=args.fps, num_digits=(args.min_digits, args.max_digits), books=tuple(args.books)))
        except ValueError as e:
            p.error(str(e))
    return cfgs, args.force, beam_args


def main(argv: Sequence[str] | None = None) -> None:
    cfgs, force, beam_args = parse_args(sys.argv[1:] if argv is None else argv)
    run_splits(cfgs, beam_args, force=force)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()

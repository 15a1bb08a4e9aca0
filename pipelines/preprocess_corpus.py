r"""Beam job: every source of a generated corpus (all splits) -> SeqIO caches, in one pipeline.

    python -m pipelines.preprocess_corpus --corpus_dir=/tmp/demo/corpus --cache_dir=/tmp/demo/cache \
        --splits=train,validation,test --image_size=32 --image_patch_size=8 ...

reads the manifests `pipelines.generate_corpus` writes (the same formats real
data uses) under `<corpus_dir>/<split>/`:

    images/captions.jsonl         kind captions         -> task tapestry_mm_captions
    speech/manifest.jsonl         kind speech_manifest  -> task tapestry_mm_speech_manifest
    video_qa/<split>.csv          kind nextqa           -> task tapestry_mm_nextqa
    video_qa/<split>_q.json       kind activitynet_qa   -> task tapestry_mm_activitynet_qa
    interleaved/documents.jsonl   kind interleaved      -> task tapestry_mm_interleaved
    text/documents.jsonl          text LM               -> task tapestry_text (tasks/text.py)

Each (source, split) is one `PreprocessMultimodal` (or `PreprocessText`) under
its own label, so the whole corpus costs one pipeline start-up instead of
eighteen. Media options are the multimodal job's (`--image_size`, ...); dead
letters and summaries land beside each task's cache as usual. A summary line per
(task, split) is printed at the end, and the job exits non-zero if any summary does
not balance (a document lost or duplicated: pipelines/job_summary.py). With
`--curate=train`, the train split's text is curated first (pipelines/curation; its
flags apply), decontaminated against the other splits' text as well, and the kept
documents are tokenized; curation outputs land in `<cache_dir>/tapestry_text/curated.train/`.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipelines import beam_options, job_summary, mm_readers, preprocess_multimodal, preprocess_text
from pipelines.curation import curate
from pipelines.curation import transforms as curation_transforms

# (kind, manifest path under <corpus_dir>/<split>/ with {split} filled in)
CORPUS_SOURCES = (
    ("captions", "images/captions.jsonl"),
    ("speech_manifest", "speech/manifest.jsonl"),
    ("nextqa", "video_qa/{split}.csv"),
    ("activitynet_qa", "video_qa/{split}_q.json"),
    ("interleaved", "interleaved/documents.jsonl"),
)
TEXT_SOURCE = "text/documents.jsonl"
TEXT_TASK = "tapestry_text"


def main(argv: Sequence[str] | None = None) -> dict:
    parser = beam_options.make_parser(__doc__)
    parser.add_argument("--corpus_dir", required=True, help="root written by pipelines.generate_corpus")
    parser.add_argument("--cache_dir", required=True, help="root of the SeqIO caches (any FileSystems URI)")
    parser.add_argument("--splits", default="train,validation,test", help="comma-separated corpus splits")
    parser.add_argument("--vocab", default=preprocess_multimodal.DEFAULT_VOCAB,
                        help="SentencePiece model: a path, a gs:// or s3:// URI, or package:<pkg>/<file>")
    preprocess_multimodal.add_media_flags(parser)
    parser.add_argument("--curate", default="", metavar="SPLITS",
                        help="comma-separated splits whose text is curated before tokenizing (e.g. train; "
                             "decontaminated against the other splits' text too): pipelines/curation")
    curation_transforms.add_flags(parser)
    args, options = beam_options.parse(parser, argv)
    splits = [s for s in args.splits.split(",") if s]
    infos = [FileSystems.join(args.corpus_dir, s, "corpus_info.json") for s in splits]
    missing = [info for info in infos if not FileSystems.exists(info)]
    if missing:
        parser.error(f"no complete corpus split at {missing}; run `python -m pipelines.generate_corpus "
                     f"--output_dir={args.corpus_dir} --split={args.splits}` first")
    try:
        cfg = preprocess_multimodal.media_config_from_args(args)
    except ValueError as e:
        parser.error(str(e))

    start = time.time()
    text_inputs = {split: FileSystems.join(args.corpus_dir, split, TEXT_SOURCE) for split in splits}
    curate_splits = [x for x in args.curate.split(",") if x]
    if set(curate_splits) - set(splits):
        parser.error(f"--curate={args.curate}: {sorted(set(curate_splits) - set(splits))} not in --splits={args.splits}")
    if curate_splits:  # one curation pipeline for those splits first; their kept shards replace the text source
        held_out = tuple(f"heldout_{x}=text:{path}" for x, path in text_inputs.items() if x not in curate_splits)
        try:
            curation_cfg = dataclasses.replace(curation_transforms.config_from_flags(args),
                                               eval_sets=tuple(args.eval_set or ()) + held_out)
        except ValueError as e:
            parser.error(str(e))
        outs = {x: FileSystems.join(args.cache_dir, TEXT_TASK, f"curated.{x}") for x in curate_splits}
        summaries = curate.run_many([([text_inputs[x]], outs[x]) for x in curate_splits], curation_cfg,
                                   options)
        for x, out in outs.items():
            print(f"[curate] {x}: {curate.describe(summaries[out])} -> {out}")
            text_inputs[x] = curate.kept_pattern(out)
    jobs = []
    with beam.Pipeline(options=options) as p:
        for split in splits:
            root = FileSystems.join(args.corpus_dir, split)
            for kind, manifest in CORPUS_SOURCES:
                task = f"tapestry_mm_{kind}"
                path = FileSystems.join(root, manifest.format(split=split))
                _ = p | f"{task}_{split}" >> preprocess_multimodal.PreprocessMultimodal(
                    kind, [path], args.cache_dir, task, cfg, vocab=args.vocab, split=split,
                    reader_options=mm_readers.ReaderOptions())
                jobs.append((task, split))
            _ = p | f"{TEXT_TASK}_{split}" >> preprocess_text.PreprocessText(
                [text_inputs[split]], args.cache_dir, TEXT_TASK, args.vocab, split=split)
            jobs.append((TEXT_TASK, split))

    summaries = {}
    for task, split in jobs:
        s = job_summary.read_summary(args.cache_dir, task, split)
        summaries[f"{task}/{split}"] = s
        print(f"  {task:32s} {split:10s} {s['documents_in']:6d} in {s['examples_out']:6d} out "
              f"{s['dead_lettered']:4d} dead-lettered {s['dead_letter_reasons'] or ''}")
    print(f"[preprocess_corpus] {len(jobs)} caches ({','.join(splits)}) in {time.time() - start:.1f}s -> "
          f"{args.cache_dir}")
    job_summary.exit_if_unbalanced(summaries)
    return summaries


if __name__ == "__main__":
    main(sys.argv[1:])

"""The corpus Beam job: CLI, manifests in the real-data formats, determinism, skipping."""
import csv
import hashlib
import json
import os
import pathlib

import pytest

from pipelines import generate_corpus as gc
from pipelines.synthetic import text


def test_cli_defaults_are_the_demo_sizes_per_split():
    for split in ("train", "validation", "test"):
        (cfg,), force, beam_args = gc.parse_args(["--output_dir=/tmp/x", f"--split={split}"])
        assert dict(cfg.counts) == gc.DEMO_SIZES[split] and not force and beam_args == []
        assert cfg == gc.CorpusConfig.demo("/tmp/x", split)
    cfgs, _, _ = gc.parse_args(["--output_dir=/tmp/x", "--split=train,validation,test"])
    assert cfgs == [gc.CorpusConfig.demo("/tmp/x", s) for s in ("train", "validation", "test")]
    (cfg,), _, beam_args = gc.parse_args(["--output_dir=/tmp/x", "--num_examples=7", "--num_video=3",
                                          "--direct_num_workers=1"])
    assert dict(cfg.counts) == {"image": 7, "speech": 7, "video": 3, "interleaved": 7, "text": 7}
    assert beam_args == ["--direct_num_workers=1"]  # left for Beam's PipelineOptions


def test_config_validates_and_says_how_to_fix():
    with pytest.raises(ValueError, match="--split must be one of"):
        gc.CorpusConfig(output_dir="/tmp/x", split="val")
    with pytest.raises(ValueError, match="--num_video must be >= 0"):
        gc.CorpusConfig(output_dir="/tmp/x", split="train", counts=(("video", -1),))
    with pytest.raises(ValueError, match="frame_size must be even"):
        gc.CorpusConfig(output_dir="/tmp/x", split="train", frame_size=31)
    for bad in (["--books", "/nonexistent/book.txt"], ["--split=train,val"], ["--split=test,test"],
                ["--num_image=-2"]):
        with pytest.raises(SystemExit):
            gc.parse_args(["--output_dir=/tmp/x", *bad])


def test_held_out_splits_are_different_examples():
    for kind in ("image", "speech", "video", "interleaved", "text"):
        made = {split: gc.make_examples(gc.CorpusConfig("/x", split, counts=((kind, 4),)), kind, 0)
                for split in ("train", "validation", "test")}
        fingerprints = {split: [json.dumps(r, sort_keys=True) + "".join(hashlib.sha1(d).hexdigest() for _, d in f)
                                for _, r, f in ex] for split, ex in made.items()}
        assert not set(fingerprints["train"]) & set(fingerprints["test"]), kind
        assert not set(fingerprints["train"]) & set(fingerprints["validation"]), kind
        assert not set(fingerprints["validation"]) & set(fingerprints["test"]), kind


def test_examples_do_not_depend_on_what_the_process_did_before():
    """Chunks come out the same fresh or after other chunks (speech sessions, video encodes)."""
    cfg = gc.CorpusConfig("/x", "train", counts=(("interleaved", 100), ("speech", 50), ("video", 50)))
    digest = lambda ex: [hashlib.sha1(d).hexdigest() for _, _, files in ex for _, d in files]
    first = [digest(gc.make_examples(cfg, "interleaved", c)) for c in (0, 1)]
    gc.make_examples(cfg, "speech", 0)
    gc.make_examples(cfg, "video", 0)
    assert [digest(gc.make_examples(cfg, "interleaved", c)) for c in (1, 0)] == first[::-1]


def _tree(root: pathlib.Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != gc.INFO_FILE}


@pytest.mark.slow
def test_job_writes_every_manifest_deterministically(tmp_path, capsys):
    book = tmp_path / "book.txt"
    book.write_text("\n\n".join(f"Paragraph {i}. " + "Some words here. " * 30 for i in range(200)))
    counts = (("image", 5), ("speech", 4), ("video", 6), ("interleaved", 3), ("text", 0))
    cfg = gc.CorpusConfig(output_dir=str(tmp_path / "a"), split="validation", seed=3, counts=counts,
                          books=(str(book),))
    info = gc.run(cfg, ["--direct_num_workers=2"])
    root = tmp_path / "a" / "validation"
    n_book_docs = len(text.book_documents(book.read_text(), "validation"))
    assert n_book_docs >= 2
    assert info["written"] == {"image": 5, "speech": 4, "video": 6, "interleaved": 3, "text": n_book_docs}

    images = [json.loads(l) for l in (root / "images/captions.jsonl").read_text().splitlines()]
    assert [r["image"] for r in images] == [f"img/{i:06d}.png" for i in range(5)]
    assert all(r["caption"] == f"a {r['colour']} {r['shape']} " + {"left": "on the left", "middle": "in the middle",
               "right": "on the right"}[r["position"]] for r in images)
    speech = [json.loads(l) for l in (root / "speech/manifest.jsonl").read_text().splitlines()]
    assert [r["audio"] for r in speech] == [f"audio/{i:06d}.wav" for i in range(4)]
    assert all(r["sample_rate"] == 22050 and 0.3 < r["duration_s"] < 2.5 for r in speech)

    rows = list(csv.DictReader((root / "video_qa/validation.csv").open()))
    assert [r["video"] for r in rows] == [f"v_motion{i:06d}" for i in range(6)]
    questions = json.loads((root / "video_qa/validation_q.json").read_text())
    answers = json.loads((root / "video_qa/validation_a.json").read_text())
    for row, q, a in zip(rows, questions, answers):
        assert q["question_id"] == a["question_id"] and a["type"] == 0
        assert row["question"] == q["question"] and row[f"a{row['answer']}"] == a["answer"]
        assert (root / "video_qa" / f"v_{q['video_name']}.mp4").is_file()       # ActivityNet naming
        assert (root / "video_qa" / f"{row['video']}.mp4").is_file()            # NExT-QA naming

    docs = [json.loads(l) for l in (root / "interleaved/documents.jsonl").read_text().splitlines()]
    assert [d["id"] for d in docs] == [f"interleaved-{i:06d}" for i in range(3)]
    for d in docs:
        for part in d["parts"]:
            for key in ("image", "audio", "video"):
                if key in part:
                    assert (root / "interleaved" / part[key]).is_file()
    texts = [json.loads(l)["text"] for l in (root / "text/documents.jsonl").read_text().splitlines()]
    assert texts and all(t.startswith("Paragraph ") for t in texts)

    # Same flags, another worker count, sharing a pipeline with another split -> byte-identical corpus.
    cfg_b = gc.CorpusConfig(**{**cfg.__dict__, "output_dir": str(tmp_path / "b")})
    cfg_b_test = gc.CorpusConfig(str(tmp_path / "b"), "test", counts=(("image", 2), ("video", 1)))
    infos = gc.run_splits([cfg_b, cfg_b_test], ["--direct_num_workers=1"])
    assert infos["test"]["written"] == {"image": 2, "speech": 0, "video": 1, "interleaved": 0, "text": 0}
    assert _tree(root) == _tree(tmp_path / "b" / "validation")
    # ... and the plain loop writes the very same files.
    gc.generate_in_process(gc.CorpusConfig(**{**cfg.__dict__, "output_dir": str(tmp_path / "c")}))
    assert _tree(root) == _tree(tmp_path / "c" / "validation")

    # Complete -> skipped; other settings -> regenerated.
    before = os.stat(root / gc.INFO_FILE).st_mtime_ns
    capsys.readouterr()
    gc.run(cfg)
    assert "skipping" in capsys.readouterr().out
    assert os.stat(root / gc.INFO_FILE).st_mtime_ns == before
    assert not gc.is_complete(gc.CorpusConfig(**{**cfg.__dict__, "seed": 4}))


@pytest.mark.real_data
def test_formats_match_the_real_manifests(data_dir, tmp_path):
    """Our video-QA files have the real files' columns/keys; our manifests the real fields."""
    cfg = gc.CorpusConfig(output_dir=str(tmp_path), split="test", counts=(("video", 2), ("image", 1), ("speech", 1)))
    records = [gc.make_example(cfg, "video", i)[0] for i in range(2)]
    files = dict(gc.manifest_files(cfg, "video", records))
    real_header = (data_dir / "video_qa/nextqa/val.csv").read_text().splitlines()[0]
    assert files["video_qa/test.csv"].decode().splitlines()[0] == real_header
    for suffix in ("q", "a"):
        real = json.loads((data_dir / f"video_qa/activitynet_qa/test_{suffix}.json").read_text())[0]
        ours = json.loads(files[f"video_qa/test_{suffix}.json"])[0]
        assert set(ours) == set(real) and all(type(ours[k]) is type(real[k]) for k in real)
    real_caption = json.loads((data_dir / "images/captions.jsonl").read_text().splitlines()[0])
    real_speech = json.loads((data_dir / "speech/manifest.jsonl").read_text().splitlines()[0])
    image, _ = gc.make_example(cfg, "image", 0)
    audio, _ = gc.make_example(cfg, "speech", 0)
    assert {"image", "caption"} <= set(image) and {"image", "caption"} <= set(real_caption)
    assert {"audio", "text", "sample_rate", "duration_s"} <= set(audio) & set(real_speech)

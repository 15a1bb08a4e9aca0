"""The multimodal Beam job end to end: broken inputs of every kind, and all the real data.

Runs on the local default (FnApiRunner, multi_processing, 2 workers: offline).
"""
import csv
import json
import os
import shutil

import numpy as np
import pytest
import sentencepiece as spm
from PIL import Image

import apache_beam as beam
from pipelines import beam_options, interleave, job_summary, preprocess_multimodal as job
from pipelines.media_config import REASONS, MediaConfig
from tasks import multimodal
from tests.test_pipelines_interleave import VOCAB
from tests.test_pipelines_media import _png, _wav, make_video

SMALL = MediaConfig(image_size=32, image_patch_size=8, video_frame_size=16, video_patch_size=8,
                    max_video_frames=4, max_audio_seconds=5.0)


def run(jobs: list[tuple[str, list[str], str, MediaConfig, dict]], cache_dir: str) -> dict[str, dict]:
    """Runs several (kind, inputs, task, cfg, extra) jobs in one pipeline; returns summaries by task."""
    with beam.Pipeline(options=beam_options.pipeline_options([], num_workers=2)) as p:
        for kind, inputs, task, cfg, extra in jobs:
            _ = p | f"Job_{task}" >> job.PreprocessMultimodal(kind, inputs, cache_dir, task, cfg, vocab=VOCAB, **extra)
    return {task: job.read_summary(cache_dir, task, "train") for _, _, task, _, _ in jobs}


def read_back(cache_dir: str, task: str) -> list[dict]:
    multimodal.use_cache_dirs([cache_dir])
    return list(multimodal.examples(task, "train"))


def dead_letters(cache_dir: str, task: str) -> list[dict]:
    return job_summary.read_dead_letters(cache_dir, task, "train")


def _broken_corpus(d) -> dict:
    """Good and broken files of every kind; returns the interleaved manifest path and friends."""
    rng = np.random.default_rng(0)
    good_img = _png(Image.fromarray(rng.integers(0, 255, (40, 60, 3), np.uint8)), "JPEG")
    (d / "good.jpg").write_bytes(good_img)
    (d / "truncated.jpg").write_bytes(good_img[: len(good_img) // 2])
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 255, 200, np.uint8)))
    (d / "empty.png").write_bytes(b"")
    (d / "notes.png").write_bytes(b"just some text pretending to be an image")
    (d / "big.png").write_bytes(_png(Image.new("L", (400, 400))))
    wave = (rng.normal(size=16000) * 0.1).astype(np.float32)
    flac = _wav(wave, 16000, "FLAC")
    (d / "good.flac").write_bytes(flac)
    (d / "truncated.flac").write_bytes(flac[:60])
    (d / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(rng.integers(0, 255, 100, np.uint8)))
    (d / "empty.wav").write_bytes(_wav(np.zeros([0], np.float32), 16000))
    video = make_video(2.0)
    (d / "good.mp4").write_bytes(video)
    (d / "truncated.mp4").write_bytes(video[: len(video) // 3])
    (d / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(rng.integers(0, 255, 300, np.uint8)))
    docs = [
        ("ok-all", [{"text": "a"}, {"image": "good.jpg"}, {"audio": "good.flac"}, {"video": "good.mp4"}]),
        ("ok-text", [{"text": "only text"}]),
        ("img-truncated", [{"text": "x"}, {"image": "truncated.jpg"}]),
        ("img-corrupt", [{"image": "corrupt.png"}]),
        ("img-empty", [{"image": "empty.png"}]),
        ("img-unsupported", [{"image": "notes.png"}]),
        ("img-missing", [{"image": "nowhere.png"}]),
        ("aud-truncated", [{"audio": "truncated.flac"}]),
        ("aud-corrupt", [{"audio": "corrupt.wav"}]),
        ("aud-empty", [{"audio": "empty.wav"}]),
        ("vid-truncated", [{"video": "truncated.mp4"}]),
        ("vid-corrupt", [{"video": "corrupt.mp4"}]),
        ("part-unsupported", [{"text": "x"}, {"hologram": "h.bin"}]),
        ("text-empty", [{"text": ""}]),
        ("one-bad-part", [{"text": "x"}, {"image": "good.jpg"}, {"image": "corrupt.png"}]),
    ]
    lines = [json.dumps({"id": i, "parts": p}) for i, p in docs] + ["{not json", json.dumps({"id": "no-parts"})]
    (d / "docs.jsonl").write_bytes(("\n".join(lines) + "\n").encode() + b'{"id": "latin-1", "parts": [{"text": "caf\xe9"}]}\n')
    (d / "captions.jsonl").write_text(
        json.dumps({"image": "good.jpg", "caption": "fine"}) + "\n" + json.dumps({"image": "big.png", "caption": "bomb"})
        + "\n" + json.dumps({"caption": "no image"}) + "\n")
    libri = d / "libri" / "test-clean" / "19" / "198"
    libri.mkdir(parents=True)
    (libri / "19-198-0000.flac").write_bytes(flac)
    (libri / "19-198-0001.flac").write_bytes(flac[:60])
    (libri / "19-198.trans.txt").write_text("19-198-0000 HELLO\n19-198-0001 TRUNCATED ONE\n19-198-0002 NO FILE\n")
    with open(d / "nextqa.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "frame_count", "width", "height", "question", "answer", "qid", "type",
                    "a0", "a1", "a2", "a3", "a4"])
        w.writerow(["good", 1, 1, 1, "what", 1, 0, "CW", "a", "b", "c", "d", "e"])
        w.writerow(["truncated", 1, 1, 1, "what", 1, 1, "CW", "a", "b", "c", "d", "e"])
        w.writerow(["good", 1, 1, 1, "what", "seven", 2, "CW", "a", "b", "c", "d", "e"])
    (d / "notes.jsonl").write_text('{"id": "n1", "text": "hello"}\n{"text": "world"}\nnot json\n')
    (d / "book.txt").write_text("A whole file is one document.\n")
    return {"docs": [
        ("text", [str(d / "notes.jsonl"), str(d / "book.txt")], "tapestry_mm_text", SMALL, {}),
        ("interleaved", [str(d / "docs.jsonl")], "tapestry_mm_interleaved", SMALL, {}),
        ("captions", [str(d / "captions.jsonl")], "tapestry_mm_captions",
         MediaConfig(image_size=32, image_patch_size=8, max_image_pixels=100_000), {}),
        ("librispeech", [str(d / "libri")], "tapestry_mm_librispeech", SMALL, {}),
        ("nextqa", [str(d / "nextqa.csv")], "tapestry_mm_nextqa", SMALL,
         {"reader_options": job.mm_readers.ReaderOptions(video_dir=str(d))}),
        ("interleaved", [str(d / "docs.jsonl")], "drop_parts",
         MediaConfig(image_size=32, image_patch_size=8, video_frame_size=16, video_patch_size=8, drop_bad_parts=True), {}),
    ]}


@pytest.mark.slow
def test_broken_inputs_of_every_kind(tmp_path):
    corpus = _broken_corpus(tmp_path)
    cache = str(tmp_path / "cache")
    summaries = run(corpus["docs"], cache)
    for task, s in summaries.items():
        assert s["balanced"] and s["documents_in"] == s["examples_out"] + s["dead_lettered"], (task, s)
        letters = dead_letters(cache, task)
        assert all(l["reason"] in REASONS and l["id"] and l["detail"] for l in letters)
    text = summaries["tapestry_mm_text"]
    assert (text["documents_in"], text["examples_out"], text["dead_letter_reasons"]) == (4, 3, {"bad_record": 1})
    mm = summaries["tapestry_mm_interleaved"]
    assert (mm["documents_in"], mm["examples_out"]) == (18, 2)
    by_id = {l["id"]: l["reason"] for l in dead_letters(cache, "tapestry_mm_interleaved")}
    assert {k: by_id[k] for k in ("img-truncated", "img-corrupt", "img-empty", "img-unsupported", "img-missing",
                                  "aud-corrupt", "aud-empty", "part-unsupported", "text-empty", "one-bad-part")} == {
        "img-truncated": "truncated", "img-corrupt": "corrupt", "img-empty": "empty",
        "img-unsupported": "unsupported", "img-missing": "missing_file", "aud-corrupt": "corrupt",
        "aud-empty": "empty", "part-unsupported": "unsupported", "text-empty": "empty", "one-bad-part": "corrupt"}
    assert by_id["aud-truncated"] in ("truncated", "corrupt") and by_id["vid-truncated"] in ("truncated", "corrupt")
    assert by_id["vid-corrupt"] in ("corrupt", "unsupported")
    # Broken records are dead-lettered under their own id when they carry one (even when not UTF-8), else file:line.
    assert {k: by_id[k] for k in ("no-parts", "latin-1", "docs.jsonl:16")} == {
        "no-parts": "bad_record", "latin-1": "bad_record", "docs.jsonl:16": "bad_record"}
    assert summaries["tapestry_mm_captions"]["dead_letter_reasons"] == {"bad_record": 1, "oversize": 1}
    assert summaries["tapestry_mm_librispeech"]["examples_out"] == 1
    assert summaries["tapestry_mm_librispeech"]["dead_letter_reasons"].get("missing_file") == 1
    assert summaries["tapestry_mm_nextqa"]["dead_letter_reasons"] == {"bad_record": 1, "truncated": 1} or \
        summaries["tapestry_mm_nextqa"]["dead_letter_reasons"] == {"bad_record": 1, "corrupt": 1}
    # With --drop_bad_parts documents keep their good parts; each dropped part is dead-lettered and counted.
    drop = summaries["drop_parts"]
    assert drop["examples_out"] == 5 and drop["dropped_parts_in_kept_documents"] == 3  # x+bad, x+hologram, x+good+bad
    # SeqIO reads back exactly what the summary says came out.
    examples = read_back(cache, "tapestry_mm_interleaved")
    assert sorted(e["source_id"].decode() for e in examples) == ["ok-all", "ok-text"]


@pytest.mark.slow
@pytest.mark.real_data
def test_all_real_data(tmp_path, data_dir):
    d = str(data_dir)
    media = sorted(p for p in data_dir.rglob("*")
                   if p.suffix in (".png", ".jpg", ".flac", ".ogg", ".mp3", ".mp4", ".webm"))
    kind_of = {".png": "image", ".jpg": "image", ".mp4": "video", ".webm": "video"}
    manifest = tmp_path / "all_media.jsonl"
    manifest.write_text("".join(json.dumps({"id": str(p.relative_to(data_dir)), "parts": [
        {"text": p.name}, {kind_of.get(p.suffix, "audio"): str(p)}]}) + "\n" for p in media))
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(data_dir / "video" / "big_buck_bunny_small.mp4", videos / "4010069381.mp4")
    shutil.copy(data_dir / "video" / "big_buck_bunny_432_433.webm", videos / "v_1QIUV7WYKXg.mp4")
    cfg = MediaConfig(image_size=64, image_patch_size=16, video_frame_size=32, video_patch_size=16,
                      max_video_frames=4, keep_video_audio=True)
    jobs = [("interleaved", [str(manifest)], "tapestry_mm_interleaved", cfg, {}),
            ("captions", [f"{d}/images/captions.jsonl"], "tapestry_mm_captions", cfg, {}),
            ("coco", [f"{d}/images/captions_coco_format.json"], "tapestry_mm_coco", cfg, {}),
            ("librispeech", [f"{d}/speech/librispeech"], "tapestry_mm_librispeech", cfg, {}),
            ("speech_manifest", [f"{d}/speech/manifest.jsonl"], "tapestry_mm_speech_manifest", cfg, {}),
            ("nextqa", [f"{d}/video_qa/nextqa/val.csv"], "tapestry_mm_nextqa", cfg,
             {"reader_options": job.mm_readers.ReaderOptions(video_dir=str(videos))}),
            ("activitynet_qa", [f"{d}/video_qa/activitynet_qa/test_q.json"], "tapestry_mm_activitynet_qa", cfg,
             {"reader_options": job.mm_readers.ReaderOptions(video_dir=str(videos))})]
    cache = str(tmp_path / "cache")
    summaries = run(jobs, cache)
    for task, s in summaries.items():
        assert s["balanced"], (task, s)
    # Every readable media file comes out as an example; the one missing caption image is dead-lettered.
    assert summaries["tapestry_mm_interleaved"]["examples_out"] == len(media) >= 82
    assert summaries["tapestry_mm_captions"] ["dead_letter_reasons"] == {"missing_file": 1}
    assert summaries["tapestry_mm_coco"]["examples_out"] == 5
    assert summaries["tapestry_mm_librispeech"]["examples_out"] == 6
    assert summaries["tapestry_mm_speech_manifest"]["dead_lettered"] == 0
    nextqa = summaries["tapestry_mm_nextqa"]
    with open(f"{d}/video_qa/nextqa/val.csv") as f:
        expected = sum(r["video"] == "4010069381" for r in csv.DictReader(f))
    assert nextqa["examples_out"] == expected and nextqa["dead_letter_reasons"] == {"missing_file": 4996 - expected}
    assert summaries["tapestry_mm_activitynet_qa"]["examples_out"] >= 1
    stats = summaries["tapestry_mm_interleaved"]["cache_stats"]
    assert stats["video_items"] == 3 and stats["image_items"] == 13 and stats["audio_items"] >= 66
    # SeqIO reads every cache back; every media run has exactly K placeholders, in order.
    sp = spm.SentencePieceProcessor(model_file=VOCAB)
    for task in ("tapestry_mm_interleaved", "tapestry_mm_librispeech", "tapestry_mm_nextqa"):
        examples = read_back(cache, task)
        assert len(examples) == summaries[task]["examples_out"]
        for ex in examples[:40]:
            parts = interleave.decode_example(ex, sp, cfg)
            assert any(k != "text" for k, _ in parts)
            if task == "tapestry_mm_interleaved":
                assert parts[0] == ("text", os.path.basename(ex["source_id"].decode()))
    libri = {e["source_id"].decode(): e for e in read_back(cache, "tapestry_mm_librispeech")}
    parts = interleave.decode_example(libri["1089-134686-0001"], sp, cfg)
    assert parts[0][0] == "audio" and parts[1] == ("text", "STUFF IT INTO YOU HIS BELLY COUNSELLED HIM")

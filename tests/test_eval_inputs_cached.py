"""Eval inputs read from caches written by the real Beam jobs (speech, video QA, text)."""
import csv
import json

import apache_beam as beam
import numpy as np
import pytest

from pipelines import preprocess_multimodal as job, preprocess_text, special_tokens as st
from pipelines.media_config import MediaConfig
from tasks import eval_inputs, multimodal
from tests.test_pipelines_interleave import VOCAB
from tests.test_pipelines_media import _wav, make_video

pytestmark = pytest.mark.slow  # builds caches with the real Beam jobs

CFG = MediaConfig(image_size=32, image_patch_size=16, max_audio_seconds=2.0)
VIDEO_CFG = MediaConfig(video_frame_size=16, video_patch_size=8, max_video_frames=2)
NEXTQA_TYPES = ("CW", "TN", "CW", "DC")
BOOK = "It was the best of times, it was the worst of times.\n" * 30


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("evalcorpus")
    rng = np.random.default_rng(0)
    for i in range(3):
        (d / f"s{i}.wav").write_bytes(
            _wav((rng.normal(size=4000 * (i + 1)) * 0.1).astype(np.float32), 16000))
    (d / "speech.jsonl").write_text("".join(
        json.dumps({"audio": f"s{i}.wav", "text": f"seven {i} nine"}) + "\n" for i in range(3)))
    (d / "book.txt").write_text(BOOK)
    (d / "v.mp4").write_bytes(make_video(1.0))
    with open(d / "nextqa.csv", "w", newline="") as f:  # NExT-QA's columns
        w = csv.writer(f)
        w.writerow(["video", "frame_count", "width", "height", "question", "answer", "qid",
                    "type", "a0", "a1", "a2", "a3", "a4"])
        for i, qtype in enumerate(NEXTQA_TYPES):
            w.writerow(["v", 10, 48, 32, f"why {i}", i % 5, i, qtype, "a", "b", "c", "d", "e"])
    cache = str(d / "cache")
    options = beam.options.pipeline_options.PipelineOptions(
        ["--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner"])
    with beam.Pipeline(options=options) as p:
        _ = p | job.PreprocessMultimodal("speech_manifest", [str(d / "speech.jsonl")], cache,
                                         multimodal.task_name("speech_manifest"), CFG, vocab=VOCAB)
        _ = p | "nextqa" >> job.PreprocessMultimodal(
            "nextqa", [str(d / "nextqa.csv")], cache, multimodal.task_name("nextqa"), VIDEO_CFG,
            vocab=VOCAB, reader_options=job.mm_readers.ReaderOptions(video_dir=str(d)))
        preprocess_text.build(p, [str(d / "book.txt")], cache, "tapestry_text", VOCAB,
                              max_chars=400, validation_fraction=0.5)
    return cache


def test_speech_prompts_carry_audio_rows_and_transcripts(cache_dir):
    recs = eval_inputs.multimodal_prompts(
        "tapestry_mm_speech_manifest", split="train", cache_dirs=[cache_dir], max_audio=1,
        audio_frames=201, n_mels=CFG.n_mels)
    assert sorted(r["answer"] for r in recs) == ["seven 0 nine", "seven 1 nine", "seven 2 nine"]
    for r in recs:
        p = r["prompt_ids"]
        assert p.count(st.BEGIN_AUDIO_ID) == 1 and p.count(st.END_AUDIO_ID) == 1
        k = p.count(st.AUDIO_ID)
        frames = int(r["features"]["audio_lengths"][0])
        assert k == -(-frames // 4)  # ceil(frames / 4): the contract's audio slots
        assert r["features"]["audio"].shape == (1, 201, CFG.n_mels)
        assert "seven" not in r["prompt_text"]  # the transcript is the answer, not the prompt
        assert r["prompt_text"].startswith(f"<audio x{k}>")


def test_text_documents_are_the_cached_held_out_text(cache_dir):
    docs = eval_inputs.text_documents("tapestry_text", "validation", cache_dirs=[cache_dir])
    assert docs
    encode = eval_inputs.tokenizer()
    for d in docs:
        assert d["text"] and d["text"] in BOOK
        assert d["token_ids"] == encode(d["text"])


def test_speech_prompts_decode_through_the_model_into_a_wer_report(cache_dir, tmp_path):
    pytest.importorskip("model.decoding")
    from model import eval as eval_lib
    from model.config import model_config
    from model.evaluation import generation
    from model.models import DecoderOnlyModel

    recs = eval_inputs.multimodal_prompts(
        "tapestry_mm_speech_manifest", split="train", cache_dirs=[cache_dir], max_audio=1,
        audio_frames=201, n_mels=CFG.n_mels)
    model = DecoderOnlyModel(model_config("tiny", {"audio.max_frames": 201}))
    suite = generation.GenerationSuite(inputs_fn=lambda: recs, name="asr", metric="wer",
                                       max_new_tokens=4, batch_size=2)
    results = eval_lib.evaluate(model=model, checkpoint_path=None, suites=[suite],
                                output_dir=str(tmp_path), progress=False,
                                detokenizer=eval_inputs.detokenizer())
    m = results["tasks"]["asr"]["metrics"]
    from model.evaluation import asr
    norm = asr.normalizer("en")  # Whisper's: "seven 1 nine" -> "7 1 9", "seven 0 nine" -> "7 9"
    assert m["n"] == 3
    assert m["reference_units"] == sum(len(norm(r["answer"]).split()) for r in recs)
    assert m["wer"] >= 0 and len(m["per_utterance_wer"]) == 3
    lines = (tmp_path / "samples_asr.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all("output" in json.loads(l) for l in lines)


def test_nextqa_question_types_reach_per_type_accuracy(cache_dir):
    """The question type is kept through the cache: the prompts carry it, and the
    multiple-choice score is reported per type and per type group."""
    from model.evaluation import generation
    recs = eval_inputs.multimodal_prompts(
        "tapestry_mm_nextqa", split="train", cache_dirs=[cache_dir], max_videos=1,
        video_frames=2, video_frame_size=16)
    assert sorted(r["meta"]["type"] for r in recs) == sorted(NEXTQA_TYPES)
    # Right answers to the causal (C*) questions, none to the others.
    samples = [{"sample_id": r["sample_id"], "target": r["answer"], "meta": r["meta"],
                "output": r["answer"] if r["meta"]["type"].startswith("C") else "no idea"}
               for r in recs]
    suite = generation.GenerationSuite(inputs_fn=list, name="mc", metric="multiple_choice")
    m = suite._score(samples)
    assert {t: (v["acc"], v["n"]) for t, v in m["per_type"].items()} == \
        {"CW": (1.0, 2), "TN": (0.0, 1), "DC": (0.0, 1)}
    assert m["per_type_group"]["causal"]["acc"] == 1.0
    assert m["per_type_group"]["temporal"]["n"] == m["per_type_group"]["descriptive"]["n"] == 1

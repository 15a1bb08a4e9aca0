"""Readers and the interleaver, without Beam: documents -> examples -> back to (text, media)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from pipelines import interleave, media_io, mm_readers, special_tokens
from pipelines.media_config import BadInput, MediaConfig
from tests.test_pipelines_media import _wav, make_video

VOCAB = os.path.join(os.path.dirname(os.path.dirname(__file__)), "tasks", "vocab", "tapestry_8k.model")
CFG = MediaConfig(image_size=32, image_patch_size=8, video_frame_size=16, video_patch_size=8, max_audio_seconds=1.0)


@pytest.fixture(scope="module")
def encoder():
    return interleave.DocumentEncoder(CFG, VOCAB)


@pytest.fixture()
def media(tmp_path):
    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "a.png")
    (tmp_path / "b.wav").write_bytes(_wav(np.zeros(int(1.5 * 16000), np.float32) + 0.01, 16000))
    (tmp_path / "c.mp4").write_bytes(make_video(2.0))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (tmp_path / "empty.png").write_bytes(b"")
    return tmp_path


def test_read_bytes_reasons(tmp_path):
    with pytest.raises(BadInput, match="missing_file"):
        media_io.read_bytes(str(tmp_path / "nope.png"), 10)
    (tmp_path / "e").write_bytes(b"")
    with pytest.raises(BadInput, match="empty"):
        media_io.read_bytes(str(tmp_path / "e"), 10)
    (tmp_path / "big").write_bytes(b"x" * 11)
    with pytest.raises(BadInput, match="oversize"):
        media_io.read_bytes(str(tmp_path / "big"), 10)


def test_roundtrip_in_document_order(encoder, media):
    doc = {"id": "d1", "source": "interleaved", "parts": [
        {"text": "Look at"}, {"image": str(media / "a.png")}, {"text": "then hear"},
        {"audio": str(media / "b.wav")}, {"video": str(media / "c.mp4")}, {"text": "the end", "answer": True}]}
    result = encoder.encode(doc)
    assert result.dead_letter is None
    ex = result.example
    parts = interleave.decode_example(ex, encoder.sp, CFG)
    kinds = [k for k, _ in parts]
    # 1.5 s of audio with 1 s segments -> two consecutive audio items.
    assert kinds == ["text", "image", "text", "audio", "audio", "video", "text"]
    assert parts[0][1] == "Look at" and parts[2][1] == "then hear" and parts[-1][1] == "the end"
    assert parts[1][1].shape == (32, 32, 3) and (parts[1][1][16, 16] == [10, 200, 30]).all()
    assert [p[1].shape[0] for p in parts[3:5]] == [101, 51]
    assert parts[5][1].shape == (2, 16, 16, 3)
    # K placeholders per item, exactly.
    targets = ex["targets"].tolist()
    assert targets.count(special_tokens.IMAGE_ID) == CFG.image_slots() == 16
    assert targets.count(special_tokens.AUDIO_ID) == CFG.audio_slots(101) + CFG.audio_slots(51) == 26 + 13
    assert targets.count(special_tokens.VIDEO_ID) == CFG.video_slots(2) == 8
    assert ex["answer"] == "the end"
    assert encoder.sp.decode(targets[ex["prompt_length"]:]) == "the end"
    assert ex["_stats"]["audio_items"] == 2 and ex["_stats"]["video_seconds"] == 2.0


def test_literal_placeholder_text_is_escaped(encoder):
    ex = encoder.encode({"id": "t", "parts": [{"text": "a <image> and <begin_audio> tag"}]}).example
    assert not set(ex["targets"].tolist()) & set(special_tokens.SYMBOL_IDS.values())
    assert interleave.decode_example(ex, encoder.sp, CFG) == [("text", "a <image> and <begin_audio> tag")]


def test_bad_part_dead_letters_whole_document(encoder, media):
    doc = {"id": "d2", "source": "interleaved", "parts": [
        {"text": "x"}, {"image": str(media / "a.png")}, {"image": str(media / "bad.jpg")}]}
    result = encoder.encode(doc)
    assert result.example is None
    assert result.dead_letter["id"] == "d2" and result.dead_letter["reason"] == "corrupt"
    assert "part 2" in result.dead_letter["detail"]


def test_drop_bad_parts_option(media):
    enc = interleave.DocumentEncoder(MediaConfig(image_size=32, image_patch_size=8, drop_bad_parts=True), VOCAB)
    doc = {"id": "d3", "parts": [{"text": "x"}, {"image": str(media / "empty.png")}, {"image": str(media / "a.png")}]}
    result = enc.encode(doc)
    assert result.example is not None and len(result.example["image_bytes"]) == 1
    assert result.dropped_parts == [{"part": 1, "reason": "empty", "detail": result.dropped_parts[0]["detail"]}]
    only_bad = enc.encode({"id": "d4", "parts": [{"image": str(media / "bad.jpg")}]})
    assert only_bad.example is None and only_bad.dead_letter["reason"] == "corrupt"


def test_unknown_part_kind_unsupported(encoder, tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "u", "parts": [{"text": "hi"}, {"pointcloud": "x.ply"}]}) + "\n")
    (doc,) = mm_readers.read_documents("interleaved", str(manifest))
    assert encoder.encode(doc).dead_letter["reason"] == "unsupported"


def test_bad_records_become_error_documents(tmp_path, encoder):
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b'{"id": "ok", "parts": [{"text": "fine"}]}\nnot json\n\n{"parts": []}\n[1, 2]\n'
                         b'{"id": "latin1", "parts": [{"text": "caf\xe9"}]}\n')
    docs = list(mm_readers.read_documents("interleaved", str(manifest)))
    assert [d.get("error") for d in docs] == [None] + ["bad_record"] * 4
    letters = [encoder.encode(d).dead_letter for d in docs[1:]]
    assert all(l["reason"] == "bad_record" for l in letters)  # own id when the line has one, else file:line
    assert [l["id"] for l in letters] == ["m.jsonl:2", "m.jsonl:4", "m.jsonl:5", "latin1"]
    captions = tmp_path / "c.jsonl"
    captions.write_text('{"image": "a.png"}\n')
    assert next(mm_readers.read_documents("captions", str(captions)))["error"] == "bad_record"


def test_paths_resolve_relative_to_manifest(tmp_path):
    (tmp_path / "sub").mkdir()
    manifest = tmp_path / "sub" / "m.jsonl"
    manifest.write_text(json.dumps({"image": "../a.png", "caption": "c"}) + "\n"
                        + json.dumps({"image": "gs://bucket/x.png", "caption": "c"}) + "\n")
    docs = list(mm_readers.read_documents("captions", str(manifest)))
    assert docs[0]["parts"][0]["image"] == str(tmp_path / "a.png")
    assert docs[1]["parts"][0]["image"] == "gs://bucket/x.png"


def test_kind_and_input_validation(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'captions'"):
        mm_readers.check_kind("caption")
    with pytest.raises(FileNotFoundError, match="matches no files"):
        mm_readers.expand_input("captions", str(tmp_path / "missing.jsonl"))


@pytest.mark.real_data
def test_real_readers(data_dir):
    d = str(data_dir)
    count = lambda kind, p, **kw: list(mm_readers.read_documents(kind, f"{d}/{p}", mm_readers.ReaderOptions(**kw)))
    assert len(count("captions", "images/captions.jsonl")) == 6
    coco = count("coco", "images/captions_coco_format.json")
    assert len(coco) == 6 and coco[0]["parts"][1] == {"text": "a facial photo of a tabby cat", "answer": True}
    libri = count("librispeech", "speech/librispeech")
    assert len(libri) == 6 and all(os.path.exists(x["parts"][0]["audio"]) for x in libri)
    assert {x["id"] for x in libri} >= {"1089-134686-0000", "1272-141231-0002"}
    speech = count("speech_manifest", "speech/manifest.jsonl")
    assert len(speech) >= 60 and all(os.path.exists(x["parts"][0]["audio"]) for x in speech)
    anet = count("activitynet_qa", "video_qa/activitynet_qa", video_dir="/videos")
    assert len(anet) == 8000 and not any("error" in x for x in anet)
    assert anet[0]["parts"][0]["video"] == "/videos/v_1QIUV7WYKXg.mp4" and anet[0]["parts"][2]["text"] == "no"
    nextqa = count("nextqa", "video_qa/nextqa/val.csv", video_dir="/v", video_template="{video}.webm")
    assert len(nextqa) == 4996 and nextqa[0]["parts"][0]["video"] == "/v/4010069381.webm"
    assert nextqa[0]["parts"][2]["text"] == "(a) roll the handle"

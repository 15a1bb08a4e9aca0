"""Media decoding and normalising, without Beam: images, audio, video, slot formulas."""
import io
import json

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from pipelines import audio_decode, image_decode, media_slots, video_decode
from pipelines.media_config import BadInput, MediaConfig

CFG = MediaConfig(image_size=32, image_patch_size=8, video_frame_size=16, video_patch_size=8,
                  max_audio_seconds=1.0, max_video_frames=4)


def _png(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_slot_formulas():
    assert media_slots.image_slots(224, 16) == 196
    assert media_slots.video_slots(3, 112, 16) == 3 * 49
    assert [media_slots.audio_slots(t) for t in (0, 1, 4, 5, 3001)] == [0, 1, 1, 2, 751]
    with pytest.raises(ValueError, match="multiple of patch_size"):
        media_slots.image_slots(100, 16)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        MediaConfig(image_size=100)


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGBA", "CMYK", "I;16", "I", "F", "LA", "RGB"])
def test_every_mode_becomes_rgb(mode):
    img = Image.new("RGB", (40, 20), (200, 100, 50)).convert(mode) if mode not in ("I;16", "I", "F") else \
        Image.fromarray(np.full((20, 40), 40000 if mode != "F" else 0.5, {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
    fmt = "TIFF" if mode in ("CMYK", "I", "F", "I;16") else "PNG"
    out = image_decode.decode_image(_png(img, fmt), CFG)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_letterbox_keeps_aspect_and_pads():
    img = Image.new("RGB", (64, 32), (255, 0, 0))
    out = image_decode.decode_image(_png(img), CFG)
    assert (out[8:24] == [255, 0, 0]).all()              # 32x16 content, centred
    assert (out[:8] == 0).all() and (out[24:] == 0).all()  # pad_value rows above and below


def test_transparency_composited_on_white():
    img = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    assert (image_decode.decode_image(_png(img), CFG) == 255).all()


def test_exif_orientation_applied():
    img = Image.new("RGB", (64, 32), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: stored landscape, displayed portrait
    out = image_decode.decode_image(_png(img, "JPEG", exif=exif.tobytes()), CFG)
    # Portrait after rotation: padding left and right, content in the middle columns.
    assert out[:, :6].max() < 30 and out[16, 16, 2] > 200


def test_sixteen_bit_scaled_not_clipped():
    img = Image.fromarray(np.full((8, 8), 32768, np.uint16))
    out = image_decode.decode_image(_png(img), CFG)
    assert 120 <= out[16, 16, 0] <= 135


@pytest.mark.parametrize("data,reason", [
    (b"this is not an image at all", "unsupported"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "corrupt"),
])
def test_bad_image_reasons(data, reason):
    with pytest.raises(BadInput) as e:
        image_decode.decode_image(data, CFG)
    assert e.value.reason == reason


def test_truncated_image():
    data = _png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)), "JPEG")
    with pytest.raises(BadInput) as e:
        image_decode.decode_image(data[: len(data) // 2], CFG)
    assert e.value.reason == "truncated"


def test_decompression_bomb_refused_from_header():
    data = _png(Image.new("L", (300, 300)))
    with pytest.raises(BadInput) as e:
        image_decode.decode_image(data, MediaConfig(image_size=32, image_patch_size=8, max_image_pixels=10_000))
    assert e.value.reason == "oversize"


def _wav(samples: np.ndarray, sr: int, fmt: str = "WAV", subtype=None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


@pytest.mark.parametrize("fmt,subtype", [("WAV", None), ("FLAC", None), ("OGG", "VORBIS"), ("OGG", "OPUS"), ("MP3", None)])
def test_audio_any_format_rate_channels(fmt, subtype):
    sr = 48000 if subtype == "OPUS" else 44100
    t = np.arange(int(0.5 * sr)) / sr
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 880 * t)], axis=1).astype(np.float32) * 0.3
    wave = audio_decode.decode_waveform(_wav(stereo, sr, fmt, subtype), CFG)
    assert abs(wave.shape[0] - 8000) < 1200  # 0.5 s at 16 kHz (codec padding tolerated)
    mel = audio_decode.log_mel(wave, CFG)
    assert mel.shape == (1 + wave.shape[0] // 160, 80) and mel.dtype == np.float16
    assert np.isfinite(mel.astype(np.float32)).all()


def test_audio_from_a_container_libsndfile_refuses():
    """AAC in MP4 is not a libsndfile format: PyAV decodes it instead."""
    wave = audio_decode.decode_waveform(make_video(2.0, audio=True), CFG)
    assert abs(wave.shape[0] - 32000) < 2048 and np.abs(wave).max() > 0.1


def test_long_audio_split_into_segments():
    wave = np.random.default_rng(0).normal(size=int(2.5 * 16000)).astype(np.float32) * 0.1
    segments = audio_decode.decode_audio(_wav(wave, 16000), CFG)
    assert [s.shape[0] for s in segments] == [101, 101, 51]
    assert all(s.shape[0] <= CFG.max_audio_frames for s in segments)


def test_bad_audio_reasons():
    with pytest.raises(BadInput) as e:
        audio_decode.decode_waveform(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk", CFG)
    assert e.value.reason in ("corrupt", "truncated")
    with pytest.raises(BadInput) as e:
        audio_decode.decode_waveform(b"plain text, not audio" * 10, CFG)
    assert e.value.reason == "unsupported"
    with pytest.raises(BadInput) as e:
        audio_decode.decode_waveform(_wav(np.zeros([0], np.float32), 16000), CFG)
    assert e.value.reason == "empty"


def make_video(seconds: float, fps: int = 10, size=(48, 32), audio: bool = False) -> bytes:
    """A small H.264 mp4 whose frame i is filled with gray level 10 * (i // fps)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        if audio:
            astream = out.add_stream("aac", rate=16000)
        for i in range(int(seconds * fps)):
            arr = np.full((size[1], size[0], 3), 10 * (i // fps), np.uint8)
            for p in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)
        if audio:
            samples = (np.sin(np.arange(int(seconds * 16000)) / 5) * 0.3).astype(np.float32)[None]
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate = 16000
            for p in astream.encode(frame):
                out.mux(p)
            for p in astream.encode():
                out.mux(p)
    return buf.getvalue()


def test_video_sampled_at_fps_and_capped():
    cfg = MediaConfig(video_frame_size=16, video_patch_size=8, max_video_frames=4)
    frames, seconds = video_decode.sample_frames(make_video(3.0), cfg)
    assert frames.shape == (3, 16, 16, 3) and seconds == 3.0
    # One frame per second: gray levels 0, 10, 20 (letterbox rows are pad 0).
    assert [int(round(float(f[8, 8].mean()))) for f in frames] == pytest.approx([0, 10, 20], abs=3)
    # 6 s at most 4 frames: spread over the whole video (t = 0, 1.5, 3, 4.5 s) or its first 4 s.
    frames, seconds = video_decode.sample_frames(make_video(6.0), cfg)
    assert frames.shape[0] == 4 and seconds == pytest.approx(6.0, abs=0.2)
    assert [int(round(float(f[8, 8].mean()))) for f in frames] == pytest.approx([0, 10, 30, 40], abs=3)
    truncate = MediaConfig(video_frame_size=16, video_patch_size=8, max_video_frames=4, video_sampling="truncate")
    frames, seconds = video_decode.sample_frames(make_video(6.0), truncate)
    assert seconds == 4.0 and [int(round(float(f[8, 8].mean()))) for f in frames] == pytest.approx([0, 10, 20, 30], abs=3)


def test_video_audio_track_kept_when_asked():
    cfg = MediaConfig(video_frame_size=16, video_patch_size=8, keep_video_audio=True)
    video = video_decode.decode_video(make_video(2.0, audio=True), cfg)
    assert video.frames.shape[0] == 2 and len(video.audio) == 1 and abs(video.audio[0].shape[0] - 201) <= 2
    silent = video_decode.decode_video(make_video(2.0), cfg)
    assert silent.audio == []


def test_bad_video_reasons():
    data = make_video(3.0)
    with pytest.raises(BadInput) as e:
        video_decode.sample_frames(data, MediaConfig(video_frame_size=16, video_patch_size=8, max_media_seconds=1.0))
    assert e.value.reason == "too_long"
    with pytest.raises(BadInput) as e:
        video_decode.sample_frames(b"\x00\x00\x00\x18ftypmp42" + b"\x17" * 500, CFG)
    assert e.value.reason in ("corrupt", "truncated", "empty")
    with pytest.raises(BadInput) as e:
        video_decode.sample_frames(data[: len(data) // 3], CFG)
    assert e.value.reason in ("truncated", "corrupt", "empty")


@pytest.mark.real_data
def test_real_media_all_decode(data_dir):
    cfg = MediaConfig()
    for path in sorted((data_dir / "images").rglob("*")):
        if path.suffix in (".png", ".jpg"):
            assert image_decode.decode_image(path.read_bytes(), cfg).shape == (224, 224, 3)
    manifest = [json.loads(l) for l in (data_dir / "speech" / "manifest.jsonl").read_text().splitlines() if l.strip()]
    for rec in manifest[::8] + [{"audio": "misc_no_transcript/common_voice_en_651325.mp3", "duration_s": 2.376}]:
        mels = audio_decode.decode_audio((data_dir / "speech" / rec["audio"]).read_bytes(), cfg)
        frames = sum(m.shape[0] for m in mels)
        assert abs(frames - rec["duration_s"] * 100) <= 2 + len(mels), rec["audio"]
    for path in sorted((data_dir / "video").iterdir()):
        frames, _ = video_decode.sample_frames(path.read_bytes(), cfg)
        assert frames.shape[1:] == (112, 112, 3) and 1 <= frames.shape[0] <= 16


def test_model_mirrors_slot_formulas():
    """model/config.py computes slots itself (no pipelines import); both must agree."""
    from model import config as mc
    for size, patch in ((224, 16), (224, 32), (64, 16), (32, 8)):
        assert mc.VisionEncoderConfig(image_size=size, patch_size=patch).slots_per_item == \
            media_slots.image_slots(size, patch)
        assert mc.VisionEncoderConfig(image_size=size, patch_size=patch, num_frames=4).slots_per_item == \
            media_slots.video_slots(4, size, patch)
    audio = mc.AudioEncoderConfig()
    for n in (0, 1, 3, 4, 5, 251, 3001):
        assert audio.slots(n) == media_slots.audio_slots(n)

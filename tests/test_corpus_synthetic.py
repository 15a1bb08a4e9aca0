"""The generated corpus's pure functions: shapes, motion videos, speech, text, documents."""
import io
import re
import wave

import av
import numpy as np
import pytest
from PIL import Image

from pipelines.synthetic import interleaved, motion_video, seeding, shapes, speech, text


def rng(i: int = 0, kind: str = "image", split: str = "train", seed: int = 0) -> np.random.Generator:
    return seeding.example_rng(seed, split, kind, i)


# ------------------------------------------------------------ seeding

def test_streams_differ_by_split_kind_index_and_seed():
    base = rng(3).integers(0, 2**62, size=4)
    assert np.array_equal(base, rng(3).integers(0, 2**62, size=4))
    for other in (rng(4), rng(3, kind="video"), rng(3, split="test"), rng(3, split="validation"), rng(3, seed=1)):
        assert not np.array_equal(base, other.integers(0, 2**62, size=4))


def test_seeding_rejects_unknown_split_and_kind():
    with pytest.raises(ValueError, match="unknown split 'val'"):
        seeding.example_rng(0, "val", "image", 0)
    with pytest.raises(ValueError, match="unknown kind"):
        seeding.example_rng(0, "train", "images", 0)


# ------------------------------------------------------------ shapes

def _mask(image: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.abs(image.astype(int) - np.asarray(rgb)).max(-1) <= 1


def test_shape_image_matches_its_caption():
    for i in range(60):
        png, caption, spec = shapes.generate(rng(i), 32)
        image = np.asarray(Image.open(io.BytesIO(png)))
        assert image.shape == (32, 32, 3)
        assert caption == f"a {spec.colour} {spec.shape} {shapes.POSITIONS[spec.position][0]}"
        assert shapes.parse_caption(caption) == (spec.colour, spec.shape)
        mask = _mask(image, spec.rgb)
        ys, xs = np.nonzero(mask)
        # The shape is there, whole (not clipped by the border), in the named third.
        # Fill of the bounding box (+1: Pillow's boxes include both ends) tells the shapes apart.
        fill = mask.sum() / (spec.size + 1) ** 2
        expected_fill = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}[spec.shape]
        assert abs(fill - expected_fill) < 0.12, (i, spec.shape, fill)
        third = {"left": 0, "middle": 1, "right": 2}[spec.position]
        assert int(xs.mean() // (32 / 3)) == third, (i, spec.position, xs.mean())
        # Nominal colour is the nearest of the palette: colours stay tellable apart.
        nearest = min(shapes.COLOURS, key=lambda c: np.abs(np.subtract(shapes.COLOURS[c], spec.rgb)).sum())
        assert nearest == spec.colour


def test_shapes_cover_the_whole_world_and_are_deterministic():
    specs = [shapes.sample_shape_spec(rng(i), 32) for i in range(400)]
    assert {(s.colour, s.shape, s.position) for s in specs} == {
        (c, s, p) for c in shapes.COLOURS for s in shapes.SHAPES for p in shapes.POSITIONS}
    assert shapes.generate(rng(5), 32)[0] == shapes.generate(rng(5), 32)[0]
    with pytest.raises(ValueError, match="image_size must be >= 16"):
        shapes.sample_shape_spec(rng(0), 8)


# ------------------------------------------------------------ motion video

def _decode(mp4: bytes) -> tuple[np.ndarray, list[float]]:
    with av.open(io.BytesIO(mp4)) as container:
        frames = list(container.decode(video=0))
    return np.stack([f.to_ndarray(format="rgb24") for f in frames]), [float(f.time) for f in frames]


def test_video_shape_moves_in_the_stated_direction():
    seen = set()
    for i in range(24):
        mp4, spec = motion_video.generate(rng(i, "video"), frame_size=32, num_frames=4, fps=1)
        frames, times = _decode(mp4)
        assert frames.shape == (4, 32, 32, 3)
        assert times == [0.0, 1.0, 2.0, 3.0]  # one frame per second: 1 fps sampling keeps them all
        # Centroid of pixels far from the background, per decoded frame.
        centroids = []
        for frame in frames:
            ys, xs = np.nonzero(np.abs(frame.astype(int) - np.asarray(spec.background)).max(-1) > 60)
            centroids.append((xs.mean(), ys.mean()))
        (x0, y0), (x1, y1) = centroids[0], centroids[-1]
        dx, dy = motion_video.DIRECTIONS[spec.direction]
        moved = np.array([x1 - x0, y1 - y0])
        assert moved @ np.array([dx, dy]) > 10, (spec.direction, moved)   # ~half the side along it
        assert abs(moved @ np.array([dy, dx])) < 2, (spec.direction, moved)  # none across it
        seen.add(spec.direction)
    assert seen == set(motion_video.DIRECTIONS)


def test_video_questions_and_choices():
    mp4, spec = motion_video.generate(rng(1, "video"))
    assert motion_video.question(spec) == f"which way does the {spec.colour} {spec.shape} move"
    options, answer = motion_video.choices(rng(1, "video"), spec)
    assert len(options) == motion_video.NUM_CHOICES == 5
    assert sorted(options) == sorted([*motion_video.DIRECTIONS, motion_video.STILL_OPTION])
    assert options[answer] == spec.direction
    # The answer's slot varies (no position shortcut).
    slots = {motion_video.choices(rng(i, "video"), spec)[1] for i in range(40)}
    assert len(slots) >= 4


def test_video_bytes_are_deterministic_and_sizes_validated():
    assert motion_video.generate(rng(2, "video"))[0] == motion_video.generate(rng(2, "video"))[0]
    with pytest.raises(ValueError, match="even"):
        motion_video.sample_motion_spec(rng(0), frame_size=33)
    with pytest.raises(ValueError, match="num_frames must be >= 2"):
        motion_video.sample_motion_spec(rng(0), num_frames=1)


# ------------------------------------------------------------ speech

def test_every_voice_speaks():
    for accent in speech.ACCENTS:
        for variant in speech.VARIANTS:
            spec = speech.SpeechSpec(digits=(1, 2, 3), voice=f"{accent}+{variant}", rate=175, pitch=50)
            samples, rate = speech.speak(spec)
            assert rate == 22050
            assert 0.4 < len(samples) / rate < 2.5, (spec.voice, len(samples) / rate)
            assert np.abs(samples.astype(int)).max() > 3000, spec.voice


def test_unknown_voice_says_how_to_fix():
    with pytest.raises(ValueError, match="no voice 'xx-nowhere'.*en-us\\+m1"):
        speech.speak(speech.SpeechSpec(digits=(1,), voice="xx-nowhere", rate=175, pitch=50))


def test_speech_is_independent_of_what_was_spoken_before():
    a = speech.generate(rng(0, "speech"))[0]
    speech.generate(rng(1, "speech"))
    speech.speak(speech.SpeechSpec(digits=(9, 9, 9, 9), voice="en+f3", rate=140, pitch=70))
    assert np.array_equal(a, speech.generate(rng(0, "speech"))[0])
    # A session replays the same sequence the same way, whatever ran before it...
    with speech.session() as synth:
        first = [speech.generate(rng(i, "speech"), synth=synth)[0] for i in range(3)]
    speech.generate(rng(7, "speech"))
    with speech.session() as synth:
        again = [speech.generate(rng(i, "speech"), synth=synth)[0] for i in range(3)]
        with pytest.raises(RuntimeError, match="already open"):
            speech.speak(speech.SpeechSpec((1,), "en", 175, 50))  # no nested session
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    assert np.array_equal(first[0], a)  # the first clip of a session is the fresh-session clip


def test_speech_transcripts_lengths_and_wav():
    durations = {3: [], 4: []}
    for i in range(20):
        samples, rate, spec = speech.generate(rng(i, "speech"))
        words = spec.text.split()
        assert len(words) == len(spec.digits) in (3, 4)
        assert words == [speech.DIGIT_WORDS[d] for d in spec.digits]
        assert speech.RATE_WPM[0] <= spec.rate <= speech.RATE_WPM[1]
        durations[len(words)].append(len(samples) / rate / (175 / spec.rate))
        # Trimmed: speech starts and ends within the margin.
        loud = np.flatnonzero(np.abs(samples.astype(int)) > 0.02 * np.abs(samples.astype(int)).max())
        assert loud[0] <= speech.TRIM_MARGIN_S * rate + 1
        assert len(samples) - loud[-1] <= speech.TRIM_MARGIN_S * rate + 2
    # More digits take longer (normalised to one speaking rate).
    assert np.mean(durations[4]) > np.mean(durations[3])
    with wave.open(io.BytesIO(speech.wav_bytes(samples, rate))) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, rate)
        assert np.array_equal(np.frombuffer(w.readframes(w.getnframes()), "<i2"), samples)


def test_different_digits_sound_different():
    spoken = {d: speech.speak(speech.SpeechSpec((d,), "en-us+m1", 175, 50))[0] for d in (1, 7)}
    n = min(len(s) for s in spoken.values())
    assert not np.array_equal(spoken[1][:n], spoken[7][:n])


# ------------------------------------------------------------ text

NUM = {w: i for i, w in enumerate(text.NUMBER_WORDS)}


def test_generated_text_states_true_facts():
    for i in range(50):
        doc = text.generated_document(rng(i, "text"))
        sentences = re.findall(r"[^.]+\.", doc)
        assert 3 <= len(sentences) <= 8, doc
        for a, b, c in re.findall(r"(\w+) plus (\w+) is (\w+)\.", doc):
            assert NUM[a.lower()] + NUM[b] == NUM[c], doc
        for a, b in re.findall(r"After (\w+) comes (\w+)\.", doc):
            assert NUM[a] + 1 == NUM[b], doc
        for run in re.findall(r"Counting up: ([\w, ]+)\.", doc):
            values = [NUM[w] for w in run.split(", ")]
            assert values == list(range(values[0], values[0] + len(values))), doc


def test_book_documents_split_disjointly_and_keep_every_paragraph():
    paragraphs = [f"Paragraph {i} " + "word " * 50 for i in range(400)]
    book = ("header\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\n" + "\n\n".join(paragraphs)
            + "\n\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\nlicence")
    splits = {s: text.book_documents(book, s, chunk_chars=1000) for s in ("train", "validation", "test")}
    assert len(splits["train"]) > 8 * len(splits["test"]) > 0 and splits["validation"]
    found = [p for docs in splits.values() for d in docs for p in d.split("\n")]
    assert sorted(found) == sorted(" ".join(p.split()) for p in paragraphs)
    assert not any("licence" in d or "header" in d for docs in splits.values() for d in docs)


# ------------------------------------------------------------ interleaved

def test_interleaved_documents_alternate_and_describe_their_media():
    kinds_seen = set()
    for i in range(30):
        doc = interleaved.generate(rng(i, "interleaved"), f"media/{i:06d}")
        kinds = [next(iter(p)) for p in doc.parts]
        assert all(a != b or a != "text" for a, b in zip(kinds, kinds[1:])), kinds  # text merged
        media_parts = [p for p in doc.parts if "text" not in p]
        assert [next(iter(p.values())) for p in media_parts] == [path for path, _ in doc.media]
        assert 2 <= len(media_parts) <= 4
        for k, part in enumerate(doc.parts):
            if "text" in part:
                continue
            kind = next(iter(part))
            kinds_seen.add(kind)
            after = doc.parts[k + 1]["text"]
            path, data = doc.media[media_parts.index(part)]
            assert path.startswith(f"media/{i:06d}_")
            if kind == "image":
                assert data.startswith(b"\x89PNG") and after.startswith("It shows a ")
            elif kind == "audio":
                assert data.startswith(b"RIFF") and after.startswith("The speaker says: ")
            else:
                assert _decode(data)[0].shape[0] == 4 and " moves " in after.split(".")[0]
    assert kinds_seen == {"image", "audio", "video"}


def test_spoken_digits_are_recognisable_across_voices():
    """Nearest-centroid on coarse log-mel shape, leaving one voice out: digits must be tellable apart."""
    import librosa
    r = np.random.default_rng(0)
    voices = [f"{a}+{v}" for a in speech.ACCENTS for v in speech.VARIANTS[::2]]
    feats = {}
    with speech.session() as synth:
        for voice in voices:
            for d in range(10):
                spec = speech.SpeechSpec((d,), voice, int(r.integers(*speech.RATE_WPM)), int(r.integers(*speech.PITCH)))
                x, rate = speech.speak(spec, 0, synth)
                mel = np.log(librosa.feature.melspectrogram(y=x.astype(np.float32) / 32768, sr=rate, n_fft=512,
                                                            hop_length=220, n_mels=40) + 1e-6)
                f = np.concatenate([s.mean(1) for s in np.array_split(mel, 3, axis=1)])
                feats[voice, d] = f - f.mean()
    correct = 0
    for held in voices:
        centroids = np.stack([np.mean([feats[v, d] for v in voices if v != held], 0) for d in range(10)])
        for d in range(10):
            correct += int(np.argmin(((centroids - feats[held, d]) ** 2).sum(1)) == d)
    assert correct / (10 * len(voices)) >= 0.8  # chance is 0.1; measured ~0.99

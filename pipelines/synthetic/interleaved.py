"""Documents that interleave text with freshly generated images, speech and video.

    doc = generate(rng, media_prefix="media/000007")
    doc.parts  # [{"text": "Look at this picture."}, {"image": "media/000007_0.png"},
               #  {"text": "It shows a blue triangle in the middle. Listen to this."},
               #  {"audio": "media/000007_1.wav"}, {"text": "The speaker says: four one two."}]
    doc.media  # [("media/000007_0.png", b"\\x89PNG..."), ("media/000007_1.wav", b"RIFF...")]

Each document has 2-4 segments in random order; a segment is an introduction,
one media item and a sentence that states what the item shows or says, so the
text after each item is predictable only from the item. Now and then a
generated sentence sits between segments. Adjacent text is merged, so parts
alternate text and media. Media paths are relative to the manifest.
"""
import dataclasses

import numpy as np

from pipelines.synthetic import motion_video, shapes, speech, text

IMAGE_INTROS = ("Here is a picture.", "Look at this picture.", "An image:", "A drawing:")
AUDIO_INTROS = ("Listen to this.", "Here is a recording.", "A voice reads some digits:")
VIDEO_INTROS = ("Watch this clip.", "Here is a short video.", "A video:")


@dataclasses.dataclass(frozen=True)
class MediaSizes:
    """Sizes of the media drawn inside documents (the same as the standalone sets)."""
    image_size: int = 32
    frame_size: int = 32
    num_frames: int = 4
    fps: int = 1
    num_digits: tuple[int, int] = speech.NUM_DIGITS


@dataclasses.dataclass(frozen=True)
class Document:
    parts: list[dict]
    media: list[tuple[str, bytes]]


def _image_segment(rng, sizes: MediaSizes, path: str, synth) -> tuple[list[dict], bytes]:
    png, caption, _ = shapes.generate(rng, sizes.image_size)
    return [{"text": str(rng.choice(IMAGE_INTROS))}, {"image": path},
            {"text": f"It shows {caption}."}], png


def _audio_segment(rng, sizes: MediaSizes, path: str, synth) -> tuple[list[dict], bytes]:
    samples, rate, spec = speech.generate(rng, sizes.num_digits, synth)
    return [{"text": str(rng.choice(AUDIO_INTROS))}, {"audio": path},
            {"text": f"The speaker says: {spec.text}."}], speech.wav_bytes(samples, rate)


def _video_segment(rng, sizes: MediaSizes, path: str, synth) -> tuple[list[dict], bytes]:
    mp4, spec = motion_video.generate(rng, sizes.frame_size, sizes.num_frames, sizes.fps)
    return [{"text": str(rng.choice(VIDEO_INTROS))}, {"video": path},
            {"text": f"The {spec.colour} {spec.shape} moves {spec.direction}."}], mp4


_SEGMENTS = (("image", "png", _image_segment), ("audio", "wav", _audio_segment),
             ("video", "mp4", _video_segment))


def merge_text(parts: list[dict]) -> list[dict]:
    """Joins adjacent text parts with a space."""
    merged: list[dict] = []
    for part in parts:
        if "text" in part and merged and "text" in merged[-1]:
            merged[-1] = {"text": f"{merged[-1]['text']} {part['text']}"}
        else:
            merged.append(dict(part))
    return merged


def generate(rng: np.random.Generator, media_prefix: str, sizes: MediaSizes = MediaSizes(),
             synth: speech.Synthesizer | None = None) -> Document:
    """One document; its media files are named `<media_prefix>_<k>.<ext>`.

    `synth`: an eSpeak session (`speech.session()`) for the audio, or None for a fresh one per clip.
    """
    parts: list[dict] = []
    media: list[tuple[str, bytes]] = []
    for k in range(int(rng.integers(2, 5))):
        if rng.random() < 0.3:
            parts.append({"text": text.sentence(rng)})
        _, ext, make = _SEGMENTS[int(rng.integers(0, len(_SEGMENTS)))]
        path = f"{media_prefix}_{k}.{ext}"
        segment, payload = make(rng, sizes, path, synth)
        parts.extend(segment)
        media.append((path, payload))
    return Document(parts=merge_text(parts), media=media)

"""Settings of the multimodal preprocessing job, and the bad-input taxonomy.

One frozen dataclass carries every knob the decoders and the interleaver read;
the Beam job builds it from its command-line options, tests and the benchmark
build it directly. Defaults follow common front ends (ViT-B/16 at 224 px, 25 ms
/ 10 ms / 80-bin log-mel at 16 kHz, Gemini's 1 frame per second for video).
"""
import contextlib
import dataclasses
import re

from pipelines import media_slots


@dataclasses.dataclass(frozen=True)
class MediaConfig:
    """What every media item is normalised to, and the guards against bad input."""
    # Images: square `image_size` RGB, aspect kept, padded with `pad_value` (letterbox).
    image_size: int = 224
    image_patch_size: int = 16
    pad_value: int = 0
    max_image_pixels: int = 64_000_000  # decompression-bomb guard (header size, before decoding); sets Pillow's own
    # Audio: 16 kHz mono -> log-mel [T, n_mels]; long audio is split into segments.
    sample_rate: int = 16_000
    window_ms: float = 25.0
    hop_ms: float = 10.0
    n_mels: int = 80
    max_audio_seconds: float = 30.0  # segment length; a longer clip becomes several audio items
    min_audio_seconds: float = 0.1   # shorter clip: too_short; a shorter last segment of a long clip is left out
    audio_subsampling: int = media_slots.AUDIO_SUBSAMPLING
    # Video: frames sampled at `video_fps` (first frame at t=0), at most `max_video_frames`,
    # each normalised like an image to `video_frame_size`.
    video_fps: float = 1.0
    max_video_frames: int = 16
    video_frame_size: int = 112
    video_patch_size: int = 16
    video_sampling: str = "spread"  # longer than max_video_frames / fps: "spread" frames over it, or "truncate"
    min_video_seconds: float = 0.5  # decoded stream shorter than this: too_short
    min_video_frames: int = 1       # fewer sampled frames than this: too_short
    keep_video_audio: bool = False  # keep the audio track as an audio item right after the video
    # Files and documents.
    max_file_bytes: int = 512 * 1024 * 1024
    max_media_seconds: float = 3600.0  # longest audio/video: too_long, from container metadata before decoding
    truncation_tolerance: float = 0.25  # decoded stream shorter than (1 - this) x declared duration: truncated
    drop_bad_parts: bool = False  # False: a document with one bad part is dead-lettered whole

    def __post_init__(self):
        media_slots.image_slots(self.image_size, self.image_patch_size)
        media_slots.video_slots(1, self.video_frame_size, self.video_patch_size)
        for name in ("sample_rate", "n_mels", "max_video_frames", "max_file_bytes", "max_image_pixels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"MediaConfig.{name} must be positive, got {getattr(self, name)}")
        for name in ("window_ms", "hop_ms", "max_audio_seconds", "video_fps", "max_media_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"MediaConfig.{name} must be positive, got {getattr(self, name)}")
        for name in ("min_audio_seconds", "min_video_seconds", "min_video_frames"):
            if getattr(self, name) < 0:
                raise ValueError(f"MediaConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.min_audio_seconds >= self.max_audio_seconds:
            raise ValueError(f"MediaConfig.min_audio_seconds ({self.min_audio_seconds}) must be below "
                             f"max_audio_seconds ({self.max_audio_seconds})")
        if self.min_video_frames > self.max_video_frames:
            raise ValueError(f"MediaConfig.min_video_frames ({self.min_video_frames}) must not exceed "
                             f"max_video_frames ({self.max_video_frames})")
        if not 0 <= self.truncation_tolerance < 1:
            raise ValueError(f"MediaConfig.truncation_tolerance must be in [0, 1), got {self.truncation_tolerance}")
        if self.video_sampling not in ("spread", "truncate"):
            raise ValueError(f"MediaConfig.video_sampling must be 'spread' or 'truncate', got {self.video_sampling!r}")
        if not 0 <= self.pad_value <= 255:
            raise ValueError(f"MediaConfig.pad_value must be in 0..255, got {self.pad_value}")
        if self.hop_length > self.win_length:
            raise ValueError(f"hop_ms ({self.hop_ms}) must not exceed window_ms ({self.window_ms})")

    @property
    def win_length(self) -> int:
        return round(self.sample_rate * self.window_ms / 1000)

    @property
    def hop_length(self) -> int:
        return round(self.sample_rate * self.hop_ms / 1000)

    @property
    def max_audio_samples(self) -> int:
        return int(self.max_audio_seconds * self.sample_rate)

    @property
    def max_audio_frames(self) -> int:
        """Log-mel frames of the longest segment (center=True framing)."""
        return 1 + self.max_audio_samples // self.hop_length

    def image_slots(self) -> int:
        return media_slots.image_slots(self.image_size, self.image_patch_size)

    def video_slots(self, n_frames: int) -> int:
        return media_slots.video_slots(n_frames, self.video_frame_size, self.video_patch_size)

    def audio_slots(self, n_frames: int) -> int:
        return media_slots.audio_slots(n_frames, self.audio_subsampling)


# A healthy file decodes to a little less or more than its header declares: codec priming and
# padding (MP3/AAC: tens of ms), and a video's last frame, which lasts 1/fps. Allowed on top of
# truncation_tolerance, so that a short clip is not called truncated for that.
TRUNCATION_SLACK_SECONDS = 0.5


def check_not_truncated(declared: float | None, decoded: float, cfg: MediaConfig, what: str) -> None:
    """BadInput("truncated") when the stream ended far before the duration its header declares."""
    if declared and declared - decoded > cfg.truncation_tolerance * declared + TRUNCATION_SLACK_SECONDS:
        raise BadInput("truncated", f"{what}: header declares {declared:.2f} s, only {decoded:.2f} s decode")


def check_duration(declared: float | None, cfg: MediaConfig, what: str) -> None:
    """BadInput("too_long") when a declared (or decoded so far) duration exceeds max_media_seconds."""
    if declared is not None and declared > cfg.max_media_seconds:
        raise BadInput("too_long", f"{what}: {declared:.1f} s > max_media_seconds {cfg.max_media_seconds:g}")


# Why an input was rejected. Every dead letter carries one of these.
REASONS = (
    "missing_file",   # path/URI does not exist
    "unreadable",     # exists but cannot be read (permissions, I/O error)
    "empty",          # zero bytes, zero samples, zero frames, no text
    "truncated",      # the data ends early: mid-stream, or far before the duration its header declares
    "corrupt",        # the decoder rejected the bytes
    "oversize",       # bigger than a configured guard (bytes, pixels)
    "too_long",       # audio/video longer than max_media_seconds (checked from the header, before decoding)
    "too_short",      # audio/video shorter than min_audio_seconds / min_video_seconds / min_video_frames
    "unsupported",    # a format, codec or part kind we do not handle
    "bad_record",     # a manifest/annotation record that cannot be parsed
    "decoder_error",  # any other exception while decoding or encoding (its class name is in the detail)
)

# "<_io.BytesIO object at 0x7f...>", "<PIL.PngImagePlugin.PngImageFile image mode=RGB size=9x9 at 0x7f...>"
_OBJECT_REPR = re.compile(r"\s*<[^<>]*\bat 0x[0-9a-fA-F]+>")


def clean_detail(text: str) -> str:
    """A dead-letter detail without object reprs (they change every run and name no file)."""
    return _OBJECT_REPR.sub("", text)


class BadInput(Exception):
    """A record or media item that cannot be used; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str):
        if reason not in REASONS:
            raise ValueError(f"unknown dead-letter reason {reason!r}; use one of {REASONS}")
        detail = clean_detail(detail)
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@contextlib.contextmanager
def decoder_errors(what: str):
    """Turns any exception but BadInput (a library's own, e.g. librosa's ParameterError) into
    BadInput("decoder_error") naming `what` and the exception class, so one file never kills a job."""
    try:
        yield
    except BadInput:
        raise
    except Exception as e:  # noqa: BLE001 - the point: every decoder failure becomes a dead letter
        raise BadInput("decoder_error", f"{what}: {type(e).__name__}: {e}") from None

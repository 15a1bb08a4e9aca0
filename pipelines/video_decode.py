"""Video: bytes in any container/codec FFmpeg reads -> uint8 frames [F, S, S, 3].

PyAV decodes the first video stream in order; a frame is kept when its
presentation time reaches the next sampling instant 0, 1/fps, 2/fps, ...
(default 1 fps, as Gemini does), up to `max_video_frames` frames. A video longer
than max_video_frames / fps is, with `video_sampling="spread"` (default), sampled
at max_video_frames instants spread evenly over its whole duration (a lower rate,
so a question about its end still sees the end); with "truncate" only its first
max_video_frames / fps seconds are seen. Each kept frame is
normalised exactly like an image (aspect-preserving resize, letterbox pad) to
`video_frame_size`. With `keep_video_audio`, the first audio track over the same
span becomes log-mel segments (see audio_decode); a video without audio simply
has none.

Guards: a header duration above `max_media_seconds` is `too_long` before any
frame is decoded; a stream that ends far before the duration its header declares
(`truncation_tolerance`) is `truncated`; a decoded stream shorter than
`min_video_seconds`, or fewer sampled frames than `min_video_frames`, is `too_short`.
"""
import dataclasses
import io

import numpy as np

from pipelines import audio_decode, media_io
from pipelines.media_config import BadInput, MediaConfig, check_duration, check_not_truncated, decoder_errors


@dataclasses.dataclass
class DecodedVideo:
    frames: np.ndarray          # uint8 [F, S, S, 3]
    seconds: float              # span covered by the sampled frames (F / fps)
    audio: list[np.ndarray]     # float16 [T, n_mels] per segment; empty unless keep_video_audio


def _letterbox_frame(frame, size: int, pad_value: int) -> np.ndarray:
    w, h = frame.width, frame.height
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    rgb = frame.to_ndarray(width=nw, height=nh, format="rgb24")  # swscale, bicubic
    out = np.full((size, size, 3), pad_value, dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = rgb
    return out


def sample_frames(data: bytes, cfg: MediaConfig, what: str = "video") -> tuple[np.ndarray, float]:
    """Encoded video -> (uint8 [F, S, S, 3] frames at cfg.video_fps, seconds covered)."""
    with decoder_errors(what):
        return _sample_frames(data, cfg, what)


def _sample_frames(data: bytes, cfg: MediaConfig, what: str) -> tuple[np.ndarray, float]:
    import av
    frames = []
    step = 1.0 / cfg.video_fps
    next_t = 0.0
    duration, start, end, exhausted = None, None, 0.0, False
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise BadInput("unsupported", f"{what}: no video stream")
            stream = container.streams.video[0]
            duration = audio_decode.av_duration(container, stream)
            check_duration(duration, cfg, what)
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            if (cfg.video_sampling == "spread" and duration
                    and duration * cfg.video_fps > cfg.max_video_frames):
                step = duration / cfg.max_video_frames
            for i, frame in enumerate(container.decode(stream)):
                t = frame.time if frame.time is not None else i / rate
                start = t if start is None else start
                end = t - start + 1.0 / rate  # the stream decoded so far, in seconds
                if t - start + 1e-6 >= next_t:
                    frames.append(_letterbox_frame(frame, cfg.video_frame_size, cfg.pad_value))
                    next_t += step
                    if len(frames) >= cfg.max_video_frames:
                        break
            else:
                exhausted = True
    except av.FFmpegError as e:  # FFmpeg stops: classify (anything else is a decoder_error)
        msg = str(e)
        low = msg.lower()
        if not frames and media_io.ends_inside_a_declared_block(data):
            reason = "truncated"  # e.g. an MP4 cut before its index (moov) box
        elif "invalid data" in low and not frames:
            reason = "corrupt"
        elif "truncat" in low or "end of file" in low or frames:
            reason = "truncated"
        else:
            reason = "corrupt"
        raise BadInput(reason, f"{what}: {type(e).__name__}: {msg}") from None
    if exhausted:  # the whole stream was decoded: does it match its header, and is it long enough?
        check_not_truncated(duration, end, cfg, what)
    if not frames:
        raise BadInput("empty", f"{what}: no decodable frames")
    if exhausted and end < cfg.min_video_seconds:
        raise BadInput("too_short", f"{what}: {end:.2f} s < min_video_seconds {cfg.min_video_seconds:g}")
    if len(frames) < cfg.min_video_frames:
        raise BadInput("too_short", f"{what}: {len(frames)} frames < min_video_frames {cfg.min_video_frames}")
    return np.stack(frames), len(frames) * step


def decode_video(data: bytes, cfg: MediaConfig, what: str = "video") -> DecodedVideo:
    frames, seconds = sample_frames(data, cfg, what)
    audio: list[np.ndarray] = []
    if cfg.keep_video_audio:
        with decoder_errors(f"{what}: audio track"):
            audio = audio_decode.segments_with_av(
                data, cfg, f"{what}: audio track", emit=lambda s: audio_decode.log_mel(s, cfg, what),
                max_seconds=seconds, need_audio=False)
    return DecodedVideo(frames=frames, seconds=seconds, audio=audio)

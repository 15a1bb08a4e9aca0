"""Audio: bytes (FLAC, WAV, OGG/Vorbis/Opus, MP3, or any container FFmpeg reads)
-> 16 kHz mono float32 waveform -> log-mel frames float16 [T, n_mels].

libsndfile (soundfile) decodes the common speech formats; anything it cannot
open (AAC/M4A, WebM audio, ...) falls back to PyAV. Resampling uses soxr
(librosa's default, high quality), streamed. Features are librosa's mel
spectrogram of the power spectrum, window `window_ms`, hop `hop_ms`, `n_mels`
bins up to 8 kHz, `center=True` (T = 1 + samples // hop), then natural log with
a 1e-6 floor. Long audio is cut into consecutive segments of at most
`max_audio_seconds`, each one its own audio item, so T <= cfg.max_audio_frames
always; a last segment shorter than `min_audio_seconds` is left out.

Guards, in order: the header's duration above `max_media_seconds` is `too_long`
before anything is decoded; decoding is incremental (one segment of raw samples
in memory at a time, and it stops at `max_media_seconds` whatever the header
said); a stream that ends far before its declared duration is `truncated`; a
clip shorter than `min_audio_seconds` is `too_short`.
"""
import io
from typing import Callable, Iterator

import numpy as np

from pipelines import media_io
from pipelines.media_config import BadInput, MediaConfig, check_duration, check_not_truncated, decoder_errors

_LOG_FLOOR = 1e-6


class _Cutter:
    """Mono blocks at the source rate -> resampled, cut into segments, each passed to `emit`.

    Holds at most one segment (plus one block) of samples; counts the source seconds it saw.
    """

    def __init__(self, rate: int, cfg: MediaConfig, what: str, emit: Callable[[np.ndarray], np.ndarray]):
        import soxr
        self._rate, self._cfg, self._what, self._emit = rate, cfg, what, emit
        self._stream = (None if rate == cfg.sample_rate else
                        soxr.ResampleStream(rate, cfg.sample_rate, 1, dtype="float32", quality="HQ"))
        self._pending: list[np.ndarray] = []
        self._n_pending = 0
        self.source_samples = 0
        self.out: list[np.ndarray] = []

    def add(self, block: np.ndarray, last: bool = False) -> None:
        """block: float32 [n] (or [n, channels], averaged to mono) at the source rate."""
        if block.ndim == 2:
            block = block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
        self.source_samples += block.shape[0]
        check_duration(self.source_samples / self._rate, self._cfg, self._what)
        if not np.isfinite(block).all():
            raise BadInput("corrupt", f"{self._what}: non-finite samples")
        y = self._stream.resample_chunk(block, last=last) if self._stream is not None else block
        self._pending.append(y)
        self._n_pending += y.shape[0]
        seg = self._cfg.max_audio_samples
        while self._n_pending >= seg:
            buf = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
            self.out.append(self._emit(np.ascontiguousarray(buf[:seg], dtype=np.float32)))
            self._pending, self._n_pending = [buf[seg:]], buf.shape[0] - seg

    def finish(self) -> list:
        """Flushes the resampler; returns the emitted segments (a short last one left out)."""
        if self._stream is not None:
            self.add(np.zeros([0], np.float32), last=True)
        tail = np.concatenate(self._pending) if self._pending else np.zeros([0], np.float32)
        min_samples = self._cfg.min_audio_seconds * self._cfg.sample_rate
        if tail.shape[0] and (not self.out or tail.shape[0] >= min_samples):
            self.out.append(self._emit(np.ascontiguousarray(tail, dtype=np.float32)))
        self._pending, self._n_pending = [], 0
        return self.out

    @property
    def seconds(self) -> float:
        return self.source_samples / self._rate


def _check_length(cutter: _Cutter, declared: float | None, cfg: MediaConfig, what: str) -> None:
    check_not_truncated(declared, cutter.seconds, cfg, what)
    if cutter.source_samples == 0:
        raise BadInput("empty", f"{what}: zero samples")
    if cutter.seconds < cfg.min_audio_seconds:
        raise BadInput("too_short", f"{what}: {cutter.seconds * 1000:.1f} ms < min_audio_seconds "
                                    f"{cfg.min_audio_seconds:g}")


def _segments_with_soundfile(f, cfg: MediaConfig, what: str, emit) -> list:
    """An open soundfile.SoundFile -> emitted segments; reads one segment of source frames at a time."""
    import soundfile as sf
    declared = f.frames / f.samplerate if f.frames > 0 else None
    check_duration(declared, cfg, what)
    cutter = _Cutter(f.samplerate, cfg, what, emit)
    block = max(1, int(cfg.max_audio_seconds * f.samplerate))
    try:
        while True:
            x = f.read(block, dtype="float32", always_2d=True)
            if x.shape[0] == 0:
                break
            cutter.add(x)
    except sf.SoundFileError as e:  # libsndfile stops mid-stream (e.g. "flac decoder lost sync")
        check_not_truncated(declared, cutter.seconds, cfg, what)
        raise BadInput("corrupt", f"{what}: {type(e).__name__}: {e}") from None
    _check_length(cutter, declared, cfg, what)
    return cutter.finish()


def av_duration(container, stream) -> float | None:
    """Seconds, from the stream header or else the container's; None when neither says."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def _av_blocks(container, stream, sample_rate: int) -> Iterator[np.ndarray]:
    """Decoded audio of `stream`, resampled by FFmpeg to mono float32 at `sample_rate`, in blocks."""
    import av
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    for frame in container.decode(stream):
        for out in resampler.resample(frame):
            yield out.to_ndarray().reshape(-1)
    for out in resampler.resample(None):
        yield out.to_ndarray().reshape(-1)


def segments_with_av(data: bytes, cfg: MediaConfig, what: str, emit, *,
                     max_seconds: float | None = None, need_audio: bool = True) -> list:
    """Audio track of any FFmpeg container -> emitted segments.

    max_seconds: decode only the first `max_seconds` (a video's sampled span): no truncation or
    minimum-length check then. need_audio=False: a container without audio gives [].
    """
    import av
    with av.open(io.BytesIO(data)) as container:
        if not container.streams.audio:
            if need_audio:
                raise BadInput("unsupported", f"{what}: no audio stream")
            return []
        stream = container.streams.audio[0]
        declared = av_duration(container, stream)
        if max_seconds is None:
            check_duration(declared, cfg, what)
        cutter = _Cutter(cfg.sample_rate, cfg, what, emit)
        limit = None if max_seconds is None else int(max_seconds * cfg.sample_rate)
        try:
            for block in _av_blocks(container, stream, cfg.sample_rate):
                if limit is not None and cutter.source_samples + block.shape[0] >= limit:
                    cutter.add(block[: limit - cutter.source_samples])
                    break
                cutter.add(block)
        except av.FFmpegError as e:  # FFmpeg stops mid-stream
            if max_seconds is None:
                check_not_truncated(declared, cutter.seconds, cfg, what)
            raise BadInput(_av_reason(str(e), data), f"{what}: {type(e).__name__}: {e}") from None
    if max_seconds is None:
        _check_length(cutter, declared, cfg, what)
    elif cutter.seconds < cfg.min_audio_seconds:
        return []  # a sound track too short to be an item: the video stands alone
    return cutter.finish()


def _av_reason(msg: str, data: bytes) -> str:
    low = msg.lower()
    if "truncat" in low or "end of file" in low:
        return "truncated"
    return "unsupported" if _unknown_magic(data) else "corrupt"


def _segments(data: bytes, cfg: MediaConfig, what: str, emit) -> list:
    import av
    import soundfile as sf
    try:
        f = sf.SoundFile(io.BytesIO(data))
    except Exception as sf_error:  # noqa: BLE001 - libsndfile cannot open it: try FFmpeg
        try:
            return segments_with_av(data, cfg, what, emit)
        except av.FFmpegError as av_error:  # neither can: classify
            if media_io.ends_inside_a_declared_block(data):
                raise BadInput("truncated", f"{what}: the file ends inside a block its header declares "
                                            f"({len(data)} bytes)") from None
            msg = f"{sf_error}; {av_error}"
            raise BadInput(_av_reason(msg, data), f"{what}: {msg}") from None
    with f:
        return _segments_with_soundfile(f, cfg, what, emit)


def decode_waveform(data: bytes, cfg: MediaConfig, what: str = "audio") -> np.ndarray:
    """Encoded audio -> float32 [n] mono at cfg.sample_rate (the segments joined); BadInput on failure."""
    with decoder_errors(what):
        return np.concatenate(_segments(data, cfg, what, emit=lambda s: s))


_AUDIO_MAGIC = (b"fLaC", b"RIFF", b"OggS", b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2", b"FORM", b"\x1aE\xdf\xa3")


def _unknown_magic(data: bytes) -> bool:
    return not data.startswith(_AUDIO_MAGIC) and data[4:8] != b"ftyp"



def log_mel(wave: np.ndarray, cfg: MediaConfig, what: str = "audio") -> np.ndarray:
    """float32 [n] at cfg.sample_rate -> float16 [T, n_mels], T = 1 + n // hop."""
    import librosa
    mel = librosa.feature.melspectrogram(
        y=wave, sr=cfg.sample_rate, n_fft=cfg.win_length, win_length=cfg.win_length,
        hop_length=cfg.hop_length, n_mels=cfg.n_mels, power=2.0, center=True,
        fmax=cfg.sample_rate / 2)
    out = np.log(np.maximum(mel, _LOG_FLOOR)).T.astype(np.float16)
    if not np.isfinite(out).all():  # samples far outside [-1, 1] overflow the power spectrum
        raise BadInput("corrupt", f"{what}: log-mel features overflow: sample values far out of range")
    return out


def decode_audio(data: bytes, cfg: MediaConfig, what: str = "audio") -> list[np.ndarray]:
    """Encoded audio -> one float16 [T, n_mels] log-mel array per segment (features computed as
    each segment is decoded, so a long file never sits in memory whole)."""
    with decoder_errors(what):
        return _segments(data, cfg, what, emit=lambda s: log_mel(s, cfg, what))

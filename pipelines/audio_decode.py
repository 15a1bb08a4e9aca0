"""Audio: bytes (FLAC, WAV, OGG/Vorbis/Opus, MP3, or any container FFmpeg reads)
-> 16 kHz mono float32 waveform -> log-mel frames float16 [T, n_mels].

libsndfile (soundfile) decodes the common speech formats; anything it refuses
(AAC/M4A, WebM audio, ...) falls back to PyAV. Resampling uses soxr (librosa's
default, high quality). Features are librosa's mel spectrogram of the power
spectrum, window `window_ms`, hop `hop_ms`, `n_mels` bins up to 8 kHz,
`center=True` (T = 1 + samples // hop), then natural log with a 1e-6 floor.
Long audio is cut into consecutive segments of at most `max_audio_seconds`,
each one its own audio item, so T <= cfg.max_audio_frames always.
"""
import io

import numpy as np

from pipelines.media_config import BadInput, MediaConfig

_LOG_FLOOR = 1e-6


def to_mono_16k(samples: np.ndarray, sr: int, cfg: MediaConfig) -> np.ndarray:
    """[n] or [n, channels] float at `sr` -> float32 [n'] mono at cfg.sample_rate."""
    import librosa
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if sr != cfg.sample_rate:
        x = librosa.resample(x, orig_sr=sr, target_sr=cfg.sample_rate, res_type="soxr_hq")
    return np.ascontiguousarray(x, dtype=np.float32)


def _decode_with_soundfile(data: bytes) -> tuple[np.ndarray, int]:
    import soundfile as sf
    x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return x, sr


def _decode_with_av(data: bytes, sample_rate: int) -> tuple[np.ndarray, int]:
    import av
    chunks = []
    with av.open(io.BytesIO(data)) as container:
        if not container.streams.audio:
            raise BadInput("unsupported", "no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    x = np.concatenate(chunks) if chunks else np.zeros([0], np.float32)
    return x[:, None], sample_rate


def decode_waveform(data: bytes, cfg: MediaConfig, what: str = "audio") -> np.ndarray:
    """Encoded audio -> float32 [n] mono at cfg.sample_rate; BadInput on failure."""
    try:
        x, sr = _decode_with_soundfile(data)
    except Exception as sf_error:  # noqa: BLE001 - libsndfile refuses: try FFmpeg
        try:
            x, sr = _decode_with_av(data, cfg.sample_rate)
        except BadInput as e:
            raise BadInput(e.reason, f"{what}: {e.detail}") from None
        except Exception as av_error:  # noqa: BLE001
            msg = f"{sf_error}; {av_error}"
            if "truncat" in msg.lower():
                reason = "truncated"
            else:
                reason = "unsupported" if _unknown_magic(data) else "corrupt"
            raise BadInput(reason, f"{what}: {msg}") from None
    if x.shape[0] == 0:
        raise BadInput("empty", f"{what}: zero samples")
    if x.shape[0] / sr > cfg.max_media_seconds:
        raise BadInput("oversize", f"{what}: {x.shape[0] / sr:.0f} s > {cfg.max_media_seconds:.0f} s")
    if not np.all(np.isfinite(x)):
        raise BadInput("corrupt", f"{what}: non-finite samples")
    return to_mono_16k(x, sr, cfg)


_AUDIO_MAGIC = (b"fLaC", b"RIFF", b"OggS", b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2", b"FORM", b"\x1aE\xdf\xa3")


def _unknown_magic(data: bytes) -> bool:
    return not data.startswith(_AUDIO_MAGIC) and data[4:8] != b"ftyp"


def split_segments(wave: np.ndarray, cfg: MediaConfig) -> list[np.ndarray]:
    """Cut a waveform into consecutive segments of at most cfg.max_audio_samples (none dropped)."""
    step = cfg.max_audio_samples
    return [wave[a:a + step] for a in range(0, wave.shape[0], step)]


def log_mel(wave: np.ndarray, cfg: MediaConfig) -> np.ndarray:
    """float32 [n] at cfg.sample_rate -> float16 [T, n_mels], T = 1 + n // hop."""
    import librosa
    mel = librosa.feature.melspectrogram(
        y=wave, sr=cfg.sample_rate, n_fft=cfg.win_length, win_length=cfg.win_length,
        hop_length=cfg.hop_length, n_mels=cfg.n_mels, power=2.0, center=True,
        fmax=cfg.sample_rate / 2)
    return np.log(np.maximum(mel, _LOG_FLOOR)).T.astype(np.float16)


def decode_audio(data: bytes, cfg: MediaConfig, what: str = "audio") -> list[np.ndarray]:
    """Encoded audio -> one float16 [T, n_mels] log-mel array per segment."""
    return [log_mel(seg, cfg) for seg in split_segments(decode_waveform(data, cfg, what), cfg)]

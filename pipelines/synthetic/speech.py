"""Spoken digit strings from eSpeak NG, with their transcripts.

    audio, rate, spec = generate(rng)   # int16 [N] at 22050 Hz, spec.text "three four seven"

eSpeak NG comes from the `espeakng-loader` wheel (the library and its voice
data); we call its C API through ctypes, with no subprocess and no system
install. Each utterance varies the voice (3 English accents x 8 speaker
variants), the rate (140-210 words/min) and the pitch (30-70 of 0-100); the
transcript is the digit words, lower case, as spoken. Leading and trailing
silence is trimmed to 50 ms so the clip stays short (3-4 digits: 0.7-1.8 s,
1.1 s on average).

Determinism: eSpeak keeps internal synthesis state between utterances that
neither `espeak_Terminate` nor re-initialising resets (measured: the same
request gives a few samples more or less, and different samples, depending on
what was spoken before). A
`session()` therefore loads a fresh copy of the library (dlopen ... dlclose,
~3 ms) and every utterance seeds eSpeak's noise generator: a clip depends only
on its own parameters and on the utterances before it in the same session --
never on which worker made it or what it did earlier. Callers that need
examples to be independent open one session per example (`speak` without a
session) or per fixed chunk of examples (the corpus job: ~1 ms per clip). A
process-wide lock serialises sessions (the library is not thread-safe).
"""
import contextlib
import ctypes
import dataclasses
import functools
import io
import threading
import wave
from typing import Callable, Iterator

import numpy as np

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ACCENTS = ("en-us", "en", "en-gb-x-rp")
VARIANTS = ("m1", "m2", "m3", "m4", "f1", "f2", "f3", "f4")
RATE_WPM = (140, 210)
PITCH = (30, 70)
NUM_DIGITS = (3, 4)
TRIM_MARGIN_S = 0.05

# eSpeak NG C API constants (speak_lib.h).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH = 1, 3
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclasses.dataclass(frozen=True)
class SpeechSpec:
    """What to say and how."""
    digits: tuple[int, ...]
    voice: str
    rate: int
    pitch: int

    @property
    def text(self) -> str:
        return " ".join(DIGIT_WORDS[d] for d in self.digits)


def sample_speech_spec(rng: np.random.Generator, num_digits: tuple[int, int] = NUM_DIGITS) -> SpeechSpec:
    """Random digits (length uniform in `num_digits`, inclusive), voice, rate and pitch."""
    lo, hi = num_digits
    if not 1 <= lo <= hi:
        raise ValueError(f"num_digits must be (lo, hi) with 1 <= lo <= hi, got {num_digits}")
    n = int(rng.integers(lo, hi + 1))
    digits = tuple(int(d) for d in rng.integers(0, 10, size=n))
    voice = f"{rng.choice(ACCENTS)}+{rng.choice(VARIANTS)}"
    rate = int(rng.integers(RATE_WPM[0], RATE_WPM[1] + 1))
    pitch = int(rng.integers(PITCH[0], PITCH[1] + 1))
    return SpeechSpec(digits=digits, voice=voice, rate=rate, pitch=pitch)


class _ESpeak:
    """eSpeak NG through ctypes; each `session()` loads a fresh copy (see module docstring)."""

    _lock = threading.Lock()
    _local = threading.local()

    def __init__(self):
        import espeakng_loader  # the wheel: shared library + espeak-ng-data
        self._library_path = espeakng_loader.get_library_path()
        self._data_path = espeakng_loader.get_data_path().encode()
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._on_audio)  # kept alive while the library may call it
        with self.session():
            pass  # fails here, with a clear message, if the library or its data is unusable

    def _on_audio(self, wav, num_samples, events) -> int:
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # continue synthesis

    @contextlib.contextmanager
    def session(self) -> Iterator[Callable[..., np.ndarray]]:
        """Loads a fresh library (holding the process-wide lock); yields `synthesize`."""
        import _ctypes
        if getattr(self._local, "active", False):
            raise RuntimeError("an eSpeak session is already open in this thread; pass its synthesizer "
                               "(`synth`) instead of opening another")
        with self._lock:
            self._local.active = True
            try:
                lib = ctypes.CDLL(self._library_path)
                try:
                    yield from self._initialised(lib)
                finally:
                    _ctypes.dlclose(lib._handle)
            finally:
                self._local.active = False

    def _initialised(self, lib) -> Iterator[Callable[..., np.ndarray]]:
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self._data_path, _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({rate}) with data at {self._data_path!r}")
        self.sample_rate = rate
        lib.espeak_SetSynthCallback(self._callback)
        try:
            yield functools.partial(self._synthesize, lib)
        finally:
            lib.espeak_Terminate()

    def _synthesize(self, lib, text: str, voice: str, rate: int, pitch: int, seed: int = 0) -> np.ndarray:
        """int16 samples [N] at `self.sample_rate`."""
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {voice!r}; try e.g. 'en-us+m1' "
                             f"(accents {ACCENTS}, variants {VARIANTS})")
        lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
        lib.espeak_SetParameter(_RATE, rate, 0)
        lib.espeak_SetParameter(_PITCH, pitch, 0)
        data = text.encode()
        self._chunks = []
        err = lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        lib.espeak_Synchronize()
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed ({err}) on {text!r}")
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


_ENGINE: _ESpeak | None = None


def engine() -> _ESpeak:
    """The process's eSpeak wrapper (created on first use; cheap to keep)."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _ESpeak()
    return _ENGINE


Synthesizer = Callable[..., np.ndarray]  # (text, voice, rate, pitch, seed) -> int16 samples


@contextlib.contextmanager
def session() -> Iterator[Synthesizer]:
    """A fresh eSpeak NG for a sequence of utterances:

        with session() as synth:
            for spec in specs:
                samples, rate = speak(spec, seed, synth)

    The same sequence in a new session gives the same samples, whatever was
    spoken before in the process.
    """
    with engine().session() as synth:
        yield synth


def trim_silence(samples: np.ndarray, sample_rate: int, margin_s: float = TRIM_MARGIN_S) -> np.ndarray:
    """Drops leading/trailing samples quieter than 2% of the peak, keeping `margin_s` around speech."""
    if samples.size == 0:
        return samples
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > 0.02 * np.abs(samples.astype(np.int32)).max())
    if loud.size == 0:
        return samples[:0]
    margin = int(margin_s * sample_rate)
    return samples[max(loud[0] - margin, 0): loud[-1] + margin + 1]


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """16-bit mono PCM WAV."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(np.asarray(samples, dtype="<i2").tobytes())
    return buf.getvalue()


def speak(spec: SpeechSpec, seed: int = 0, synth: Synthesizer | None = None) -> tuple[np.ndarray, int]:
    """(int16 samples, sample rate) of `spec`, silence trimmed; in `synth`'s session, or a fresh one."""
    if synth is None:
        with session() as fresh:
            return speak(spec, seed, fresh)
    samples = synth(spec.text, spec.voice, spec.rate, spec.pitch, seed)
    if samples.size == 0:
        raise RuntimeError(f"eSpeak NG produced no audio for {spec}")
    rate = engine().sample_rate
    return trim_silence(samples, rate), rate


def generate(rng: np.random.Generator, num_digits: tuple[int, int] = NUM_DIGITS,
             synth: Synthesizer | None = None) -> tuple[np.ndarray, int, SpeechSpec]:
    """One utterance: (int16 samples, sample rate, spec); `synth` as for `speak`."""
    spec = sample_speech_spec(rng, num_digits)
    samples, rate = speak(spec, int(rng.integers(0, 2**31 - 1)), synth)
    return samples, rate, spec

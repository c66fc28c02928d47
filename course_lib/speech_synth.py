"""Text to speech with eSpeak NG, a formant synthesiser (rules and a pronunciation dictionary, no
neural network), through the library that the PyPI package ``espeakng-loader`` ships — so the same
code runs on Linux, macOS and Windows without a system install.

eSpeak NG's C API is called with ``ctypes``: initialise in "retrieval" mode (samples are handed to a
callback instead of a sound card), choose a voice ("en-us+f3": American English with the third female
variant), set speed (words per minute) and pitch (0–100), synthesise, collect the 16-bit samples. Its
output is 22,050 Hz; :func:`speak` resamples to 16 kHz for the speech models. Two calls with the same
text and voice give the same length but not bit-identical samples (the synthesiser keeps some state
between calls).
"""

from __future__ import annotations

import ctypes
import threading

import torch
import torch.nn.functional as F

from course_lib.arguments import require_int

_RETRIEVAL, _SYNCHRONOUS_FLAGS = 1, 0
_RATE, _PITCH = 1, 3  # espeak_PARAMETER values
_CHARS_UTF8, _POSITION_CHARACTER = 1, 1
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")


class _Engine:
    """One initialised library per process (eSpeak NG keeps global state); calls are serialised."""

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                          ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.sample_rate = self.lib.espeak_Initialize(_RETRIEVAL, 0, espeakng_loader.get_data_path().encode(),
                                                      _SYNCHRONOUS_FLAGS)
        if self.sample_rate <= 0:
            raise RuntimeError("eSpeak NG could not be initialised from espeakng-loader's data")
        self.samples: list[int] = []
        self.callback = _CALLBACK(self._collect)  # kept referenced: the library calls it later
        self.lib.espeak_SetSynthCallback(self.callback)
        self.lock = threading.Lock()

    def _collect(self, wav, count, events) -> int:
        if count > 0:
            self.samples.extend(wav[:count])
        return 0  # 0: go on synthesising

    def synthesise(self, text: str, voice: str, speed: int, pitch: int) -> torch.Tensor:
        with self.lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"eSpeak NG has no voice {voice!r} (try 'en-us' or 'en-us+f3')")
            self.lib.espeak_SetParameter(_RATE, speed, 0)
            self.lib.espeak_SetParameter(_PITCH, pitch, 0)
            self.samples = []
            raw = text.encode("utf-8") + b"\0"
            status = self.lib.espeak_Synth(raw, len(raw), 0, _POSITION_CHARACTER, 0, _CHARS_UTF8, None, None)
            self.lib.espeak_Synchronize()
            if status != 0:
                raise RuntimeError(f"eSpeak NG could not synthesise {text[:40]!r} (error code {status})")
            return torch.tensor(self.samples, dtype=torch.float32) / 32768.0


_engine: _Engine | None = None
_creating = threading.Lock()


def engine() -> _Engine:
    global _engine
    with _creating:  # one library state per process, even when threads ask at once
        if _engine is None:
            _engine = _Engine()
    return _engine


def speak(text: str, voice: str = "en-us", speed: int = 160, pitch: int = 50, sample_rate: int = 16_000) -> torch.Tensor:
    """``text`` spoken by eSpeak NG as float samples in [-1, 1] at ``sample_rate`` (linear resampling
    from the synthesiser's 22,050 Hz). ``speed`` in words per minute (80–450), ``pitch`` 0–100."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    speed, pitch = require_int("speed", speed, at_least=80), require_int("pitch", pitch, at_least=0)
    sample_rate = require_int("sample_rate", sample_rate, at_least=1000)
    if speed > 450 or pitch > 100:
        raise ValueError(f"speed must be 80-450 words per minute and pitch 0-100, got speed={speed}, pitch={pitch}")
    spoken = engine().synthesise(text, voice, speed, pitch)
    if sample_rate != engine().sample_rate and len(spoken):
        n = round(len(spoken) * sample_rate / engine().sample_rate)
        spoken = F.interpolate(spoken[None, None], size=n, mode="linear", align_corners=False)[0, 0]
    return spoken

"""Sound as numbers, from scratch: framing, windows, the short-time Fourier transform, the mel
filterbank and Whisper's log-mel spectrogram.

A waveform is a 1-D tensor of samples (16,000 per second for Whisper). Speech changes from one
hundredth of a second to the next, so it is cut into short overlapping frames (25 ms every 10 ms), each
frame is tapered by a window and turned into its spectrum (which frequencies it holds, how strongly).
Ears — and speech models — resolve low frequencies finely and high ones coarsely: the *mel* scale
models that, and a bank of triangular filters evenly spaced on it pools the spectrum into 80 bands.
Their logarithm is what Whisper hears. ``transformers``' ``WhisperFeatureExtractor`` is the reference
the tests compare with.
"""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from course_lib.arguments import require_int

SAMPLE_RATE = 16_000
N_FFT = 400  # 25 ms at 16 kHz
HOP = 160  # 10 ms
N_MELS = 80
CHUNK_SECONDS = 30  # Whisper always reads 30 s: shorter audio is padded with silence


# ---------------------------------------------------------------------------------------------
# the mel scale and its filterbank

def hz_to_mel(frequency: torch.Tensor | float, scale: str = "slaney") -> torch.Tensor:
    """Hertz to mels. "htk": 2595·log10(1 + f/700). "slaney" (librosa's and Whisper's default):
    linear below 1 kHz (3 mels per 200 Hz), logarithmic above (27 mels per factor 6.4)."""
    f = torch.as_tensor(frequency, dtype=torch.float64)
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + f / 700.0)
    if scale != "slaney":
        raise ValueError(f"scale must be 'slaney' or 'htk', got {scale!r}")
    linear = f / (200.0 / 3)
    logarithmic = 15.0 + torch.log(f.clamp(min=1e-10) / 1000.0) / (math.log(6.4) / 27.0)
    return torch.where(f >= 1000.0, logarithmic, linear)


def mel_to_hz(mel: torch.Tensor | float, scale: str = "slaney") -> torch.Tensor:
    """The inverse of :func:`hz_to_mel`."""
    m = torch.as_tensor(mel, dtype=torch.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    if scale != "slaney":
        raise ValueError(f"scale must be 'slaney' or 'htk', got {scale!r}")
    linear = (200.0 / 3) * m
    logarithmic = 1000.0 * torch.exp((m - 15.0) * (math.log(6.4) / 27.0))
    return torch.where(m >= 15.0, logarithmic, linear)


def mel_filterbank(n_freqs: int = N_FFT // 2 + 1, n_mels: int = N_MELS, sample_rate: int = SAMPLE_RATE,
                   f_min: float = 0.0, f_max: float | None = None, scale: str = "slaney",
                   norm: str | None = "slaney") -> torch.Tensor:
    """(n_freqs, n_mels) weights: filter m is a triangle over the FFT bins, rising from mel point m to
    m + 1 and falling to m + 2, with ``n_mels + 2`` points evenly spaced in mels from ``f_min`` to
    ``f_max`` (default: half the sample rate). ``norm="slaney"`` divides each triangle by its width in
    Hz / 2 so every band holds the same energy for white noise (Whisper uses it)."""
    n_freqs, n_mels = require_int("n_freqs", n_freqs, at_least=2), require_int("n_mels", n_mels)
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2 = {sample_rate / 2}, got f_min={f_min}, "
                         f"f_max={f_max}")
    if norm not in (None, "slaney"):
        raise ValueError(f"norm must be None or 'slaney', got {norm!r}")
    fft_freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)
    points = mel_to_hz(torch.linspace(float(hz_to_mel(f_min, scale)), float(hz_to_mel(f_max, scale)), n_mels + 2,
                                      dtype=torch.float64), scale)
    lower, centre, upper = points[:-2], points[1:-1], points[2:]
    rising = (fft_freqs[:, None] - lower) / (centre - lower)
    falling = (upper - fft_freqs[:, None]) / (upper - centre)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    if norm == "slaney":
        weights = weights * (2.0 / (upper - lower))
    return weights.float()


# ---------------------------------------------------------------------------------------------
# frames, windows, spectra

def hann_window(length: int) -> torch.Tensor:
    """The periodic Hann window 0.5 − 0.5·cos(2πn/N), n = 0…N−1 (``torch.hann_window``'s default):
    it tapers a frame to zero at its start so that cutting it out adds no false high frequencies."""
    n = torch.arange(require_int("length", length), dtype=torch.float64)
    return (0.5 - 0.5 * torch.cos(2 * math.pi * n / length)).float()


def frames(waveform: torch.Tensor, frame_length: int = N_FFT, hop: int = HOP, center: bool = True) -> torch.Tensor:
    """(…, samples) -> (…, n_frames, frame_length): frame t starts at sample t·hop. With ``center``
    the signal is first padded by frame_length // 2 on each side by reflection (as ``torch.stft``), so
    frame t is centred on sample t·hop."""
    if not isinstance(waveform, torch.Tensor) or waveform.ndim not in (1, 2) or not waveform.is_floating_point():
        got = f"{waveform.dtype} {tuple(waveform.shape)}" if isinstance(waveform, torch.Tensor) else type(waveform).__name__
        raise ValueError(f"waveform must be a float tensor (samples,) or (batch, samples), got {got}")
    frame_length, hop = require_int("frame_length", frame_length), require_int("hop", hop)
    if waveform.shape[-1] < (frame_length // 2 + 1 if center else frame_length):
        raise ValueError(f"waveform has {waveform.shape[-1]} samples, too few for frames of {frame_length}"
                         f"{' (centred frames need more than half a frame)' if center else ''}")
    x = waveform
    if center:
        x = F.pad(x[None] if x.ndim == 1 else x[:, None], (frame_length // 2, frame_length // 2), mode="reflect")
        x = x[0] if waveform.ndim == 1 else x[:, 0]
    return x.unfold(-1, frame_length, hop)


def power_spectrogram(waveform: torch.Tensor, n_fft: int = N_FFT, hop: int = HOP) -> torch.Tensor:
    """|STFT|²: (…, n_fft // 2 + 1, n_frames), equal to ``torch.stft(..., window=hann, center=True)
    .abs() ** 2``: each Hann-windowed frame's real FFT, squared magnitude."""
    windowed = frames(waveform, n_fft, hop) * hann_window(n_fft).to(waveform.device, waveform.dtype)
    return torch.fft.rfft(windowed, dim=-1).abs().pow(2).transpose(-1, -2)


def pad_or_trim(waveform: torch.Tensor, samples: int = CHUNK_SECONDS * SAMPLE_RATE) -> torch.Tensor:
    """Exactly ``samples`` long: cut, or padded with zeros (silence) at the end."""
    if waveform.shape[-1] >= samples:
        return waveform[..., :samples]
    return F.pad(waveform, (0, samples - waveform.shape[-1]))


def log_mel(waveform: torch.Tensor, n_mels: int = N_MELS, pad: bool = True) -> torch.Tensor:
    """Whisper's input, (n_mels, 3000) for a (samples,) waveform at 16 kHz (or batched): padded to 30 s,
    power spectrum (the last frame dropped, as Whisper does), mel filterbank, log10 (floored at 1e-10),
    values more than 8 below the maximum (80 dB) raised to it, then (x + 4) / 4 to bring them near
    [-1, 1]."""
    if not isinstance(waveform, torch.Tensor):
        raise TypeError(f"waveform must be a torch.Tensor of samples, got {type(waveform).__name__} "
                        "(torch.from_numpy converts an array)")
    x = pad_or_trim(waveform.float()) if pad else waveform.float()
    power = power_spectrogram(x)[..., :-1]
    mel = mel_filterbank(power.shape[-2], n_mels, f_max=8000.0).to(power.device).T @ power
    logs = mel.clamp(min=1e-10).log10()
    top = logs.amax(dim=(-2, -1), keepdim=True)
    return (torch.maximum(logs, top - 8.0) + 4.0) / 4.0


# ---------------------------------------------------------------------------------------------
# files

def read_wav(path: str | Path, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """A 16-bit PCM WAV file as float32 samples in [-1, 1], mono (channels averaged), resampled to
    ``sample_rate`` by linear interpolation when it differs (no anti-aliasing filter: fine for the 16 kHz
    files used here, a rough approximation when a file must be downsampled)."""
    with wave.open(str(path), "rb") as file:
        if file.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is read, got {8 * file.getsampwidth()}-bit samples")
        rate, channels = file.getframerate(), file.getnchannels()
        data = np.frombuffer(file.readframes(file.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
    audio = torch.from_numpy(data.reshape(-1, channels).mean(axis=1))
    if rate != sample_rate:
        n = round(len(audio) * sample_rate / rate)
        audio = F.interpolate(audio[None, None], size=n, mode="linear", align_corners=False)[0, 0]
    return audio


def write_wav(path: str | Path, waveform: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> Path:
    """Save float samples in [-1, 1] as a 16-bit mono WAV file."""
    if waveform.ndim != 1:
        raise ValueError(f"waveform must be 1-D (mono samples), got shape {tuple(waveform.shape)}")
    pcm = (waveform.detach().cpu().float().clamp(-1, 1) * 32767).round().to(torch.int16).numpy()
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(sample_rate)
        file.writeframes(pcm.astype("<i2").tobytes())
    return Path(path)

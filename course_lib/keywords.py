"""A keyword spotter trained here: spoken digits made with eSpeak NG (many voices, speeds, pitches and
noise levels), held-out voices for testing, and a small CNN on log-mel spectrograms.

A real keyword-spotting set (Google's Speech Commands: 105,000 one-second clips from 2,618 people)
cannot be downloaded here, so the clips are synthesised. Synthetic speech is cleaner and more regular
than people's, so the accuracy on unseen *synthetic* voices says how well the model generalises across
voices of the same synthesiser, not across people.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import torch
from torch import nn

from course_lib import audio
from course_lib.arguments import require_int
from course_lib.speech_synth import speak

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CLIP = audio.SAMPLE_RATE  # one second


@dataclass
class SpokenDigits:
    """Waveforms (N, 16000), labels (N,), and for each clip its voice, speed, pitch and noise level."""

    waveforms: torch.Tensor
    labels: torch.Tensor
    voices: list[str]
    speeds: list[int]
    pitches: list[int]
    noise: list[float]

    def select(self, keep: torch.Tensor) -> "SpokenDigits":
        idx = keep.nonzero().flatten().tolist() if keep.dtype == torch.bool else keep.tolist()
        return SpokenDigits(self.waveforms[idx], self.labels[idx], [self.voices[i] for i in idx],
                            [self.speeds[i] for i in idx], [self.pitches[i] for i in idx], [self.noise[i] for i in idx])


def fit_to_clip(waveform: torch.Tensor, length: int = CLIP) -> torch.Tensor:
    """Centre the sound in a clip of ``length`` samples: padded with silence on both sides, or its
    middle kept when longer."""
    if waveform.ndim != 1:
        raise ValueError(f"waveform must be 1-D (samples,), got shape {tuple(waveform.shape)}")
    n = waveform.shape[-1]
    if n >= length:
        start = (n - length) // 2
        return waveform[start:start + length]
    left = (length - n) // 2
    return torch.nn.functional.pad(waveform, (left, length - n - left))


def make_spoken_digits(voices: list[str], speeds: tuple[int, ...] = (130, 175), pitches: tuple[int, ...] = (35, 65),
                       noise: tuple[float, ...] = (0.0, 0.02), seed: int = 0) -> SpokenDigits:
    """Every digit word in every combination of voice, speed, pitch and noise level (Gaussian noise of
    that standard deviation, seeded), each centred in one second."""
    if not voices:
        raise ValueError("voices must name at least one eSpeak NG voice, e.g. ['en-us']")
    g = torch.Generator().manual_seed(seed)
    clips, labels, meta = [], [], []
    for voice, speed, pitch, level in itertools.product(voices, speeds, pitches, noise):
        for label, word in enumerate(DIGITS):
            clip = fit_to_clip(speak(word, voice, speed, pitch))
            if level:
                clip = clip + level * torch.randn(clip.shape, generator=g)
            clips.append(clip.clamp(-1, 1))
            labels.append(label)
            meta.append((voice, speed, pitch, level))
    voices_, speeds_, pitches_, noise_ = (list(column) for column in zip(*meta))
    return SpokenDigits(torch.stack(clips), torch.tensor(labels), voices_, speeds_, pitches_, noise_)


def features(waveforms: torch.Tensor, n_mels: int = 40) -> torch.Tensor:
    """Log-mel spectrograms (N, 1, n_mels, 100) of one-second clips, each scaled like Whisper's input."""
    return audio.log_mel(waveforms, n_mels=n_mels, pad=False)[:, None]


class KeywordCNN(nn.Module):
    """Three 3×3 convolution stages (batch norm, ReLU, 2×2 max-pool) over the (mel, time) picture,
    then the average over what is left and a linear layer: the average makes it largely insensitive to
    where in the second the word is (padding and pooling keep it from being exact)."""

    def __init__(self, classes: int = 10, channels: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        layers, previous = [], 1
        for width in channels:
            width = require_int("channels", width)
            layers += [nn.Conv2d(previous, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                       nn.MaxPool2d(2)]
            previous = width
        self.stages = nn.Sequential(*layers)
        self.head = nn.Linear(previous, require_int("classes", classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(x).mean(dim=(2, 3)))


_READINGS = {str(i): i for i in range(10)} | {word: i for i, word in enumerate(DIGITS)} | {
    "oh": 0, "o": 0, "won": 1, "to": 2, "too": 2, "for": 4, "ate": 8}  # homophones a recogniser may write


def digit_from_text(text: str) -> int | None:
    """The digit a transcript names when the transcript is that one word or numeral and nothing else
    ("Seven.", "7", "Two!" and the homophone "to" as a whole transcript); None otherwise ("Thanks for
    watching!", "seven apples", "one two")."""
    words = re.findall(r"[a-z]+|\d+", text.lower())
    return _READINGS.get(words[0]) if len(words) == 1 else None

"""Real speech for chapter 15, offline: five LibriVox recordings of *Sense and Sensibility* with their
transcripts, from Debian's ``pocketsphinx-testdata``; without that package, sentences synthesised with
eSpeak NG stand in (and say so)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from course_lib import audio

LIBRIVOX_DIR = Path("/usr/share/pocketsphinx/test/data/librivox")
FALLBACK_SENTENCES = (
    "the quick brown fox jumps over the lazy dog",
    "speech recognition turns sound into text one token at a time",
    "she sells sea shells by the sea shore",
    "a small model can still transcribe clear speech",
    "the encoder listens and the decoder writes",
)


@dataclass
class Clip:
    name: str
    waveform: torch.Tensor  # 16 kHz float samples
    transcript: str  # lower case, no punctuation

    @property
    def seconds(self) -> float:
        return len(self.waveform) / audio.SAMPLE_RATE


def read_transcripts(folder: Path) -> dict[str, str]:
    """``<s> words </s> (clip-name)`` lines of a Sphinx transcription file -> {clip name: words}."""
    found = {}
    for line in (folder / "transcription").read_text().splitlines():
        match = re.match(r"\s*<s>(.*)</s>\s*\((.+)\)\s*$", line)
        if match:
            found[match.group(2).strip()] = " ".join(match.group(1).split())
    return found


def real_speech(limit: int | None = None, folder: Path = LIBRIVOX_DIR) -> tuple[list[Clip], str]:
    """The recordings with their transcripts, and where they came from; synthesised sentences (eSpeak NG's
    British "en-gb-x-rp" voice at 140 words per minute) when the Debian package is missing."""
    if (folder / "transcription").is_file():
        transcripts = read_transcripts(folder)
        clips = [Clip(name, audio.read_wav(folder / f"{name}.wav"), text) for name, text in sorted(transcripts.items())
                 if (folder / f"{name}.wav").is_file()]
        return clips[:limit], "LibriVox recordings (Debian package pocketsphinx-testdata)"
    from course_lib.speech_synth import speak

    clips = [Clip(f"synthesised-{i}", speak(text, "en-gb-x-rp", 140), text) for i, text in enumerate(FALLBACK_SENTENCES)]
    return clips[:limit], ("synthesised sentences: pocketsphinx-testdata is not installed (apt install "
                           "pocketsphinx-testdata), so eSpeak NG's voice stands in for real speech — far easier")

"""Pictures for chapter 15: waveform, spectrogram, mel spectrogram, and where each word of a
transcript looked in the audio (Whisper's cross-attention)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch

from course_lib import audio


def plot_sound(waveform: torch.Tensor, title: str = "", sample_rate: int = audio.SAMPLE_RATE, n_mels: int = 80):
    """Three views of one sound, sharing the time axis: the samples, the power spectrogram in decibels
    (linear frequency), and the log-mel spectrogram Whisper reads."""
    seconds = len(waveform) / sample_rate
    fig, axes = plt.subplots(3, 1, figsize=(9, 6), sharex=True)
    axes[0].plot(torch.arange(len(waveform)) / sample_rate, waveform, linewidth=0.4)
    axes[0].set_ylabel("amplitude")
    power = audio.power_spectrogram(waveform)
    decibels = 10 * power.clamp(min=1e-10).log10()
    axes[1].imshow(decibels, origin="lower", aspect="auto", cmap="magma", vmin=float(decibels.max()) - 80,
                   extent=(0, seconds, 0, sample_rate / 2000))
    axes[1].set_ylabel("frequency (kHz)")
    mel = audio.log_mel(waveform, n_mels=n_mels, pad=False)
    axes[2].imshow(mel, origin="lower", aspect="auto", cmap="magma", extent=(0, seconds, 0, n_mels))
    axes[2].set_ylabel("mel band")
    axes[2].set_xlabel("time (s)")
    if title:
        axes[0].set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def cross_attention_map(cross_weights: Sequence[torch.Tensor], heads: Sequence[tuple[int, int]], tokens: int,
                        frames: int) -> torch.Tensor:
    """(tokens, frames): for each generated token, the cross-attention of the chosen (layer, head)
    pairs to the audio frames (20 ms each), averaged, each row scaled to a maximum of 1.
    ``cross_weights`` are the steps recorded by ``whisper_model.greedy(..., need_weights=True)``. Row k
    is the step that *chose* token k (its query is the token before it), the convention of OpenAI's
    word-timing code."""
    steps = torch.cat(list(cross_weights), dim=3)[:, 0]  # (layers, heads, positions, 1500)
    chosen = torch.stack([steps[layer, head] for layer, head in heads]).mean(0)  # (positions, 1500)
    if not 0 <= tokens < chosen.shape[0]:
        raise ValueError(f"tokens must be between 0 and {chosen.shape[0] - 1} for {chosen.shape[0]} recorded "
                         f"positions, got {tokens}")
    rows = chosen[chosen.shape[0] - 1 - tokens:chosen.shape[0] - 1, :frames]
    return rows / rows.amax(dim=1, keepdim=True).clamp(min=1e-12)


def plot_cross_attention(weights: torch.Tensor, labels: Sequence[str], title: str = ""):
    """Rows: the transcript's tokens; columns: time in the audio (20 ms per frame)."""
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(labels) + 1.2))
    ax.imshow(weights, aspect="auto", cmap="viridis", extent=(0, weights.shape[1] * 0.02, len(labels) - 0.5, -0.5))
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("time in the recording (s)")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig

"""course_lib.audio against torch.stft and transformers' WhisperFeatureExtractor (the reference of
Whisper's input features)."""

import math

import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor
from transformers.audio_utils import hertz_to_mel, mel_filter_bank, mel_to_hertz

from course_lib import audio

LIBRIVOX = "/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav"


def _tone(seconds=1.0, frequency=440.0, rate=16_000):
    t = torch.arange(int(seconds * rate)) / rate
    return 0.5 * torch.sin(2 * math.pi * frequency * t)


@pytest.mark.parametrize("scale", ["slaney", "htk"])
def test_mel_scale_matches_transformers_and_inverts(scale):
    hz = np.array([0.0, 100.0, 999.0, 1000.0, 1001.0, 4000.0, 8000.0])
    np.testing.assert_allclose(audio.hz_to_mel(torch.tensor(hz), scale).numpy(), hertz_to_mel(hz, scale), rtol=1e-9,
                               atol=1e-9)
    mels = audio.hz_to_mel(torch.tensor(hz), scale)
    np.testing.assert_allclose(audio.mel_to_hz(mels, scale).numpy(), hz, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(audio.mel_to_hz(mels, scale).numpy(), mel_to_hertz(mels.numpy(), scale), rtol=1e-9)


@pytest.mark.parametrize("n_mels,f_max,norm", [(80, 8000.0, "slaney"), (40, 4000.0, None), (128, 8000.0, "slaney")])
def test_mel_filterbank_matches_transformers(n_mels, f_max, norm):
    ours = audio.mel_filterbank(201, n_mels, 16_000, 0.0, f_max, norm=norm).numpy()
    theirs = mel_filter_bank(num_frequency_bins=201, num_mel_filters=n_mels, min_frequency=0.0, max_frequency=f_max,
                             sampling_rate=16_000, norm=norm, mel_scale="slaney")
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-8)


def test_each_mel_filter_is_a_triangle_that_peaks_at_its_centre():
    bank = audio.mel_filterbank(201, 10, norm=None)
    assert bank.shape == (201, 10) and (bank >= 0).all()
    assert torch.allclose(bank.max(dim=0).values, torch.ones(10), atol=0.2)  # the peak falls between bins
    peaks = bank.argmax(dim=0)
    assert (peaks[1:] > peaks[:-1]).all()  # centres rise with the filter number
    assert (peaks[1:] - peaks[:-1])[-1] > (peaks[1:] - peaks[:-1])[0]  # and spread out at high frequencies


def test_filterbank_refuses_bad_ranges():
    with pytest.raises(ValueError, match="f_max"):
        audio.mel_filterbank(201, 80, 16_000, 0.0, 9000.0)
    with pytest.raises(ValueError, match="norm"):
        audio.mel_filterbank(201, 80, norm="area")
    with pytest.raises(ValueError, match="scale"):
        audio.hz_to_mel(100.0, "mel")


def test_hann_window_is_torchs_periodic_window():
    torch.testing.assert_close(audio.hann_window(400), torch.hann_window(400), atol=3e-7, rtol=0)  # float32 rounding


def test_frames_center_and_hop():
    x = torch.arange(10, dtype=torch.float32)
    plain = audio.frames(x, 4, 2, center=False)
    assert plain.shape == (4, 4) and plain[1].tolist() == [2, 3, 4, 5]
    centred = audio.frames(x, 4, 2, center=True)
    assert centred.shape == (6, 4) and centred[0].tolist() == [2, 1, 0, 1]  # reflection at the start
    with pytest.raises(ValueError, match="waveform must be a float tensor"):
        audio.frames(torch.arange(10), 4, 2)


def test_power_spectrogram_equals_torch_stft():
    x = torch.randn(2, 4000, generator=torch.Generator().manual_seed(0))
    ours = audio.power_spectrogram(x)
    theirs = torch.stft(x, 400, 160, window=torch.hann_window(400), return_complex=True).abs() ** 2
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-3)  # float32 FFTs of values up to ~1e4


def test_a_tone_lands_in_the_right_frequency_bin():
    power = audio.power_spectrogram(_tone(frequency=1000.0))
    assert power.mean(dim=1).argmax().item() == 25  # 1000 Hz / (16000 Hz / 400 points)


def test_log_mel_equals_whisper_feature_extractor_on_a_tone():
    tone = _tone(2.0)
    theirs = WhisperFeatureExtractor()(tone.numpy(), sampling_rate=16_000, return_tensors="np").input_features[0]
    ours = audio.log_mel(tone)
    assert ours.shape == (80, 3000)
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-4, rtol=0)


@pytest.mark.skipif(not __import__("os").path.exists(LIBRIVOX), reason="Debian's pocketsphinx-testdata is not installed")
def test_log_mel_equals_whisper_feature_extractor_on_real_speech():
    speech = audio.read_wav(LIBRIVOX)
    assert speech.dtype == torch.float32 and len(speech) == 113_600 and speech.abs().max() <= 1
    theirs = WhisperFeatureExtractor()(speech.numpy(), sampling_rate=16_000, return_tensors="np").input_features[0]
    np.testing.assert_allclose(audio.log_mel(speech).numpy(), theirs, atol=1e-4, rtol=0)


def test_log_mel_batches_and_pads():
    batch = torch.stack([_tone(1.0), _tone(1.0, 880.0)])
    out = audio.log_mel(batch)
    assert out.shape == (2, 80, 3000)
    torch.testing.assert_close(out[1], audio.log_mel(batch[1]))
    assert audio.pad_or_trim(torch.ones(10), 4).tolist() == [1, 1, 1, 1]
    assert audio.pad_or_trim(torch.ones(2), 4).tolist() == [1, 1, 0, 0]


def test_wav_round_trip_and_resampling(tmp_path):
    tone = _tone(0.5)
    path = audio.write_wav(tmp_path / "tone.wav", tone)
    back = audio.read_wav(path)
    torch.testing.assert_close(back, tone, atol=1 / 32768 + 1e-6, rtol=0)
    audio.write_wav(tmp_path / "8k.wav", _tone(0.5, rate=8000), sample_rate=8000)
    assert len(audio.read_wav(tmp_path / "8k.wav")) == 8000  # 0.5 s at 16 kHz


def test_too_short_or_wrong_inputs_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="too few for frames of 400"):
        audio.frames(torch.zeros(150))
    with pytest.raises(TypeError, match="torch.from_numpy"):
        audio.log_mel(np.zeros(16_000, dtype=np.float32))
    with pytest.raises(ValueError, match="1-D"):
        audio.write_wav(tmp_path / "x.wav", torch.zeros(2, 100))

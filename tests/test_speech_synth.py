"""course_lib.speech_synth (eSpeak NG through espeakng-loader's library) and course_lib.keywords."""

import pytest
import torch

from course_lib import keywords as K
from course_lib import speech_synth as T


def test_speech_is_16khz_audio_of_a_plausible_length():
    short, long = T.speak("seven"), T.speak("seven hundred and seventy seven")
    assert short.dtype == torch.float32 and 0.2 < len(short) / 16_000 < 1.2
    assert len(long) > 2 * len(short) and 0.05 < short.abs().max() <= 1
    assert abs(len(T.speak("seven")) - len(short)) < 0.01 * len(short)  # the same length again (not bit-identical)


def test_speed_pitch_and_voice_change_the_sound():
    base = T.speak("four", "en-us", 160, 50)
    assert len(T.speak("four", "en-us", 300, 50)) < len(base)
    assert not torch.equal(T.speak("four", "en-us", 160, 90)[:2000], base[:2000])
    assert not torch.equal(T.speak("four", "en-us+f3", 160, 50)[:2000], base[:2000])


def test_every_listed_accent_and_variant_exists():
    for accent in T.ACCENTS:
        assert len(T.speak("one", f"{accent}+{T.VARIANTS[0]}")) > 0
    for variant in T.VARIANTS:
        assert len(T.speak("one", f"en-us+{variant}")) > 0


@pytest.mark.parametrize("kwargs,message", [({"text": ""}, "non-empty"), ({"text": "a", "voice": "xx-nope"}, "no voice"),
                                            ({"text": "a", "speed": 20}, "speed"), ({"text": "a", "pitch": 101}, "pitch")])
def test_bad_requests_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        T.speak(**kwargs)


def test_spoken_digits_are_centred_labelled_and_noisy_on_request():
    data = K.make_spoken_digits(["en-us", "en-us+f2"], speeds=(150,), pitches=(50,), noise=(0.0, 0.05), seed=1)
    assert data.waveforms.shape == (40, 16_000) and data.labels.tolist() == list(range(10)) * 4
    assert data.voices[:10] == ["en-us"] * 10 and sorted(set(data.noise)) == [0.0, 0.05]
    quiet = data.waveforms[0]
    assert quiet[:1000].abs().max() < 1e-3 and quiet[7000:9000].abs().max() > 0.05  # silence around the word
    assert data.waveforms[10][:1000].std() > 0.03  # the noisy copy
    subset = data.select(torch.arange(5))
    assert subset.labels.tolist() == [0, 1, 2, 3, 4] and len(subset.voices) == 5


def test_fit_to_clip_pads_or_crops_around_the_centre():
    assert K.fit_to_clip(torch.ones(4), 8).tolist() == [0, 0, 1, 1, 1, 1, 0, 0]
    assert K.fit_to_clip(torch.arange(10.0), 4).tolist() == [3, 4, 5, 6]


def test_features_and_model_shapes():
    x = K.features(torch.randn(3, 16_000) * 0.1)
    assert x.shape == (3, 1, 40, 100)
    assert K.KeywordCNN()(x).shape == (3, 10)


@pytest.mark.parametrize("text,digit", [(" Seven.", 7), ("7", 7), ("zero", 0), ("Oh.", 0), ("Two!", 2), ("to", 2),
                                        ("Seven seven.", None), ("hello", None), ("one two", None), ("", None),
                                        ("Thanks for watching!", None), ("I want to go.", None), ("Seven apples", None),
                                        ("77", None)])
def test_digit_from_a_transcript(text, digit):
    assert K.digit_from_text(text) == digit


def test_spoken_digits_need_a_voice_and_clips_must_be_1d():
    with pytest.raises(ValueError, match="at least one eSpeak NG voice"):
        K.make_spoken_digits([])
    with pytest.raises(ValueError, match="1-D"):
        K.fit_to_clip(torch.zeros(2, 100))

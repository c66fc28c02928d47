"""course_lib.seq2seq: masks (causal target, padded source), teacher forcing, greedy vs beam search, and
that it learns a small task."""

import torch

from course_lib import seq2seq as S


def _model(vocab=12, seed=0):
    torch.manual_seed(seed)
    return S.Seq2Seq(vocab, d_model=32, heads=4, layers=2, ffn=64, max_len=16).eval()


def test_vocab_round_trip_and_unknown_characters():
    vocab = S.CharVocab(["abc", "cab"])
    assert len(vocab) == 6 and vocab.decode(vocab.encode("cab")) == "cab"
    assert vocab.decode([S.BOS] + vocab.encode("ab") + [S.EOS, S.PAD]) == "ab"
    try:
        vocab.encode("abz")
    except ValueError as error:
        assert "'z'" in str(error)
    else:
        raise AssertionError("an unknown character must be refused")


def test_the_decoder_cannot_see_future_target_characters():
    model, source = _model(), torch.tensor([[3, 4, 5, 6]])
    a, b = torch.tensor([[1, 7, 8, 9]]), torch.tensor([[1, 7, 8, 10]])
    with torch.no_grad():
        torch.testing.assert_close(model(source, a)[:, :3], model(source, b)[:, :3])
        assert not torch.allclose(model(source, a)[:, 3], model(source, b)[:, 3])


def test_source_padding_changes_nothing():
    model = _model()
    target = torch.tensor([[1, 7, 8]])
    with torch.no_grad():
        short = model(torch.tensor([[3, 4, 5]]), target)
        padded = model(torch.tensor([[3, 4, 5, S.PAD, S.PAD]]), target)
    torch.testing.assert_close(short, padded, atol=1e-6, rtol=1e-6)


def test_teacher_forcing_shifts_the_target_by_one():
    source, decoder_in, labels = S.teacher_forcing_batch([[3, 4], [5]], [[6, 7, 8], [9]])
    assert decoder_in.tolist() == [[S.BOS, 6, 7, 8], [S.BOS, 9, S.PAD, S.PAD]]
    assert labels.tolist() == [[6, 7, 8, S.EOS], [9, S.EOS, S.PAD, S.PAD]]
    assert source.tolist() == [[3, 4], [5, S.PAD]]


def _score(model, source, output):
    with torch.no_grad():
        memory, mask = model.encode(torch.tensor([source]))
        logp = model.decode(torch.tensor([[S.BOS] + output]), memory, mask).log_softmax(-1)[0]
    targets = output + [S.EOS]
    return sum(float(logp[i, t]) for i, t in enumerate(targets))


def test_beam_of_one_is_greedy_and_a_wider_beam_never_scores_worse():
    for seed in range(4):
        model = _model(seed=seed)
        source = [3 + seed, 4, 5]
        greedy = S.greedy_decode(model, source, max_len=8)
        assert S.beam_search(model, source, beam=1, max_len=8) == greedy
        wide = S.beam_search(model, source, beam=4, max_len=8)
        if len(greedy) < 8 and len(wide) < 8:  # both finished: compare their full log-probabilities
            assert _score(model, source, wide) >= _score(model, source, greedy) - 1e-5


def test_it_learns_to_reverse_short_strings():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    pairs = []
    for _ in range(400):
        s = torch.randint(3, 8, (int(torch.randint(2, 5, (1,), generator=g)),), generator=g).tolist()
        pairs.append((s, s[::-1]))
    model = S.Seq2Seq(8, d_model=48, heads=4, layers=2, ffn=96, max_len=12)
    history = S.train(model, pairs, steps=250, batch_size=32, lr=3e-3, log_every=50)
    assert history.loss[-1] < 0.2 * history.loss[0]
    assert S.exact_match(model, pairs[:50]) >= 0.9

"""course_lib.sampling: every filter equals the matching transformers logits processor (exactly:
rtol = atol = 0, and the same -inf positions), the chain equals LogitsProcessorList in generate's
order, and next_token is greedy, reproducible and only picks tokens that survived the filters."""

import pytest
import torch
from torch.testing import assert_close
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from course_lib.sampling import (
    SamplingConfig,
    apply_temperature,
    next_token,
    process_logits,
    repetition_penalty,
    top_k_filter,
    top_p_filter,
)

VOCAB = 50
BATCHES = (1, 3, 8)
EXACT = {"rtol": 0.0, "atol": 0.0}  # same operations in the same order: bit-identical results


def _logits(batch: int, seed: int = 0, ties: bool = False) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(batch, VOCAB, generator=generator)
    if ties:  # round to a coarse grid: many equal logits, also at the top-k and top-p boundaries
        logits = logits.round()
    return logits


def _ids(batch: int, n: int = 12, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, n), generator=generator)
    ids[:, -3:] = ids[:, :3]  # repeated ids: each token is penalised once only
    return ids


def _same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert torch.equal(torch.isneginf(ours), torch.isneginf(theirs))
    assert_close(ours, theirs, **EXACT)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("temperature", [0.05, 0.7, 1.0, 2.5])
def test_temperature_equals_transformers(batch, temperature):
    logits = _logits(batch)
    _same(apply_temperature(logits, temperature), TemperatureLogitsWarper(temperature)(_ids(batch), logits.clone()))


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("k", [1, 2, 5, VOCAB - 1, VOCAB, VOCAB + 7])
def test_top_k_equals_transformers(batch, ties, k):
    logits = _logits(batch, ties=ties)
    _same(top_k_filter(logits, k), TopKLogitsWarper(k)(_ids(batch), logits.clone()))


def test_top_k_keeps_ties_and_everything_when_k_exceeds_the_vocabulary():
    logits = torch.tensor([[3.0, 1.0, 3.0, 2.0, 3.0]])
    assert torch.isfinite(top_k_filter(logits, 2)).tolist() == [[True, False, True, False, True]]
    assert torch.equal(top_k_filter(logits, 100), logits)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("p", [1e-6, 0.1, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("min_tokens_to_keep", [1, 3])
def test_top_p_equals_transformers(batch, ties, p, min_tokens_to_keep):
    logits = _logits(batch, ties=ties)
    theirs = TopPLogitsWarper(p, min_tokens_to_keep=min_tokens_to_keep)(_ids(batch), logits.clone())
    _same(top_p_filter(logits, p, min_tokens_to_keep), theirs)


def test_a_tiny_top_p_keeps_only_the_most_likely_token():
    logits = _logits(4)
    kept = torch.isfinite(top_p_filter(logits, 1e-6))
    assert kept.sum(dim=-1).tolist() == [1, 1, 1, 1]
    assert torch.equal(kept.float().argmax(dim=-1), logits.argmax(dim=-1))


def test_top_p_one_returns_the_logits_unchanged():
    logits = _logits(3)
    assert top_p_filter(logits, 1.0) is logits


def test_top_p_keeps_the_smallest_set_of_likeliest_tokens_reaching_p():
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log()  # probabilities, away from the exact boundaries
    for p, kept in [(0.4, 1), (0.75, 2), (0.85, 3)]:
        assert torch.isfinite(top_p_filter(logits, p)).sum().item() == kept
    for batch in BATCHES:  # the same rule, from the definition, on random logits
        logits = _logits(batch, seed=5)
        probs = logits.softmax(dim=-1).double()
        order = probs.argsort(dim=-1, descending=True)
        reach = probs.gather(1, order).cumsum(dim=-1) >= 0.9
        counts = reach.int().argmax(dim=-1) + 1  # first prefix reaching p
        assert torch.isfinite(top_p_filter(logits, 0.9)).sum(dim=-1).tolist() == counts.tolist()


def test_top_p_at_the_exact_boundary_follows_transformers():
    uniform = torch.zeros(1, 4)  # probabilities exactly 1/4: three reach p = 0.75, two reach p = 0.5
    for p, kept in [(0.75, 3), (0.5, 2)]:
        ours = top_p_filter(uniform, p)
        _same(ours, TopPLogitsWarper(p)(None, uniform.clone()))
        assert torch.isfinite(ours).sum().item() == kept  # four tied tokens, split by the sort
    rounded = torch.tensor([[0.65, 0.25, 0.1]]).log()  # 0.65 + 0.25 reach 0.9, but float32 rounding keeps the 0.1
    ours = top_p_filter(rounded, 0.9)
    _same(ours, TopPLogitsWarper(0.9)(None, rounded.clone()))
    assert torch.isfinite(ours).sum().item() == 3


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("penalty", [0.5, 0.9, 1.0, 1.2, 3.0])
def test_repetition_penalty_equals_transformers(batch, penalty):
    logits, ids = _logits(batch), _ids(batch)
    _same(repetition_penalty(logits, ids, penalty), RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone()))


def test_repetition_penalty_divides_positive_multiplies_negative_once_per_token():
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0]])
    ids = torch.tensor([[0, 1, 0, 0, 1]])  # 0 three times, 1 twice, 2 and 3 never
    assert repetition_penalty(logits, ids, 2.0).tolist() == [[1.0, -4.0, 2.0, -2.0]]
    assert repetition_penalty(logits, ids, 0.5).tolist() == [[4.0, -1.0, 2.0, -2.0]]
    assert torch.equal(repetition_penalty(logits, ids[:, :0], 2.0), logits)  # nothing seen yet


CONFIGS = [
    SamplingConfig(),
    SamplingConfig(temperature=0.7, top_k=10),
    SamplingConfig(temperature=1.3, top_p=0.9),
    SamplingConfig(top_k=5, top_p=0.8, repetition_penalty=1.3),
    SamplingConfig(temperature=0.5, top_k=VOCAB + 1, top_p=0.999, repetition_penalty=0.8),
    SamplingConfig(top_k=1, repetition_penalty=2.0),
]


def _transformers_chain(config: SamplingConfig) -> LogitsProcessorList:
    """The processors transformers' generate (_get_logits_processor) builds for the config, in its order."""
    chain = LogitsProcessorList()
    if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
        chain.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
    if config.do_sample:
        if config.temperature != 1.0:
            chain.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k is not None:
            chain.append(TopKLogitsWarper(config.top_k))
        if config.top_p is not None and config.top_p < 1.0:
            chain.append(TopPLogitsWarper(config.top_p))
    return chain


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_process_logits_equals_the_transformers_chain(batch, config):
    logits, ids = _logits(batch, seed=2), _ids(batch)
    _same(process_logits(logits, ids, config), _transformers_chain(config)(ids, logits.clone()))


def test_greedy_is_argmax_after_the_repetition_penalty():
    logits, ids = _logits(8, seed=3), _ids(8)
    assert torch.equal(next_token(logits, ids, SamplingConfig.greedy()), logits.argmax(dim=-1))
    penalised = repetition_penalty(logits, ids, 5.0)
    assert torch.equal(next_token(logits, ids, SamplingConfig.greedy(5.0)), penalised.argmax(dim=-1))
    assert SamplingConfig.greedy().do_sample is False


def test_sampling_is_reproducible_with_a_seeded_generator():
    logits, ids = _logits(8, seed=4), _ids(8)
    config = SamplingConfig(temperature=0.8, top_p=0.95, repetition_penalty=1.2)
    draws = [next_token(logits, ids, config, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert draws[0].shape == (8,) and draws[0].dtype == torch.long
    assert torch.equal(draws[0], draws[1])


def test_top_k_sampling_matches_the_renormalised_probabilities():
    n = 2000
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.9, 0.2, -1.0]])
    config = SamplingConfig(top_k=3)
    tokens = next_token(logits.expand(n, -1), None, config, torch.Generator().manual_seed(0))
    assert set(tokens.tolist()) <= {0, 1, 2}  # only tokens that survived the filter
    expected = n * logits[0, :3].softmax(dim=-1)
    observed = torch.bincount(tokens, minlength=3)[:3].float()
    chi_square = ((observed - expected) ** 2 / expected).sum().item()
    assert chi_square < 13.8  # 2 degrees of freedom: exceeded with probability 0.001


@pytest.mark.parametrize("call, match", [
    (lambda: apply_temperature(_logits(2), 0.0), r"temperature must be a finite float > 0, got 0\.0"),
    (lambda: apply_temperature(_logits(2), -1), r"temperature must be .*> 0, got -1"),
    (lambda: top_k_filter(_logits(2), 0), r"k must be an int >= 1, got 0"),
    (lambda: top_k_filter(_logits(2), 2.0), r"k must be an int >= 1, got 2\.0"),
    (lambda: top_p_filter(_logits(2), 0.0), r"p must be a float in \(0, 1\], got 0\.0"),
    (lambda: top_p_filter(_logits(2), 1.5), r"p must be a float in \(0, 1\], got 1\.5"),
    (lambda: top_p_filter(_logits(2), 0.5, 0), r"min_tokens_to_keep must be an int >= 1, got 0"),
    (lambda: repetition_penalty(_logits(2), _ids(2), 0.0), r"penalty must be a finite float > 0, got 0\.0"),
    (lambda: repetition_penalty(_logits(2), _ids(3), 1.2), r"previous_ids must be a \(batch, n\) integer tensor"),
    (lambda: repetition_penalty(_logits(2), -_ids(2) - 1, 1.2), r"previous_ids must be token ids >= 0"),
    (lambda: top_k_filter(torch.zeros(VOCAB), 3), r"logits must be a 2-D \(batch, vocab\).*got torch.float32 \(50,\)"),
    (lambda: apply_temperature(torch.zeros(2, 3, VOCAB), 1.0), r"logits must be a 2-D \(batch, vocab\)"),
    (lambda: top_p_filter(torch.zeros(2, VOCAB, dtype=torch.long), 0.5), r"logits must be a 2-D .*floating"),
    (lambda: SamplingConfig(temperature=0), r"temperature must be a finite float > 0, got 0"),
    (lambda: SamplingConfig(top_k=0), r"top_k must be an int >= 1 or None, got 0"),
    (lambda: SamplingConfig(top_p=0.0), r"top_p must be a float in \(0, 1\], got 0\.0"),
    (lambda: SamplingConfig(top_p=1.01), r"top_p must be a float in \(0, 1\], got 1\.01"),
    (lambda: SamplingConfig(repetition_penalty=-1.0), r"repetition_penalty must be a finite float > 0, got -1\.0"),
    (lambda: SamplingConfig(do_sample="yes"), r"do_sample must be a bool, got 'yes'"),
    (lambda: process_logits(_logits(2), None, SamplingConfig(repetition_penalty=1.2)), r"previous_ids must be given"),
])
def test_bad_input_is_refused_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_logits_that_are_not_a_tensor_are_a_type_error():
    with pytest.raises(TypeError, match=r"logits must be a torch.Tensor of shape \(batch, vocab\), got list"):
        top_k_filter([[1.0, 2.0]], 1)



def test_bf16_logits_are_sampled_as_their_float32_values():
    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    config = SamplingConfig(temperature=0.9, top_p=0.8)
    for seed in range(5):
        got = next_token(logits, None, config, torch.Generator().manual_seed(seed))
        assert torch.equal(got, next_token(logits.float(), None, config, torch.Generator().manual_seed(seed)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_cpu_generator_with_gpu_logits_gives_the_cpu_tokens():
    logits = torch.randn(3, 20, generator=torch.Generator().manual_seed(0))
    config = SamplingConfig(temperature=0.9)
    expected = next_token(logits, None, config, torch.Generator().manual_seed(5))
    got = next_token(logits.cuda(), None, config, torch.Generator().manual_seed(5))
    assert got.device.type == "cuda" and torch.equal(got.cpu(), expected)

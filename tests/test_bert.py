"""course_lib.bert against transformers.BertModel: the bundled checkpoint and random configs."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig as HFBertConfig
from transformers import BertModel as HFBertModel

from course_lib import bert
from course_lib.pretrained import bundled_model_path, load_model, load_tokenizer

SENTENCES = [
    "A gripping, beautifully shot film.",
    "Dull.",
    "The plot makes no sense at all, and the actors seem bored throughout the whole two hours.",
    "Naïve? Maybe. But I loved every minute of it!",
]
TOL = dict(rtol=1e-5, atol=1e-5)  # float32, the same operations in a different order


@pytest.fixture(scope="module")
def bundled():
    folder = bundled_model_path()
    return bert.from_pretrained(folder), load_model().eval(), load_tokenizer()


def _compare(ours, theirs, batch, output_attentions=False):
    with torch.no_grad():
        a = ours(**batch, output_attentions=output_attentions)
        b = theirs(**batch, output_attentions=output_attentions)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(a.last_hidden_state[real], b.last_hidden_state[real], **TOL)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, **TOL)
    return a, b


@pytest.mark.parametrize("output_attentions", [False, True])
def test_bundled_weights_give_the_same_outputs_as_transformers(bundled, output_attentions):
    ours, theirs, tokenizer = bundled
    batch = dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    assert batch["attention_mask"].min() == 0, "the batch must contain padding"
    a, b = _compare(ours, theirs, batch, output_attentions)
    if output_attentions:
        length = batch["input_ids"].shape[1]
        assert len(a.attentions) == 6 and a.attentions[0].shape == (4, 12, length, length)
        for mine, reference in zip(a.attentions, b.attentions):
            real = batch["attention_mask"].bool()[:, None, :, None]  # rows of real queries
            torch.testing.assert_close(mine * real, reference * real, **TOL)


def test_segments_are_used(bundled):
    ours, theirs, tokenizer = bundled
    batch = dict(tokenizer(SENTENCES[:2], SENTENCES[2:], padding=True, return_tensors="pt"))
    assert batch["token_type_ids"].max() == 1
    _compare(ours, theirs, batch)


@pytest.mark.parametrize(
    "layers, heads, hidden, intermediate, act",
    [(1, 1, 8, 16, "gelu"), (2, 4, 32, 64, "relu"), (3, 2, 16, 48, "gelu_new")],
)
def test_random_configs_match_transformers(layers, heads, hidden, intermediate, act, tmp_path):
    config = HFBertConfig(vocab_size=99, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                          intermediate_size=intermediate, hidden_act=act, max_position_embeddings=40, type_vocab_size=3)
    torch.manual_seed(layers)
    theirs = HFBertModel(config).eval()
    theirs.save_pretrained(tmp_path)
    ours = bert.from_pretrained(tmp_path)
    ids = torch.randint(1, 99, (3, 11))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 2:] = 0
    ids[mask == 0] = 0
    _compare(ours, theirs, {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.randint(0, 3, (3, 11))})


def test_explicit_and_fused_attention_paths_agree(bundled):
    ours, _, tokenizer = bundled
    batch = dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    with torch.no_grad():
        fused = ours(**batch).last_hidden_state
        explicit = ours(**batch, output_attentions=True).last_hidden_state
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(fused[real], explicit[real], **TOL)


def test_config_reads_config_json_and_ignores_other_keys(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64, "num_attention_heads": 4, "model_type": "bert"}))
    config = bert.BertConfig.from_json(tmp_path)
    assert config.hidden_size == 64 and config.num_hidden_layers == 12
    with pytest.raises(ValueError, match=r"hidden_size \(10\) must be divisible by num_attention_heads \(4\)"):
        bert.BertConfig(hidden_size=10, num_attention_heads=4)
    with pytest.raises(ValueError, match="hidden_act must be one of"):
        bert.BertConfig(hidden_act="swish")


def test_loader_names_missing_and_unexpected_keys(tmp_path):
    folder = bundled_model_path()
    checkpoint = load_file(str(folder / "model.safetensors"))
    config = bert.BertConfig.from_json(folder)
    with pytest.raises(ValueError, match=r"unexpected keys \['encoder.layer.4.attention"):
        bert.load_state_dict_into(bert.BertModel(dataclasses.replace(config, num_hidden_layers=4)), checkpoint)
    without_pooler = {k: v for k, v in checkpoint.items() if not k.startswith("pooler")}
    with pytest.raises(ValueError, match=r"missing keys \['pooler.dense.bias', 'pooler.dense.weight'\]"):
        bert.load_state_dict_into(bert.BertModel(config), without_pooler)
    with pytest.raises(ValueError, match=r"shapes differ: embeddings.word_embeddings.weight: checkpoint \(30522, 384\) vs model \(100, 384\)"):
        bert.load_state_dict_into(bert.BertModel(dataclasses.replace(config, vocab_size=100)), checkpoint)
    prefixed = {f"bert.{k}": v for k, v in checkpoint.items()}  # as a BertFor... checkpoint stores it
    bert.load_state_dict_into(bert.BertModel(config), prefixed)
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        bert.from_pretrained(tmp_path)


def test_forward_rejects_bad_input(bundled):
    ours, _, _ = bundled
    with pytest.raises(ValueError, match=r"input_ids must be \(B, T\) integer ids"):
        ours(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="at most max_position_embeddings=512"):
        ours(torch.zeros(1, 513, dtype=torch.long))
    with pytest.raises(ValueError, match=r"attention_mask must have the shape of input_ids \(1, 4\)"):
        ours(torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 5))


def test_mean_pool_leaves_padding_out():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    torch.testing.assert_close(bert.mean_pool(hidden, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))
    with pytest.raises(ValueError, match=r"hidden must be \(B, T, H\)"):
        bert.mean_pool(hidden, torch.ones(1, 2))


def test_saved_and_reloaded_weights_round_trip(bundled, tmp_path):
    ours, _, _ = bundled
    folder = bundled_model_path()
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    save_file({k: v.contiguous() for k, v in ours.state_dict().items()}, str(tmp_path / "model.safetensors"))
    again = bert.from_pretrained(tmp_path)
    ids = torch.tensor([[101, 7592, 102]])
    torch.testing.assert_close(again(ids).last_hidden_state, ours(ids).last_hidden_state)


def test_prune_heads_works_on_this_model_as_on_transformers(tmp_path):
    """The self-attention's attribute names are transformers' (num_attention_heads,
    attention_head_size, all_head_size), so course_lib.prune handles both models alike."""
    from course_lib import prune

    config = HFBertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=40)
    torch.manual_seed(0)
    theirs = HFBertModel(config).eval()
    theirs.save_pretrained(tmp_path)
    ours = bert.from_pretrained(tmp_path)
    heads = {0: [1, 2], 1: [3]}
    prune.prune_heads(ours, heads)
    prune.prune_heads(theirs, heads)
    assert ours.encoder.layer[0].attention.self.num_attention_heads == 2
    assert ours.encoder.layer[0].attention.self.query.weight.shape == (16, 32)
    ids = torch.randint(1, 99, (2, 9))
    _compare(ours, theirs, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})

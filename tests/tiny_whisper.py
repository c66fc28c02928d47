"""A tiny random transformers Whisper for the tests of course_lib.whisper and course_lib.whisper_model
(vocabulary 64, 8 mel bands, width 16, 2 + 2 blocks; start token 1, end token 2)."""

import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration


def tiny_whisper(heads: int = 2, text_positions: int = 12) -> WhisperForConditionalGeneration:
    """Seeded, in eval mode, every weight nudged by noise so that biases are away from zero (a dropped
    bias would show)."""
    config = WhisperConfig(vocab_size=64, num_mel_bins=8, d_model=16, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=32,
                           decoder_ffn_dim=32, max_source_positions=20, max_target_positions=text_positions,
                           decoder_start_token_id=1, eos_token_id=2, pad_token_id=2, bos_token_id=2,
                           suppress_tokens=None, begin_suppress_tokens=None)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model

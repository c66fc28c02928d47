"""The course's exercises: id, title, points, the check a notebook calls, and the course_lib
references a learner must not call while it is graded. Imports without torch, so generating and
listing exercises stays light; the checks themselves live in ``course_lib.checks.chNN``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Exercise:
    """One exercise. ``check`` is the name notebooks call (``grading.<check>(candidate)``);
    ``blocks`` names the references (``module:qualified.name``) switched off while it is graded."""

    id: str
    title: str
    check: str
    blocks: tuple[str, ...] = ()
    points: int = 1

    @property
    def chapter(self) -> int:
        return int(self.id.split(".")[0])

    @property
    def module(self) -> str:
        return f"course_lib.checks.ch{self.chapter:02d}"


EXERCISES: dict[str, Exercise] = {e.id: e for e in (
    Exercise("0.1", "a list of numbers as a float32 tensor", "check_to_float_tensor"),
    Exercise("0.2", "count trainable parameters", "check_count_parameters"),
    Exercise("0.3", "reproducible random numbers", "check_reproducible_randn"),
    Exercise("1.1", "pairwise squared distances by broadcasting", "check_pairwise_sq_distances"),
    Exercise("1.2", "normalise each row to unit length", "check_normalize_rows"),
    Exercise("1.3", "mean over the masked positions", "check_masked_mean"),
    Exercise("1.4", "batched dot products with einsum", "check_batched_scores"),
    Exercise("2.1", "a derivative with torch.autograd.grad", "check_derivative_at"),
    Exercise("2.2", "sigmoid from the engine's operations", "check_sigmoid"),
    Exercise("2.3", "central finite differences", "check_central_difference",
             ("course_lib.autograd:finite_difference_grad",)),
    Exercise("2.4", "the backward of SiLU", "check_silu_function"),
    Exercise("2.5", "build the engine's backward", "check_scalar_backward", points=3),
    Exercise("3.1", "a numerically stable softmax", "check_stable_softmax", ("course_lib.nn:softmax",)),
    Exercise("3.2", "cross-entropy from its formula", "check_cross_entropy", ("course_lib.nn:cross_entropy",)),
    Exercise("3.3", "one training step by hand", "check_train_step"),
    Exercise("3.4", "build a Linear layer and an MLP as modules", "check_mlp_module", points=3),
    Exercise("3.5", "build one epoch of training and validation", "check_run_epoch", points=3),
    Exercise("4.1", "scaled dot-product attention", "check_attention",
             ("course_lib.attention:scaled_dot_product_attention",)),
    Exercise("4.2", "the causal mask", "check_causal_mask", ("course_lib.attention:causal_mask",)),
    # split_heads stays on: the course's MultiHeadAttention, which exercise 4.5's block uses, calls it
    Exercise("4.3", "splitting into heads", "check_split_heads"),
    Exercise("4.4", "build multi-head attention as a module", "check_multi_head_attention", points=3),
    Exercise("4.5", "build a pre-norm Transformer block", "check_transformer_block", ("course_lib.gpt:Block.forward",),
             points=3),
    Exercise("5.1", "WordPiece: greedy longest match", "check_wordpiece", ("course_lib.wordpiece:wordpiece",)),
    Exercise("5.2", "BERT's input embeddings", "check_bert_embed", ("course_lib.bert:BertEmbeddings.forward",)),
    Exercise("5.3", "mean pooling over real tokens", "check_mean_pool", ("course_lib.bert:mean_pool",)),
    Exercise("5.4", "build one BERT encoder layer", "check_bert_layer",
             ("course_lib.bert:BertLayer.forward", "course_lib.bert:BertAttention.forward"), points=3),
    Exercise("6.1", "the next-token loss", "check_next_token_loss", ("course_lib.gpt:causal_lm_loss",)),
    Exercise("6.2", "top-k filtering of logits", "check_top_k_filter"),
    Exercise("6.3", "choosing the tokens to mask", "check_select_for_masking"),
    Exercise("6.4", "build the GPT's forward pass and generate", "check_gpt",
             ("course_lib.gpt:GPT.forward", "course_lib.gpt:GPT.generate"), points=3),
    Exercise("7.1", "compute_metrics for the Trainer", "check_compute_metrics",
             ("course_lib.finetune:compute_metrics", "course_lib.finetune:classification_metrics")),
    Exercise("7.2", "the warm-up and linear-decay factor", "check_warmup_linear_factor",
             ("course_lib.train:linear_warmup_schedule",)),
    Exercise("7.3", "expected calibration error", "check_expected_calibration_error",
             ("course_lib.train:expected_calibration_error",)),
    Exercise("7.4", "build the fine-tuning loop", "check_fine_tuning_loop",
             ("course_lib.finetune:fine_tune", "course_lib.train:fit"), points=3),
    Exercise("8.1", "the LoRA forward pass", "check_lora_forward", ("course_lib.lora:LoRALinear.forward",)),
    Exercise("8.2", "freeze everything but the named parts", "check_freeze_all_but"),
    Exercise("8.3", "merging the update into the weight", "check_merge_lora_weight"),
    Exercise("8.4", "build LoRALinear as a module", "check_lora_linear",
             ("course_lib.lora:LoRALinear.merge", "course_lib.lora:LoRALinear.unmerge"), points=3),
    Exercise("9.1", "a magnitude-pruning mask", "check_magnitude_mask", ("course_lib.prune:magnitude_mask",)),
    Exercise("9.2", "symmetric quantization of a tensor", "check_symmetric_quantize",
             ("course_lib.quantize:qparams", "course_lib.quantize:quantize")),
    Exercise("9.3", "one scale per output channel", "check_per_channel_scales", ("course_lib.quantize:qparams",)),
    Exercise("9.4", "build an int8 dynamic-quantized Linear", "check_int8_linear", points=3),
    Exercise("10.1", "padding a batch by hand", "check_pad_batch"),
    Exercise("10.2", "validating a request body by hand", "check_validate_texts"),
    Exercise("10.3", "a percentile", "check_percentile"),
    Exercise("10.4", "build the /predict endpoint", "check_predict_endpoint", ("course_lib.serve:create_app",), points=3),
    Exercise("11.1", "accumulate the gradient of a batch", "check_accumulate_gradients"),
    Exercise("11.2", "the training state in bytes", "check_training_state_bytes",
             ("course_lib.memory:bytes_per_parameter",)),
    Exercise("11.3", "which samples does a rank read?", "check_rank_indices"),
    Exercise("11.4", "build data parallelism by hand", "check_data_parallel_step", points=3),
    Exercise("12.1", "one BPE merge step", "check_bpe_merge_step",
             ("course_lib.bpe:merge_pair", "course_lib.bpe:pair_counts")),
    Exercise("12.2", "RMSNorm", "check_rms_norm", ("course_lib.llama:RMSNorm.forward",)),
    Exercise("12.3", "rotary position embeddings", "check_rotary",
             ("course_lib.llama:rotary_frequencies", "course_lib.llama:rotary_cos_sin")),
    # repeat_kv stays on: a learner's 12.5 module may call it, as the course's GroupedQueryAttention does
    # (like split_heads for 4.3)
    Exercise("12.4", "repeat_kv for grouped-query attention", "check_repeat_kv"),
    Exercise("12.5", "build grouped-query attention with a KV cache", "check_cached_attention",
             ("course_lib.llama:GroupedQueryAttention.forward",), points=3),
    Exercise("12.6", "greedy decoding with a KV cache", "check_cached_greedy",
             ("course_lib.generate:stream", "course_lib.generate:generate", "course_lib.generate:prefill",
              "course_lib.generate:decode_step")),
    Exercise("12.7", "top-p (nucleus) filtering", "check_top_p", ("course_lib.sampling:top_p_filter",)),
    Exercise("13.1", "build the assistant-only labels", "check_assistant_labels",
             ("course_lib.sft:assistant_labels",), points=3),
    Exercise("13.2", "the log-probability of a sequence", "check_sequence_logprob",
             ("course_lib.dpo:sequence_logprobs",)),
    Exercise("13.3", "the DPO loss", "check_dpo_loss", ("course_lib.dpo:dpo_loss",)),
    Exercise("14.1", "build conv2d from unfold", "check_conv2d_unfold",
             ("course_lib.conv:conv2d", "course_lib.conv:im2col"), points=3),
    # patchify stays on: the ViT's patch embedding, which exercise 14.3's forward pass calls, uses it
    # (like split_heads for 4.3)
    Exercise("14.2", "cut an image into patches", "check_patchify"),
    Exercise("14.3", "build the Vision Transformer's forward pass", "check_vit_forward",
             ("course_lib.vit:ViT.forward", "course_lib.vit:ViT.tokens"), points=3),
    Exercise("15.1", "build the mel filterbank", "check_mel_filterbank",
             ("course_lib.audio:mel_filterbank", "course_lib.audio:hz_to_mel", "course_lib.audio:mel_to_hz"), points=3),
    # normalize stays on: the exercise is the edit distance, and a learner may normalise with the course's rule
    # (like split_heads for 4.3)
    Exercise("15.2", "the word error rate", "check_word_error_rate",
             ("course_lib.wer:align", "course_lib.wer:word_error_rate")),
    Exercise("15.3", "one decoding step of cross-attention", "check_cross_attention_step",
             ("course_lib.whisper_model:Attention.forward", "course_lib.whisper_model:cross_attention_step"), points=3),
)}

BY_CHECK: dict[str, Exercise] = {e.check: e for e in EXERCISES.values()}


def load(exercise_id: str) -> Any:
    """The :class:`course_lib.checks.verdict.Check` of an exercise (imports its chapter's module)."""
    exercise = EXERCISES[exercise_id]
    return importlib.import_module(exercise.module).CHECKS[exercise_id]

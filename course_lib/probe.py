"""A linear probe on frozen, mean-pooled sentence embeddings: the fair "train only a head" baseline
for an encoder tuned for mean pooling (like all-MiniLM-L6-v2), whose ``[CLS]`` pooler was never
trained for sentences."""

from __future__ import annotations

import torch
from torch import nn

from course_lib.arguments import require_int
from course_lib.bert import mean_pool


class MeanPooledProbe(nn.Module):
    """``logits = Linear(mean of the encoder's real-token vectors)``, the encoder frozen.

    ``encoder`` is a Hugging Face ``BertModel`` (``classifier.bert``) or anything that returns
    ``last_hidden_state``; it is frozen and kept in eval mode (no dropout), so the features of a
    sentence never change and only the linear layer learns."""

    def __init__(self, encoder: nn.Module, hidden_size: int, num_labels: int = 2) -> None:
        super().__init__()
        hidden_size = require_int("hidden_size", hidden_size)
        num_labels = require_int("num_labels", num_labels, at_least=2)
        self.encoder = encoder.requires_grad_(False).eval()
        self.classifier = nn.Linear(hidden_size, num_labels)

    def train(self, mode: bool = True) -> MeanPooledProbe:
        super().train(mode)
        self.encoder.eval()  # frozen features: dropout stays off while the head trains
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():  # no activations kept for a backward pass that would stop here anyway
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).last_hidden_state
        return self.classifier(mean_pool(hidden, attention_mask))

"""A tiny stand-in for text_encoder with the real tensor contract, exported the real way.

The foundation tests need Triton to serve *a* model with the text_encoder's inputs and outputs;
training the real one takes minutes, so this one is an embedding bag that trains in no time.
"""

from __future__ import annotations

from pathlib import Path

import torch
from amcsearch.runtime.contract import EMBEDDING_DIM, TEXT_ENCODER, model_specs
from torch import nn

from models.export.triton_repo import export_model

DIM = EMBEDDING_DIM


class TinyTextEncoder(nn.Module):
    def __init__(self, vocab: int = 30522, width: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Embedding(vocab, width)
        self.project = nn.Linear(width, DIM)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.project(self.embedding(input_ids))
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return nn.functional.normalize(pooled, dim=-1), tokens


TEXT_ENCODER_SPEC = model_specs(vocab_size=1)[TEXT_ENCODER]


def write_tiny_repository(repository: Path) -> TinyTextEncoder:
    module = TinyTextEncoder().eval()
    export_model(module, TEXT_ENCODER_SPEC, repository)
    return module

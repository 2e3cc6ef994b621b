"""Keyword tagger: multi-label probabilities over the corpus keyword vocabulary.

It embeds the image encoder's trunk (kept frozen in training) so that the exported TorchScript
file is self-contained: uint8 image in, probabilities [B, V] out, V = len(keywords.txt).
"""

import torch
from torch import nn

from models.nets.image_encoder import (
    CELL_GRID,
    EMBED_DIM,
    REGION_DIM,
    ImageEncoder,
)


class TaggerHead(nn.Module):
    """(cells [B,9,128], embedding [B,384]) -> logits [B,V]."""

    def __init__(self, vocab_size: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(CELL_GRID * CELL_GRID * REGION_DIM + EMBED_DIM, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Linear(hidden, vocab_size),
        )

    def forward(self, cells: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([cells.flatten(1), embedding], dim=1))


class KeywordTagger(nn.Module):
    """uint8 [B,128,128,3] -> probabilities [B,V] (independent sigmoids)."""

    def __init__(self, encoder: ImageEncoder, vocab_size: int, hidden: int = 256) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = TaggerHead(vocab_size, hidden)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        embedding, _, cells = self.encoder.encode(image)
        return torch.sigmoid(self.head(cells, embedding))

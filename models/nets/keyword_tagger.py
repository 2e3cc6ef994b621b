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


class PlacementHead(nn.Module):
    """cells [B,9,128] -> logits [B, 9 * A]: which of A attributes (colours, shapes, sizes) an
    object in each cell of the 3 x 3 grid has, cell-major. One classifier shared by every cell
    (what an object looks like does not depend on where it is); a cell without an object should
    say no to every attribute."""

    def __init__(self, attributes: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(REGION_DIM, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, attributes),
        )

    def forward(self, cells: torch.Tensor) -> torch.Tensor:
        return self.net(cells).flatten(1)


class KeywordTagger(nn.Module):
    """uint8 [B,128,128,3] -> (keyword probabilities [B,V], placement probabilities [B, 9 * A]),
    independent sigmoids; placements are cell-major (placements.txt: "red@top-left", ...)."""

    def __init__(
        self, encoder: ImageEncoder, vocab_size: int, hidden: int = 256, placement_attributes: int = 13
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = TaggerHead(vocab_size, hidden)
        self.placements = PlacementHead(placement_attributes)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding, _, cells = self.encoder.encode(image)
        return torch.sigmoid(self.head(cells, embedding)), torch.sigmoid(self.placements(cells))

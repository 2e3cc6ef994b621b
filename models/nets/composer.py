"""Composed-query models: reference image + modification text -> a query for the global index.

Every composer shares one forward signature (the Triton `composer` contract):

    forward(image_embedding [B,384], regions [B,36,128], text_embedding [B,384],
            tokens [B,32,384], token_mask [B,32] float) -> embedding [B,384], L2-normalised

The inputs come from the frozen image_encoder (of the reference image) and the frozen
text_encoder (of the modification text). The output is matched against the frozen image
encoder's global embeddings of the collection, so the target side is fixed: nothing here
changes the index. Methods after METHODS.md "Composition" (TIRG's code for the baselines and
TIRG; the locally bounded features variant is ours, after Hosseinzadeh & Wang 2020).
All are scriptable with torch.jit.script and create no tensor on a fixed device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

EMBED = 384
REGION_DIM = 128
GRID = 6


class ImageOnly(nn.Module):
    """f = phi_x: the reference image's own embedding (no parameters, no training)."""

    def forward(
        self,
        image_embedding: torch.Tensor,
        regions: torch.Tensor,
        text_embedding: torch.Tensor,
        tokens: torch.Tensor,
        token_mask: torch.Tensor,
    ) -> torch.Tensor:
        return F.normalize(image_embedding, dim=1)


class TextOnly(nn.Module):
    """f = phi_t: a trained MLP on the frozen MiniLM embedding of the modification text."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(EMBED, 2 * EMBED), nn.ReLU(), nn.Linear(2 * EMBED, EMBED))

    def forward(
        self,
        image_embedding: torch.Tensor,
        regions: torch.Tensor,
        text_embedding: torch.Tensor,
        tokens: torch.Tensor,
        token_mask: torch.Tensor,
    ) -> torch.Tensor:
        return F.normalize(self.mlp(text_embedding), dim=1)


class Concat(nn.Module):
    """TIRG's concat baseline: BN-ReLU-Linear(2D,2D)-BN-ReLU-Dropout(0.1)-Linear(2D,D) on [phi_x; phi_t]."""

    def __init__(self) -> None:
        super().__init__()
        d2 = 2 * EMBED
        self.net = nn.Sequential(
            nn.BatchNorm1d(d2),
            nn.ReLU(),
            nn.Linear(d2, d2),
            nn.BatchNorm1d(d2),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(d2, EMBED),
        )

    def forward(
        self,
        image_embedding: torch.Tensor,
        regions: torch.Tensor,
        text_embedding: torch.Tensor,
        tokens: torch.Tensor,
        token_mask: torch.Tensor,
    ) -> torch.Tensor:
        return F.normalize(self.net(torch.cat([image_embedding, text_embedding], dim=1)), dim=1)


class GatedResidual(nn.Module):
    """TIRG's composition of x (dim d) with t (dim d_t): a0 * sigmoid(gate(z)) * x + a1 * res(z), z = [x; t]."""

    def __init__(self, d: int, d_t: int) -> None:
        super().__init__()
        dz = d + d_t
        self.gate = nn.Sequential(nn.BatchNorm1d(dz), nn.ReLU(), nn.Linear(dz, d))
        self.res = nn.Sequential(nn.BatchNorm1d(dz), nn.ReLU(), nn.Linear(dz, dz), nn.ReLU(), nn.Linear(dz, d))
        self.a = nn.Parameter(torch.tensor([1.0, 10.0]))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        z = torch.cat([x, t], dim=1)
        return self.a[0] * torch.sigmoid(self.gate(z)) * x + self.a[1] * self.res(z)


class TIRG(nn.Module):
    """Text-image residual gating on the global embeddings (Vo et al., CVPR 2019)."""

    def __init__(self) -> None:
        super().__init__()
        self.compose = GatedResidual(EMBED, EMBED)

    def forward(
        self,
        image_embedding: torch.Tensor,
        regions: torch.Tensor,
        text_embedding: torch.Tensor,
        tokens: torch.Tensor,
        token_mask: torch.Tensor,
    ) -> torch.Tensor:
        return F.normalize(self.compose(image_embedding, text_embedding), dim=1)


def region_map(regions: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    """[B, grid*grid, C] row-major regions -> [B, C, grid, grid] (region r*grid + c at row r, column c)."""
    b, _, c = regions.shape
    return regions.transpose(1, 2).reshape(b, c, grid, grid)


class TIRGGrid(nn.Module):
    """TIRG on the 6x6 region grid, after the authors' TIRGLastConv (google/tirg, --model=tirg_lastconv).

    As there: the text feature is broadcast over the grid, z = [x; y] on channels, and two
    BatchNorm2d -> Conv3x3(C+D, C+D) -> ReLU -> Conv3x3(C+D, C) branches give the residual t and
    the gate: x' = a0 * sigmoid(gate) * x + a1 * t, a initialised (1, 10). Their text feature is
    their text model's last Linear (after Dropout 0.1), as wide as the conv map (D = C = 512); ours
    is the same on the frozen MiniLM embedding: Dropout(0.1) -> Linear(384, D) with D = C = 128,
    so C + D = 256. The raw 384-d text (C + D = 512) trains four times slower, too slow for
    `make models` (benchmarks/COMPOSER_SEEDS.md). The convolutions' hidden width is 128, not
    C + D = 256 as there: level on the held-out queries over 5 runs (0.966 against 0.961) at about
    half the FLOPs (decision record 0014); `hidden=0` gives their C + D.

    Where the setting differs: there the composed map goes through the image model's own avgpool
    and fc, the branch the targets come from; our targets are the frozen global embeddings (the
    index), which are not a linear read-out of the regions. So only the change the text makes to
    the grid is carried into the embedding space: f = normalize(phi_x + W mean_cells(x' - x)),
    W a bias-free Linear(C, 384), initialised to zero. A text that leaves the grid as it is leaves
    the image's own embedding; as avgpool and fc are linear, this is their read-out with phi_x in
    place of fc(avgpool(x)) and without the fc's bias.
    """

    def __init__(self, text_dim: int = REGION_DIM, hidden: int = 128) -> None:
        super().__init__()
        c = REGION_DIM
        dz = c + text_dim
        width = hidden if hidden > 0 else dz
        self.text = nn.Sequential(nn.Dropout(0.1), nn.Linear(EMBED, text_dim))
        self.res = nn.Sequential(
            nn.BatchNorm2d(dz),
            nn.Conv2d(dz, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, c, 3, padding=1),
        )
        self.gate = nn.Sequential(
            nn.BatchNorm2d(dz),
            nn.Conv2d(dz, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, c, 3, padding=1),
        )
        self.a = nn.Parameter(torch.tensor([1.0, 10.0]))
        self.out = nn.Linear(c, EMBED, bias=False)
        # Zero: training starts from the image-only composer and learns the change the text makes.
        # Chosen on the held-out TRAIN queries over 5 seeds: 0.938 against 0.920 with PyTorch's
        # default initialisation (docs/decisions/0014-tirg-on-the-region-grid.md).
        nn.init.zeros_(self.out.weight)

    def forward(
        self,
        image_embedding: torch.Tensor,
        regions: torch.Tensor,
        text_embedding: torch.Tensor,
        tokens: torch.Tensor,
        token_mask: torch.Tensor,
    ) -> torch.Tensor:
        x = region_map(regions)
        y = self.text(text_embedding)
        z = torch.cat([x, y[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])], dim=1)
        updated = self.a[0] * torch.sigmoid(self.gate(z)) * x + self.a[1] * self.res(z)
        change = (updated - x).mean(dim=(2, 3))
        return F.normalize(image_embedding + self.out(change), dim=1)


class Attention(nn.Module):
    """Multi-head scaled dot-product attention; key_valid [B, Lk] float (0 = padding)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.heads = heads
        self.head_dim = d // heads
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        b, lq, d = query.shape
        scores = torch.matmul(self._split(self.q(query)), self._split(self.k(keys)).transpose(-1, -2))
        # A row with no valid key (never from the tokenizer, which always emits [CLS] [SEP])
        # attends uniformly instead of producing NaN.
        valid = key_valid > 0
        valid = valid | ~valid.any(dim=1, keepdim=True)
        scores = scores * self.scale + (~valid).to(scores.dtype)[:, None, None, :] * -10000.0
        context = torch.matmul(torch.softmax(scores, dim=-1), self._split(self.v(keys)))
        return self.o(context.transpose(1, 2).reshape(b, lq, d))


def region_boxes(grid: int = GRID) -> torch.Tensor:
    """[grid*grid, 5]: normalised x1, y1, x2, y2 and area of each region, row-major."""
    rows = []
    for r in range(grid):
        for c in range(grid):
            rows.append([c / grid, r / grid, (c + 1) / grid, (r + 1) / grid, 1.0 / (grid * grid)])
    return torch.tensor(rows, dtype=torch.float32)


class LocallyBounded(nn.Module):
    """Locally bounded features: words modify regions, not the whole image.

    Regions (6x6 grid) get a positional feature Linear(x1, y1, x2, y2, area); self-attention over
    regions and over words; cross-attention region -> words gives each region its own text
    context c_i; each region is updated by a TIRG gated residual of (r_i, c_i); regions are
    mean-pooled and projected to 384. Our choice where the paper's setting differs: the target
    is the frozen global embedding (the index), not the same region branch, so with `global_skip`
    the reference's global embedding is added back with a learned weight (initialised 1).
    d = 256 (1.55 M parameters, about the grid TIRG's size) was chosen over d = 128 on the held-out
    queries over 5 runs: 0.970 against 0.950 (decision record 0014).
    """

    def __init__(self, d: int = 256, heads: int = 4, global_skip: bool = True) -> None:
        super().__init__()
        self.d = d
        self.region_in = nn.Linear(REGION_DIM, d)
        self.position = nn.Linear(5, d)
        self.register_buffer("boxes", region_boxes(), persistent=False)
        self.word_in = nn.Linear(EMBED, d)
        self.region_norm = nn.LayerNorm(d)
        self.word_norm = nn.LayerNorm(d)
        self.region_self = Attention(d, heads)
        self.word_self = Attention(d, heads)
        self.region_self_norm = nn.LayerNorm(d)
        self.word_self_norm = nn.LayerNorm(d)
        self.cross = Attention(d, 1)
        self.compose = GatedResidual(d, d)
        self.out = nn.Linear(d, EMBED)
        self.global_skip = global_skip
        self.skip = nn.Parameter(torch.ones(1))

    def forward(
        self,
        image_embedding: torch.Tensor,
        regions: torch.Tensor,
        text_embedding: torch.Tensor,
        tokens: torch.Tensor,
        token_mask: torch.Tensor,
    ) -> torch.Tensor:
        b, n, _ = regions.shape
        r = self.region_norm(self.region_in(regions) + self.position(self.boxes.to(regions.dtype)))
        w = self.word_norm(self.word_in(tokens))
        region_valid = torch.ones_like(r[:, :, 0])
        r = self.region_self_norm(r + self.region_self(r, r, region_valid))
        w = self.word_self_norm(w + self.word_self(w, w, token_mask))
        c = self.cross(r, w, token_mask)
        updated = self.compose(r.reshape(b * n, self.d), c.reshape(b * n, self.d)).view(b, n, self.d)
        f = self.out(updated.mean(dim=1))
        if self.global_skip:
            f = f + self.skip * image_embedding
        return F.normalize(f, dim=1)


COMPOSERS = {
    "image_only": ImageOnly,
    "text_only": TextOnly,
    "concat": Concat,
    "tirg": TIRG,
    "lbf": LocallyBounded,
    "tirg_grid": TIRGGrid,
}
"""Name -> class of every composer; the names are the keys train_composers returns. A method's
place here is its seed offset, so append new ones (benchmarks/COMPOSER_SEEDS.md's run 0 is
`make models`' own)."""


def build_composer(name: str) -> nn.Module:
    return COMPOSERS[name]()


def load_composers(checkpoints: dict[str, dict[str, torch.Tensor]]) -> dict[str, nn.Module]:
    """Rebuild the train_composers dict from state dicts by name (as the driver saves them);
    "composer" is recognised by its weights being equal to one method's."""
    result: dict[str, nn.Module] = {}
    for name in COMPOSERS:
        if name in checkpoints:
            module = build_composer(name)
            module.load_state_dict(checkpoints[name])
            result[name] = module.eval()
    if "composer" in checkpoints:
        for module in result.values():
            if _same_weights(module.state_dict(), checkpoints["composer"]):
                result["composer"] = module
                break
    return result


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

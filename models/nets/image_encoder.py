"""A small CNN image encoder for the scene corpus: region grid + global embedding in the text space.

No pretrained image weights can be fetched here, so the trunk is small enough to train from
scratch on 2 CPU cores and to serve in a few milliseconds per image on one core.

Input: uint8 NHWC [B, 128, 128, 3]; the cast and normalisation happen inside `forward`, so only
uint8 travels on the wire. Outputs:
- embedding [B, 384], L2-normalised, aligned (by training) with all-MiniLM-L6-v2 caption embeddings;
- regions [B, 36, 128]: a 6 x 6 grid (row-major) of region features, adaptive-average-pooled from
  the stride-8 feature map (16 x 16). Each scene cell of the 3 x 3 layout is a 2 x 2 block of regions.

Everything is plain torch and scriptable (`torch.jit.script`); no tensor is created on a fixed
device, so a model file scripted on a CPU runs on a GPU.
"""

import torch
import torch.nn.functional as F
from torch import nn

IMAGE_SIZE = 128
REGION_GRID = 6
REGION_DIM = 128
EMBED_DIM = 384
CELL_GRID = 3


def _conv_bn(c_in: int, c_out: int, stride: int, kernel: int = 3, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ImageTrunk(nn.Module):
    """uint8 NHWC image -> stride-8 feature map [B, REGION_DIM, 16, 16]."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            _conv_bn(3, width, stride=2),  # 64 x 64
            _conv_bn(width, width, stride=2),  # 32 x 32
            _conv_bn(width, width, stride=1),
            _conv_bn(width, 2 * width, stride=2),  # 16 x 16
            _conv_bn(2 * width, 2 * width, stride=1, dilation=2),
            _conv_bn(2 * width, REGION_DIM, stride=1, kernel=1),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # Pixels to roughly zero mean, unit scale: (x / 255 - 0.5) / 0.25. One scalar per channel
        # is enough because BatchNorm follows the first convolution. The NHWC input stays NHWC in
        # memory (channels_last), the layout oneDNN's CPU convolutions run natively: NCHW made
        # every convolution reorder its tensors and took twice as long to train on an AVX2 CPU.
        x = image.permute(0, 3, 1, 2).to(torch.float32) * (4.0 / 255.0) - 2.0
        return self.stem(x.contiguous(memory_format=torch.channels_last))


def regions_from_map(feature_map: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, 36, C], row-major over the 6 x 6 grid."""
    pooled = F.adaptive_avg_pool2d(feature_map, 6)  # REGION_GRID (TorchScript wants a literal)
    return pooled.flatten(2).transpose(1, 2).contiguous()


def cells_from_regions(regions: torch.Tensor) -> torch.Tensor:
    """[B, 36, C] -> [B, 9, C]: each scene cell is the mean of its 2 x 2 block of regions."""
    b, _, c = regions.shape
    grid = regions.transpose(1, 2).reshape(b, c, 6, 6)  # REGION_GRID
    cells = F.avg_pool2d(grid, kernel_size=2, stride=2)
    return cells.flatten(2).transpose(1, 2).contiguous()


class ImageEncoder(nn.Module):
    """uint8 [B,128,128,3] -> (embedding [B,384] L2-normalised, regions [B,36,128])."""

    def __init__(self, width: int = 32, hidden: int = 512) -> None:
        super().__init__()
        self.trunk = ImageTrunk(width)
        n_cells = CELL_GRID * CELL_GRID
        # The global head sees every cell's feature in place (layout matters for captions such as
        # "a red circle top-left"), plus the global mean and max of the map.
        self.head = nn.Sequential(
            nn.Linear(n_cells * REGION_DIM + 2 * REGION_DIM, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, EMBED_DIM),
        )

    def encode(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (embedding, regions, cells [B,9,128]); cells feed the training-only heads."""
        fmap = self.trunk(image)
        regions = regions_from_map(fmap)
        cells = cells_from_regions(regions)
        pooled = torch.cat([fmap.mean(dim=(2, 3)), fmap.amax(dim=(2, 3))], dim=1)
        z = self.head(torch.cat([cells.flatten(1), pooled], dim=1))
        return F.normalize(z, dim=1), regions, cells

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding, regions, _ = self.encode(image)
        return embedding, regions


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

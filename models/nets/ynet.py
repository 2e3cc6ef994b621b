"""TagYNet and CtxYNet (Ji, Wang, Zhang, Yang, ACM MM 2017): attention for street-to-shop search.

A Y-shaped net on the image encoder's region grid. The stem of the Y is the image encoder's
trunk (kept frozen: it is the make-models encoder), pooled to the 6 x 6 grid (mean and max per
cell), and a shared 1 x 1 convolution plus a learned embedding per location; its arms are a
street branch and a shop branch, each ending in a C-channel map x_l over the L = 36 locations.

- TagYNet, street (query) side: average pool over the locations, L2-normalised.
- TagYNet, shop (database) side: the shop item's tags, multi-hot over the keyword vocabulary ->
  bias-free Linear -> t in R^C; attention w = softmax_l <x_l, t>; feature sum_l w_l x_l, L2.
  The tags say what the product is, so the attention finds it in the shop image.
- CtxYNet (its own Y, on the same trunk): the street attention depends on a candidate. With
  ctx the candidate's tag-attended shop vector, a_l = u . x_l + (V ctx)_l (u in R^C scores each location, V in R^{L x C} turns the
  candidate into a prior over locations); softmax over l, weighted sum, L2. The query vector
  differs per candidate, so CtxYNet re-ranks a short list (TagYNet's top K).

A distance is the squared L2 between unit vectors (2 - 2 cos): smaller is closer. Everything is
scriptable (torch.jit.script) and creates no tensor on a fixed device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.nets.image_encoder import REGION_DIM, ImageTrunk

YNET_DIM = 64  # C, the channels of each branch's map
YNET_HIDDEN = 96  # the channels of the shared stem and inside each arm (models/train/ynet.py: why 96)
GRID = 6
LOCATIONS = GRID * GRID  # L
GRID_FEATURES = 2 * REGION_DIM  # per location: the trunk's map averaged and maxed over the cell


def grid_features(feature_map: torch.Tensor) -> torch.Tensor:
    """The trunk's stride-8 map [B, 128, 16, 16] pooled over each cell of the 6 x 6 grid, mean and
    max: [B, 36, 256] row-major. The max keeps a small object the mean blends with its surroundings."""
    mean = F.adaptive_avg_pool2d(feature_map, 6)  # GRID (TorchScript wants a literal)
    peak = F.adaptive_max_pool2d(feature_map, 6)
    return torch.cat([mean, peak], dim=1).flatten(2).transpose(1, 2).contiguous()


def _branch(hidden: int, dim: int) -> nn.Sequential:
    """One arm of the Y: 3 x 3 context over the grid, then a 1 x 1 map to the C channels."""
    return nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(hidden, dim, 1))


def _grid(regions: torch.Tensor) -> torch.Tensor:
    """[B, 36, D] row-major regions -> [B, D, 6, 6]."""
    b, _, d = regions.shape
    return regions.transpose(1, 2).reshape(b, d, 6, 6)  # GRID (TorchScript wants a literal)


def _locations(grid: torch.Tensor) -> torch.Tensor:
    """[B, C, 6, 6] -> [B, 36, C]."""
    return grid.flatten(2).transpose(1, 2).contiguous()


def attend(locations: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax over locations of logits [N, L], weighted sum of locations [N, L, C], L2:
    (vector [N, C], weights [N, L])."""
    weights = torch.softmax(logits, dim=1)
    vector = torch.bmm(weights.unsqueeze(1), locations).squeeze(1)
    return F.normalize(vector, dim=1), weights


def squared_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise |a - b|^2 [N] of [N, C] tensors."""
    return (a - b).pow(2).sum(dim=1)


class YBranches(nn.Module):
    """The Y on the region grid: shared 1 x 1 convolution plus a learned embedding of each
    location, then the street and shop arms; and the tag projection. The location embedding lets
    an attended vector say where its mass lies, which CtxYNet's prior over locations reads (a
    deep CNN learns such position cues by itself; two convolutions on a 6 x 6 grid cannot)."""

    def __init__(self, vocab_size: int, dim: int = YNET_DIM, hidden: int = YNET_HIDDEN) -> None:
        super().__init__()
        self.shared = nn.Sequential(nn.Conv2d(GRID_FEATURES, hidden, 1), nn.ReLU(inplace=True))
        self.location = nn.Parameter(torch.zeros(1, hidden, GRID, GRID))
        self.street = _branch(hidden, dim)
        self.shop = _branch(hidden, dim)
        self.tag_projection = nn.Linear(vocab_size, dim, bias=False)

    def stem(self, regions: torch.Tensor) -> torch.Tensor:
        """Regions [B, 36, 256] -> the shared map [B, C, 6, 6] both arms start from."""
        return self.shared(_grid(regions)) + self.location

    def street_locations(self, regions: torch.Tensor) -> torch.Tensor:
        """Street regions [B, 36, 256] -> the street map x [B, 36, C]."""
        return _locations(self.street(self.stem(regions)))

    def shop_locations(self, regions: torch.Tensor) -> torch.Tensor:
        """Shop regions [B, 36, 256] -> the shop map x [B, 36, C]."""
        return _locations(self.shop(self.stem(regions)))

    def shop_embedding(self, locations: torch.Tensor, tags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tag attention: (sum_l w_l x_l L2 [B, C], w [B, 36]) with w = softmax_l <x_l, t>."""
        t = self.tag_projection(tags)
        return attend(locations, torch.bmm(locations, t.unsqueeze(2)).squeeze(2))


def street_embedding(locations: torch.Tensor) -> torch.Tensor:
    """TagYNet's street side: the average over locations [B, 36, C], L2 [B, C]."""
    return F.normalize(locations.mean(dim=1), dim=1)


class TagYNet(nn.Module):
    """The image encoder's trunk and the Y; forward gives both sides' vectors and the tag attention."""

    def __init__(self, vocab_size: int, dim: int = YNET_DIM, hidden: int = YNET_HIDDEN) -> None:
        super().__init__()
        self.trunk = ImageTrunk()
        self.branches = YBranches(vocab_size, dim, hidden)

    def regions(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 128, 128, 3] -> grid features [B, 36, 256]."""
        return grid_features(self.trunk(image))

    def forward(
        self, street_image: torch.Tensor, shop_image: torch.Tensor, tags: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(street vector [B, C], shop vector [B, C], shop tag attention [B, 36])."""
        street = street_embedding(self.branches.street_locations(self.regions(street_image)))
        shop, attention = self.branches.shop_embedding(self.branches.shop_locations(self.regions(shop_image)), tags)
        return street, shop, attention


class ContextScore(nn.Module):
    """a_l = u . x_l + (V ctx)_l: a score per location from its own feature, plus a prior over
    locations read from the candidate (u in R^C, V in R^{L x C}; both zero at the start)."""

    def __init__(self, dim: int = YNET_DIM) -> None:
        super().__init__()
        self.saliency = nn.Parameter(torch.zeros(dim))  # u
        self.context_prior = nn.Parameter(torch.zeros(LOCATIONS, dim))  # V

    def forward(self, locations: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Logits [N, L] of street maps [N, L, C], each with its row's context [N, C]."""
        return torch.matmul(locations, self.saliency) + torch.matmul(context, self.context_prior.t())

    def shortlist(self, locations: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        """Logits [Q, K, L]: street map q with each of its own K contexts [Q, K, C]."""
        return torch.matmul(locations, self.saliency).unsqueeze(1) + torch.matmul(contexts, self.context_prior.t())

    def pairwise(self, locations: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        """Logits [A, B, L]: street map a with context b."""
        scores = torch.matmul(locations, self.saliency)  # [A, L]
        priors = torch.matmul(contexts, self.context_prior.t())  # [B, L]
        return scores.unsqueeze(1) + priors.unsqueeze(0)


class CtxYNet(nn.Module):
    """Candidate-conditioned street attention on a Y of its own, on the grid features of TagYNet's
    frozen trunk (the same make-models trunk). The score starts at zero: uniform attention."""

    def __init__(self, vocab_size: int, dim: int = YNET_DIM, hidden: int = YNET_HIDDEN) -> None:
        super().__init__()
        self.branches = YBranches(vocab_size, dim, hidden)
        self.score = ContextScore(dim)

    def context(self, shop_regions: torch.Tensor, tags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A shop item's context: its tag-attended vector [B, C] (and the attention [B, 36])."""
        return self.branches.shop_embedding(self.branches.shop_locations(shop_regions), tags)

    def query(self, locations: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Street maps [N, 36, C] attended in the light of each row's context [N, C]:
        (query vector [N, C], attention [N, 36])."""
        return attend(locations, self.score(locations, context))

    def shortlist_query(self, locations: torch.Tensor, contexts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Street maps [Q, 36, C], each attended with each of its own K contexts [Q, K, C]:
        (query vectors [Q, K, C], attention [Q, K, 36]); query() row by row, batched."""
        weights = torch.softmax(self.score.shortlist(locations, contexts), dim=2)
        return F.normalize(torch.bmm(weights, locations), dim=2), weights

    def pairwise_distances(self, locations: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        """[A, B]: the distance of street map a (attended with context b) to context b."""
        a, b = locations.shape[0], contexts.shape[0]
        weights = torch.softmax(self.score.pairwise(locations, contexts), dim=2)  # [A, B, L]
        queries = F.normalize(torch.bmm(weights, locations), dim=2)  # [A, B, C]
        return (queries - contexts.unsqueeze(0).expand(a, b, contexts.shape[1])).pow(2).sum(dim=2)

    def forward(
        self, street_regions: torch.Tensor, shop_regions: torch.Tensor, tags: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(distance [B] of each street shot to its row's shop item, street attention [B, 36])."""
        context, _ = self.context(shop_regions, tags)
        query, attention = self.query(self.branches.street_locations(street_regions), context)
        return squared_distance(query, context), attention


class ServedShop(nn.Module):
    """`ynet_shop`: (image uint8 [B, 128, 128, 3], tags [B, V] multi-hot) -> (TagYNet vector
    [B, C] for the index, its tag attention [B, 36], CtxYNet context [B, C] to store per item)."""

    def __init__(self, tag_ynet: TagYNet, ctx_ynet: CtxYNet) -> None:
        super().__init__()
        self.tag_ynet = tag_ynet
        self.ctx_ynet = ctx_ynet

    def forward(self, image: torch.Tensor, tags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        regions = self.tag_ynet.regions(image)
        branches = self.tag_ynet.branches
        embedding, attention = branches.shop_embedding(branches.shop_locations(regions), tags)
        context, _ = self.ctx_ynet.context(regions, tags)
        return embedding, attention, context


class ServedStreet(nn.Module):
    """`ynet_street`: image uint8 [B, 128, 128, 3] -> (TagYNet vector [B, C] to search the index
    with, CtxYNet street map [B, 36, C] for ctx_ynet)."""

    def __init__(self, tag_ynet: TagYNet, ctx_ynet: CtxYNet) -> None:
        super().__init__()
        self.tag_ynet = tag_ynet
        self.ctx_ynet = ctx_ynet

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        regions = self.tag_ynet.regions(image)
        embedding = street_embedding(self.tag_ynet.branches.street_locations(regions))
        return embedding, self.ctx_ynet.branches.street_locations(regions)


class ServedContextRescorer(nn.Module):
    """`ctx_ynet`, no batch dimension: (street maps [Q, 36, C], query_index [N] int32 (each
    candidate's query row), candidate contexts [N, C]) -> (distance [N], attention [N, 36])."""

    def __init__(self, ctx_ynet: CtxYNet) -> None:
        super().__init__()
        self.ctx_ynet = ctx_ynet

    def forward(
        self, locations: torch.Tensor, query_index: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = locations.index_select(0, query_index.to(torch.long))
        query, attention = self.ctx_ynet.query(rows, context)
        return squared_distance(query, context), attention

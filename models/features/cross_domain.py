"""Cross-domain features and ranks (TagYNet, CtxYNet), shared by training and evaluation.

Frozen-trunk features of a street/shop split, the first-stage distances and the CtxYNet re-rank
of their top K, and top-k accuracy over the rank of each street shot's one correct shop image.
Training (models/train/ynet.py) selects its epochs with these on validation products and the
evaluation (models/eval/cross_domain.py) reports them on TEST; nothing here imports either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from amcsearch.runtime.contract import CROSS_DOMAIN_TAG_WEIGHT
from torch import nn

from models.corpus.street_shop import StreetShopSplit, tag_matrix
from models.nets.image_encoder import ImageEncoder, cells_from_regions, regions_from_map
from models.nets.ynet import CtxYNet, TagYNet, grid_features, street_embedding

KS = (1, 5, 10, 20, 50, 100)
RERANK_K = 100


@dataclass
class DomainFeatures:
    """Frozen-trunk features of one street/shop split, computed once."""

    shop_regions: torch.Tensor  # [P, 36, 256] grid features
    shop_head: torch.Tensor  # [P, 1408] the image encoder's global-head input
    street_regions: torch.Tensor  # [S, 36, 256]
    street_head: torch.Tensor  # [S, 1408]
    street_product: torch.Tensor  # [S] long: each shot's product row
    tags: torch.Tensor  # [P, V] multi-hot


@torch.no_grad()
def trunk_features(trunk: nn.Module, pixels: np.ndarray, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(grid features [N, 36, 256] for the Y, global-head input [N, 1408]: what ImageEncoder.encode
    computes before its head) of uint8 pixels through an image encoder's trunk, in eval mode."""
    trunk.eval()
    regions, heads = [], []
    for start in range(0, len(pixels), batch_size):
        fmap = trunk(torch.from_numpy(np.ascontiguousarray(pixels[start : start + batch_size])))
        pooled = torch.cat([fmap.mean(dim=(2, 3)), fmap.amax(dim=(2, 3))], dim=1)
        regions.append(grid_features(fmap))
        heads.append(torch.cat([cells_from_regions(regions_from_map(fmap)).flatten(1), pooled], dim=1))
    return torch.cat(regions), torch.cat(heads)


def domain_features(trunk: nn.Module, split: StreetShopSplit, keyword_vocab: list[str]) -> DomainFeatures:
    shop_regions, shop_head = trunk_features(trunk, split.shop_pixels)
    street_regions, street_head = trunk_features(trunk, split.street_pixels)
    return DomainFeatures(
        shop_regions=shop_regions,
        shop_head=shop_head,
        street_regions=street_regions,
        street_head=street_head,
        street_product=torch.from_numpy(split.street_product.astype(np.int64)),
        tags=torch.from_numpy(tag_matrix(split.products, keyword_vocab)),
    )


def global_vectors(encoder: ImageEncoder, head_input: torch.Tensor) -> torch.Tensor:
    """The global embedding from precomputed head inputs (ImageEncoder's own head, L2)."""
    return F.normalize(encoder.head(head_input), dim=1)


def cosine_distances(queries: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """[Q, P] squared L2 between unit vectors: 2 - 2 cos."""
    return 2.0 - 2.0 * queries @ items.t()


def global_distances(encoder: ImageEncoder, feats: DomainFeatures) -> torch.Tensor:
    """[S, P] distances from every street shot to every shop image by `encoder`'s global embedding."""
    return cosine_distances(global_vectors(encoder, feats.street_head), global_vectors(encoder, feats.shop_head))


def rank_of_truth(distances: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """int64 [Q]: 0-based position of each query's correct item when [Q, P] distances are
    sorted ascending (ties ordered by item row, as a stable sort would)."""
    true_distance = distances.gather(1, truth.view(-1, 1))
    columns = torch.arange(distances.shape[1]).view(1, -1)
    ahead = (distances < true_distance) | ((distances == true_distance) & (columns < truth.view(-1, 1)))
    return ahead.sum(dim=1).numpy().astype(np.int64)


def top_k_accuracy(ranks: np.ndarray, ks: tuple[int, ...] = KS) -> dict[int, float]:
    """Share of queries whose correct item is within the first k, per k."""
    return {k: float(np.mean(ranks < k)) if len(ranks) else 0.0 for k in ks}


@torch.no_grad()
def tag_ynet_vectors(model: TagYNet, feats: DomainFeatures) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(street vectors [S, C], shop vectors [P, C], shop tag attention [P, 36])."""
    model.eval()
    branches = model.branches
    street = street_embedding(branches.street_locations(feats.street_regions))
    shop, attention = branches.shop_embedding(branches.shop_locations(feats.shop_regions), feats.tags)
    return street, shop, attention


@torch.no_grad()
def context_distances(
    model: CtxYNet, locations: torch.Tensor, contexts: torch.Tensor, shortlist: torch.Tensor, chunk: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """CtxYNet on a short list: (distances [Q, K], attention [Q, K, 36]) of street maps [Q, 36, C]
    to the contexts [P, C] of their candidates shortlist [Q, K]. Each query's map is attended
    with all its K contexts in one product (CtxYNet.shortlist_query), never copied K times."""
    distances, attentions = [], []
    for start in range(0, locations.shape[0], chunk):
        context = contexts[shortlist[start : start + chunk]]  # [q, K, C]
        query, attention = model.shortlist_query(locations[start : start + chunk], context)
        distances.append((query - context).pow(2).sum(dim=2))
        attentions.append(attention)
    return torch.cat(distances), torch.cat(attentions)


@torch.no_grad()
def ctx_ynet_ranks(
    model: CtxYNet,
    feats: DomainFeatures,
    first_distances: torch.Tensor,
    k: int = RERANK_K,
    tag_weight: float = CROSS_DOMAIN_TAG_WEIGHT,
) -> np.ndarray:
    """Ranks after CtxYNet re-sorts the first stage's (TagYNet's) top k by CtxYNet's distance plus
    tag_weight times the first stage's, as the gateway does (tag_weight 0: CtxYNet's alone); a
    query whose correct item is not in the short list keeps its first-stage rank (>= k: a miss at
    every reported k <= k)."""
    model.eval()
    k = min(k, first_distances.shape[1])
    truth = feats.street_product
    shortlist = torch.argsort(first_distances, dim=1, stable=True)[:, :k]
    contexts, _ = model.context(feats.shop_regions, feats.tags)
    locations = model.branches.street_locations(feats.street_regions)
    distances, _ = context_distances(model, locations, contexts, shortlist)
    distances = distances + tag_weight * first_distances.gather(1, shortlist)
    ranks = rank_of_truth(first_distances, truth)
    listed = (shortlist == truth.view(-1, 1)).numpy()
    in_list = listed.any(axis=1)
    true_distance = distances[torch.from_numpy(listed)]
    rows = torch.from_numpy(np.flatnonzero(in_list))
    ahead = (distances[rows] < true_distance.view(-1, 1)).sum(dim=1).numpy()
    ranks[in_list] = ahead
    return ranks


def validation_score(ranks: np.ndarray) -> float:
    """One number for model selection: the mean of top-1, -5, -10 and -20 accuracy."""
    accuracy = top_k_accuracy(ranks, (1, 5, 10, 20))
    return float(np.mean(list(accuracy.values())))

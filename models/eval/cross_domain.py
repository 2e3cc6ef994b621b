"""Cross-domain search (TagYNet, CtxYNet): street shots of held-out products against their shop images.

Each TEST street shot queries the gallery of every TEST shop image; its one correct item is its
product's shop image. Top-k accuracy = the share of queries with the correct item among the first
k (the metric of the authors' code), for:
- global embedding, untrained: the make-models image encoder as it is (never saw a street shot);
- global embedding, trained: the same encoder with its global head retrained on street/shop pairs;
- TagYNet: average-pooled street map against tag-attended shop vectors;
- CtxYNet: TagYNet's top K (100) re-ranked by the candidate-conditioned street attention.
The attention diagnostic reports the attention mass on the product's own regions (the grid cells
its objects cover, not the distractors or the clutter) against uniform attention's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.corpus.street_shop import StreetShopSplit, tag_matrix
from models.nets.image_encoder import ImageEncoder, cells_from_regions, count_parameters, regions_from_map
from models.nets.ynet import CtxYNet, TagYNet, grid_features, street_embedding

log = logging.getLogger(__name__)

KS = (1, 5, 10, 20, 50, 100)
RERANK_K = 100
TRUE_REGION = 0.1
"""A region belongs to the product when its objects cover at least this share of it."""


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
    model: CtxYNet, locations: torch.Tensor, contexts: torch.Tensor, shortlist: torch.Tensor, chunk: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """CtxYNet on a short list: (distances [Q, K], attention [Q, K, 36]) of street maps [Q, 36, C]
    to the contexts [P, C] of their candidates shortlist [Q, K]."""
    distances, attentions = [], []
    for start in range(0, locations.shape[0], chunk):
        rows = shortlist[start : start + chunk]
        q, k = rows.shape
        maps = locations[start : start + chunk].unsqueeze(1).expand(q, k, *locations.shape[1:])
        context = contexts[rows.reshape(-1)]
        query, attention = model.query(maps.reshape(q * k, *locations.shape[1:]), context)
        distances.append((query - context).pow(2).sum(dim=1).view(q, k))
        attentions.append(attention.view(q, k, -1))
    return torch.cat(distances), torch.cat(attentions)


@torch.no_grad()
def ctx_ynet_ranks(
    model: CtxYNet, feats: DomainFeatures, first_distances: torch.Tensor, k: int = RERANK_K
) -> np.ndarray:
    """Ranks after CtxYNet re-sorts the first stage's top k; a query whose correct item is not in
    the short list keeps its first-stage rank (>= k: a miss at every reported k <= k)."""
    model.eval()
    k = min(k, first_distances.shape[1])
    truth = feats.street_product
    shortlist = torch.argsort(first_distances, dim=1, stable=True)[:, :k]
    contexts, _ = model.context(feats.shop_regions, feats.tags)
    locations = model.branches.street_locations(feats.street_regions)
    distances, _ = context_distances(model, locations, contexts, shortlist)
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


@torch.no_grad()
def attention_mass(
    attention: torch.Tensor, coverage: np.ndarray, threshold: float = TRUE_REGION
) -> tuple[float, float]:
    """(mean attention mass on the regions where coverage >= threshold, the same for uniform
    attention): attention [N, 36], coverage [N, 36]."""
    inside = torch.from_numpy(coverage >= threshold).to(attention.dtype)
    keep = inside.sum(dim=1) > 0
    mass = (attention * inside).sum(dim=1)[keep]
    uniform = inside.mean(dim=1)[keep]
    return float(mass.mean()), float(uniform.mean())


@torch.no_grad()
def evaluate_cross_domain(
    split: StreetShopSplit,
    keyword_vocab: list[str],
    image_encoder: ImageEncoder,
    trained_global: ImageEncoder,
    tag_ynet: TagYNet,
    ctx_ynet: CtxYNet,
    k: int = RERANK_K,
) -> dict[str, Any]:
    """Top-k rows per method, the attention diagnostics and the model sizes on `split` (TEST);
    image_encoder is the make-models encoder, evaluated as it is (the "untrained" row)."""
    feats = domain_features(tag_ynet.trunk, split, keyword_vocab)
    truth = feats.street_product
    rows: list[dict[str, Any]] = []

    def add(name: str, ranks: np.ndarray) -> None:
        rows.append({"method": name, **{f"top-{key}": v for key, v in top_k_accuracy(ranks).items()}})
        log.info("cross-domain %s: %s", name, rows[-1])

    untrained_feats = domain_features(image_encoder.trunk, split, keyword_vocab)
    add(
        "Global embedding, untrained (make-models image encoder)",
        rank_of_truth(
            cosine_distances(
                global_vectors(image_encoder, untrained_feats.street_head),
                global_vectors(image_encoder, untrained_feats.shop_head),
            ),
            truth,
        ),
    )
    trained_feats = domain_features(trained_global.trunk, split, keyword_vocab)
    add(
        "Global embedding, trained on street/shop",
        rank_of_truth(
            cosine_distances(
                global_vectors(trained_global, trained_feats.street_head),
                global_vectors(trained_global, trained_feats.shop_head),
            ),
            truth,
        ),
    )
    street, shop, tag_attention = tag_ynet_vectors(tag_ynet, feats)
    first = cosine_distances(street, shop)
    add("TagYNet", rank_of_truth(first, truth))
    add(f"CtxYNet (re-ranks TagYNet's top {k})", ctx_ynet_ranks(ctx_ynet, feats, first, k))

    ctx_ynet.eval()
    contexts, _ = ctx_ynet.context(feats.shop_regions, feats.tags)
    _, street_attention = ctx_ynet.query(ctx_ynet.branches.street_locations(feats.street_regions), contexts[truth])
    diagnostics = {
        "street_product": attention_mass(street_attention, split.street_product_coverage),
        "street_distractors": attention_mass(street_attention, split.street_distractor_coverage),
        "shop_product": attention_mass(tag_attention, split.shop_product_coverage),
        "shop_accessories": attention_mass(tag_attention, split.shop_accessory_coverage),
    }
    return {
        "rows": rows,
        "diagnostics": diagnostics,
        "queries": int(len(truth)),
        "gallery": int(len(split.products)),
        "parameters": {
            "global embedding": count_parameters(trained_global),
            "TagYNet": count_parameters(tag_ynet),
            "CtxYNet": count_parameters(ctx_ynet),
        },
    }


def format_table(
    result: dict[str, Any], training: dict[str, Any] | None = None, exports: dict[str, dict[str, Any]] | None = None
) -> str:
    """The markdown of the cross-domain section: accuracy, attention diagnostics, training and sizes."""
    lines = [f"{result['queries']} street queries, a gallery of {result['gallery']} shop images.", ""]
    lines += ["| method | " + " | ".join(f"top-{k}" for k in KS) + " |", "| --- |" + " --- |" * len(KS)]
    for row in result["rows"]:
        lines.append(f"| {row['method']} | " + " | ".join(f"{row[f'top-{k}']:.3f}" for k in KS) + " |")
    d = result["diagnostics"]
    lines += [
        "",
        "| attention diagnostic | attention mass | uniform attention |",
        "| --- | --- | --- |",
        f"| street shots, CtxYNet's query attention (context: the true item), on the product's regions"
        f" | {d['street_product'][0]:.4f} | {d['street_product'][1]:.4f} |",
        f"| street shots, the same attention on the distractor objects' regions"
        f" | {d['street_distractors'][0]:.4f} | {d['street_distractors'][1]:.4f} |",
        f"| shop images, TagYNet's tag attention on the product's regions"
        f" | {d['shop_product'][0]:.4f} | {d['shop_product'][1]:.4f} |",
        f"| shop images, the same attention on the untagged accessory's regions"
        f" | {d['shop_accessories'][0]:.4f} | {d['shop_accessories'][1]:.4f} |",
    ]
    models = (training or {}).get("models", {})
    if models:
        lines += ["", "| model | parameters (trained) | training |", "| --- | --- | --- |"]
        names = {"global": "global embedding (head retrained)", "tag_ynet": "TagYNet", "ctx_ynet": "CtxYNet"}
        for key, name in names.items():
            info = models.get(key, {})
            lines.append(
                f"| {name} | {info.get('parameters', 0):,} ({info.get('trained_parameters', 0):,})"
                f" | {info.get('seconds', 0):.0f} s |"
            )
        lines.append(
            f"\nTrunk features of the TRAIN images: {training.get('features_seconds', 0):.0f} s; "
            f"{training.get('train_products', 0)} products trained on, "
            f"{training.get('validation_products', 0)} held out for model selection."
        )
    served = {k: v for k, v in (exports or {}).items() if k in ("ynet_shop", "ynet_street", "ctx_ynet")}
    if served:
        lines.append(
            "Served: "
            + ", ".join(
                f"{k} {v['parameters']:,} parameters ({v['model_pt_bytes'] / 1e6:.2f} MB)" for k, v in served.items()
            )
            + "."
        )
    return "\n".join(lines)

"""Cross-domain search (TagYNet, CtxYNet): street shots of held-out products against their shop images.

Each TEST street shot queries the gallery of every TEST shop image; its one correct item is its
product's shop image. Top-k accuracy = the share of queries with the correct item among the first
k (the metric of the authors' code), for:
- global embedding, untrained: the make-models image encoder as it is (never saw a street shot);
- global embedding, trained: the same encoder with its global head retrained on street/shop pairs;
- TagYNet: average-pooled street map against tag-attended shop vectors;
- CtxYNet: TagYNet's top K (100) re-ranked by the candidate-conditioned street attention: by
  CtxYNet's distance plus CROSS_DOMAIN_TAG_WEIGHT times TagYNet's, as served, and (a row for
  the record) by CtxYNet's distance alone.
The attention diagnostic reports the attention mass on the product's own regions (the grid cells
its objects cover, not the distractors or the clutter) against uniform attention's.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from amcsearch.runtime.contract import CROSS_DOMAIN_TAG_WEIGHT

from models.corpus.street_shop import StreetShopSplit
from models.features.cross_domain import (
    KS,
    RERANK_K,
    cosine_distances,
    ctx_ynet_ranks,
    domain_features,
    global_distances,
    rank_of_truth,
    tag_ynet_vectors,
    top_k_accuracy,
)
from models.nets.image_encoder import ImageEncoder, count_parameters
from models.nets.ynet import CtxYNet, TagYNet

log = logging.getLogger(__name__)

TRUE_REGION = 0.1
"""A region belongs to the product when its objects cover at least this share of it."""


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
        rank_of_truth(global_distances(image_encoder, untrained_feats), truth),
    )
    trained_feats = domain_features(trained_global.trunk, split, keyword_vocab)
    add(
        "Global embedding, trained on street/shop",
        rank_of_truth(global_distances(trained_global, trained_feats), truth),
    )
    street, shop, tag_attention = tag_ynet_vectors(tag_ynet, feats)
    first = cosine_distances(street, shop)
    add("TagYNet", rank_of_truth(first, truth))
    add(
        f"CtxYNet (re-ranks TagYNet's top {k} by d_ctx + {CROSS_DOMAIN_TAG_WEIGHT:g} d_tag; served)",
        ctx_ynet_ranks(ctx_ynet, feats, first, k),
    )
    add(f"CtxYNet's distance alone (re-ranks TagYNet's top {k})", ctx_ynet_ranks(ctx_ynet, feats, first, k, 0.0))

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
        budget = training.get("budget", {})
        lines += [
            "",
            "| model | parameters (trained) | training | epochs: kept / run / budget |",
            "| --- | --- | --- | --- |",
        ]
        names = {"global": "global embedding (head retrained)", "tag_ynet": "TagYNet", "ctx_ynet": "CtxYNet"}
        budgets = {"global": "global_epochs", "tag_ynet": "tag_epochs", "ctx_ynet": "ctx_epochs"}
        for key, name in names.items():
            info = models.get(key, {})
            epochs = " / ".join(
                str(x) for x in (info.get("best_epoch"), info.get("epochs_run"), budget.get(budgets[key]))
            )
            lines.append(
                f"| {name} | {info.get('parameters', 0):,} ({info.get('trained_parameters', 0):,})"
                f" | {info.get('seconds', 0):.0f} s | {epochs} |"
            )
        lines.append(
            f"\nTrunk features of the TRAIN images: {training.get('features_seconds', 0):.0f} s; "
            f"{training.get('train_products', 0)} products trained on, "
            f"{training.get('validation_products', 0)} held out for model selection (their street shots"
            " queried every train product's shop image). Each model keeps its epoch with the best validation"
            " score and stops once it has not improved for its patience (models/train/ynet.py)."
        )
        lines += validation_table(training)
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


def validation_table(training: dict[str, Any]) -> list[str]:
    """Markdown lines: the top-k of each model on the held-out TRAIN products that chose its epoch
    (training's own figures, from the manifest), and how CtxYNet's Y was set up."""
    scores = training.get("validation_top_k") or {}
    if not scores:
        return []
    names = {
        "global": "global embedding, trained",
        "tag_ynet": "TagYNet",
        "ctx_ynet": "CtxYNet (d_ctx + w d_tag; served)",
        "ctx_ynet_alone": "CtxYNet's distance alone",
    }
    ks = sorted({int(k) for accuracy in scores.values() for k in accuracy})
    lines = [
        "",
        "On the validation queries (training's model selection, not TEST):",
        "",
        "| method | " + " | ".join(f"top-{k}" for k in ks) + " |",
        "| --- |" + " --- |" * len(ks),
    ]
    for key, name in names.items():
        if key in scores:
            accuracy = {int(k): v for k, v in scores[key].items()}
            lines.append(f"| {name} | " + " | ".join(f"{accuracy[k]:.3f}" for k in ks) + " |")
    ctx_init = (training.get("budget") or {}).get("ctx_init")
    if ctx_init:
        lines.append(f"\nCtxYNet's Y: `{ctx_init}` (models/train/ynet.py, CTX_INITS).")
    return lines

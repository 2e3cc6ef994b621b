"""Composed-query retrieval (TIRG's protocol): Recall@K on the TEST split.

Each query (reference image + modification text) is composed into a 384-d vector and compared by
cosine with every image of the split, the query's own reference image excluded; a hit at K is any
of the top K images whose scene label equals the target's (identical scenes share a label).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

KS = (1, 5, 10, 50)
METHOD_NAMES = {
    "text_only": "Text only",
    "image_only": "Image only",
    "concat": "Concat",
    "tirg": "TIRG",
    "lbf": "Locally bounded",
}
"""Row order and display names: the papers' expected order, weakest first."""


def composed_recall(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    source_index: torch.Tensor,
    target_labels: torch.Tensor,
    ks: tuple[int, ...] = KS,
    chunk: int = 1024,
) -> dict[int, float]:
    """Recall@K for each K: fraction of queries with a target-label image in their top K.

    queries [Q, D] and gallery [N, D] are compared by cosine; gallery row source_index[q] is
    excluded for query q.
    """
    q_all = F.normalize(queries.float(), dim=1)
    g = F.normalize(gallery.float(), dim=1)
    k_max = min(max(ks), g.shape[0] - 1)
    hits = dict.fromkeys(ks, 0)
    for start in range(0, q_all.shape[0], chunk):
        q = q_all[start : start + chunk]
        sims = q @ g.T
        rows = torch.arange(q.shape[0])
        sims[rows, source_index[start : start + chunk]] = float("-inf")
        top = sims.topk(k_max, dim=1).indices
        match = gallery_labels[top] == target_labels[start : start + chunk, None]
        first = torch.where(match.any(1), match.float().argmax(1), torch.full_like(rows, k_max))
        for k in ks:
            hits[k] += int((first < k).sum())
    n = max(q_all.shape[0], 1)
    return {k: hits[k] / n for k in ks}


@torch.no_grad()
def compose_all(composer: nn.Module, feats: Any, query_rows: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Composed vectors [Q, 384] for the given rows of a ComposedFeatures (eval mode)."""
    composer.eval()
    out = []
    for start in range(0, len(query_rows), batch_size):
        out.append(composer(*feats.inputs(query_rows[start : start + batch_size])))
    return torch.cat(out) if out else torch.zeros(0, 384)


def evaluate_composed(
    split: Any,
    composers: dict[str, nn.Module],
    image_encoder: nn.Module,
    text_encoder: nn.Module,
    tokenizer: Any,
) -> list[dict[str, Any]]:
    """Rows {method, key, R@1, R@5, R@10, R@50, queries} on a split (a Corpus means its TEST split).

    `composers` maps the train_composers keys to modules; a "composer" entry (the exported one)
    is reported through the `exported` flag of its row rather than as a row of its own.
    """
    from models.train.composer import precompute_features

    if hasattr(split, "test"):
        split = split.test
    feats = precompute_features(split, image_encoder, text_encoder, tokenizer)
    rows_all = torch.arange(feats.n_queries)
    exported = composers.get("composer")
    table = []
    for key, name in METHOD_NAMES.items():
        if key not in composers:
            continue
        vectors = compose_all(composers[key], feats, rows_all)
        recall = composed_recall(vectors, feats.image_emb, feats.labels, feats.source, feats.target_labels)
        row: dict[str, Any] = {"method": name, "key": key}
        row.update({f"R@{k}": round(v, 4) for k, v in recall.items()})
        row["queries"] = feats.n_queries
        row["exported"] = composers[key] is exported
        table.append(row)
        log.info("composed %s: %s", name, recall)
    return table


def format_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of evaluate_composed rows."""
    lines = ["| method | R@1 | R@5 | R@10 | R@50 |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        mark = " (exported)" if r.get("exported") else ""
        lines.append(f"| {r['method']}{mark} | {r['R@1']:.3f} | {r['R@5']:.3f} | {r['R@10']:.3f} | {r['R@50']:.3f} |")
    return "\n".join(lines)

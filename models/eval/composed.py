"""Composed-query retrieval (TIRG's protocol): Recall@K on the TEST split.

Each query (reference image + modification text) is composed into a 384-d vector and compared by
cosine with every image of the split, the query's own reference image excluded; a hit at K is any
of the top K images whose scene label equals the target's (identical scenes share a label).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from models.features.composed import compose_all, composed_recall, precompute_features

log = logging.getLogger(__name__)

METHOD_NAMES = {
    "text_only": "Text only",
    "image_only": "Image only",
    "concat": "Concat",
    "tirg": "TIRG",
    "lbf": "Locally bounded",
}
"""Row order and display names: the papers' expected order, weakest first."""


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

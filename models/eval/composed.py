"""Composed-query retrieval (TIRG's protocol): Recall@K on the TEST split.

Each query (reference image + modification text) is composed into a 384-d vector and compared by
cosine with every image of the split, the query's own reference image excluded; a hit at K is any
of the top K images whose scene label equals the target's (identical scenes share a label).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from models.features.composed import compose_all, first_hit_ranks, precompute_features, recall_at

log = logging.getLogger(__name__)

METHOD_NAMES = {
    "text_only": "Text only",
    "image_only": "Image only",
    "concat": "Concat",
    "tirg": "TIRG, global features",
    "tirg_grid": "TIRG, region grid",
    "lbf": "Locally bounded",
}
"""Row order and display names: the papers' expected order, weakest first. TIRG comes twice: on
the pooled features, and on the 6x6 region grid as the authors' CSS model (TIRGLastConv)."""

PAPER_ORDER = (("concat", "tirg_grid"), ("tirg_grid", "lbf"), ("concat", "tirg"))
"""Each pair (weaker, stronger) as the papers report them: TIRG beats concatenation, the locally
bounded composer beats TIRG. TIRG is the authors' CSS model, on the region grid
(docs/decisions/0014-tirg-on-the-region-grid.md); the last row is the same claim for TIRG on the
pooled features, kept to show what the grid changes."""
BOOTSTRAP_RESAMPLES = 2000


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
        first = first_hit_ranks(vectors, feats.image_emb, feats.labels, feats.source, feats.target_labels)
        recall = recall_at(first)
        row: dict[str, Any] = {"method": name, "key": key}
        row.update({f"R@{k}": round(v, 4) for k, v in recall.items()})
        row["queries"] = feats.n_queries
        row["hits@1"] = (first == 0).numpy()
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


def paired_difference(stronger: np.ndarray, weaker: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Mean of stronger - weaker over the same queries (hits as 0/1) and its 95% paired-bootstrap
    interval: the queries are resampled with replacement, both methods keep their own answer."""
    diff = stronger.astype(np.float64) - weaker.astype(np.float64)
    if not len(diff):
        return 0.0, 0.0, 0.0
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (BOOTSTRAP_RESAMPLES, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)


def ordering_table(rows: list[dict[str, Any]]) -> str:
    """The papers' orderings at R@1, paired over the same TEST queries, with what the queries can
    resolve: a difference whose interval holds 0 is not told apart from a tie."""
    by_key = {r["key"]: r for r in rows}
    lines = [
        "| papers' ordering | R@1 difference | 95% interval (paired bootstrap) | verdict |",
        "| --- | --- | --- | --- |",
    ]
    for weaker, stronger in PAPER_ORDER:
        if weaker not in by_key or stronger not in by_key:
            continue
        mean, low, high = paired_difference(by_key[stronger]["hits@1"], by_key[weaker]["hits@1"])
        if low > 0:
            verdict = "holds"
        elif high < 0:
            verdict = "reversed"
        else:
            verdict = "holds within noise" if mean >= 0 else "reversed within noise"
        name = f"{by_key[stronger]['method']} > {by_key[weaker]['method']}"
        lines.append(f"| {name} | {mean:+.3f} | {low:+.3f} .. {high:+.3f} | {verdict} |")
    return "\n".join(lines)

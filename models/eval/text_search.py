"""Text search on the TEST split (AMC Tables 1-2): rank each query's ~50 candidates.

Rankers: keyword-only (BM25 over the noisy keywords), visual-only (cosine of the query embedding
and the global image embedding), DSSM-Img, DSSM-Key, ImgATT (VAN only), KeyATT (LAN only), late
fusion (w * ImgATT + (1 - w) * KeyATT, w tuned on the held-out part of the TRAIN split's queries,
models.train.amc.validation_split) and AMC Full. Metrics per query, averaged: NDCG@5..25 on the
graded relevance; P@5, MAP, MRR and AUC with relevance > 0 as positive.

Also: AMC Full's mean modality weights per query family, and its attention diagnostics (LAN mass
on the image's true keywords and on the query's own words; VAN mass inside the queried cell of
layout queries, over the fully relevant candidates).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np
import torch
from torch import nn

from models.corpus.vocab import CELLS
from models.metrics import BM25, auc, average_precision, ndcg_at_k, precision_at_k, reciprocal_rank, tokenize
from models.train.amc import (
    ImageFeatures,
    QueryFeatures,
    batch_outputs,
    image_features,
    query_features,
    score_all,
    validation_split,
)

log = logging.getLogger(__name__)

NDCG_KS = (5, 10, 15, 20, 25)
FAMILIES = ("layout", "attribute", "theme", "mixed")
FUSION_GRID = tuple(round(0.05 * i, 2) for i in range(21))
METHODS = (
    ("keyword", "Keyword only (BM25)"),
    ("visual", "Visual only (global embedding)"),
    ("dssm_key", "DSSM-Key"),
    ("dssm_img", "DSSM-Img"),
    ("key_att", "KeyATT (LAN only)"),
    ("img_att", "ImgATT (VAN only)"),
    ("late_fusion", "Late fusion"),
    ("amc_full", "AMC Full"),
)
_CELL_PATTERN = re.compile("|".join(CELLS))


def ranking_metrics(scores: torch.Tensor, queries: QueryFeatures) -> dict[str, float]:
    """Mean metrics over queries; ties are broken by candidate order (stable sort)."""
    per: dict[str, list[float]] = {f"NDCG@{k}": [] for k in NDCG_KS}
    per.update({"P@5": [], "MAP": [], "MRR": [], "AUC": []})
    for row in range(len(queries)):
        n = int(queries.valid[row].sum())
        order = np.argsort(-scores[row, :n].double().numpy(), kind="stable")
        rel = queries.relevance[row, :n].numpy()[order]
        for k in NDCG_KS:
            per[f"NDCG@{k}"].append(ndcg_at_k(rel, k))
        per["P@5"].append(precision_at_k(rel, 5))
        per["MAP"].append(average_precision(rel))
        per["MRR"].append(reciprocal_rank(rel))
        per["AUC"].append(auc(rel))
    return {k: float(np.nanmean(v)) if len(v) else 0.0 for k, v in per.items()}


def bm25_scores(split: Any, queries: list[Any], features: QueryFeatures) -> torch.Tensor:
    """BM25 of the query words against each candidate's noisy keyword list (fit on the split)."""
    documents = [[t for word, _ in r.noisy_keywords for t in tokenize(word)] for r in split.images]
    bm25 = BM25(documents)
    scores = torch.full(features.candidates.shape, float("-inf"), dtype=torch.float64)
    for row, query in enumerate(queries):
        n = len(query.candidate_ids)
        scores[row, :n] = torch.from_numpy(bm25.score(tokenize(query.text), features.candidates[row, :n].tolist()))
    return scores


def visual_scores(images: ImageFeatures, features: QueryFeatures) -> torch.Tensor:
    emb = torch.nn.functional.normalize(images.embedding, dim=1)
    scores = torch.einsum("qd,qcd->qc", features.embedding, emb[features.candidates])
    return scores.masked_fill(~features.valid, float("-inf"))


def tune_fusion_weight(img: torch.Tensor, key: torch.Tensor, held: QueryFeatures) -> float:
    """The w of w * ImgATT + (1 - w) * KeyATT with the best mean NDCG@5 on held-out TRAIN queries."""
    best_w, best = 0.0, -1.0
    for w in FUSION_GRID:
        value = ranking_metrics(w * img + (1 - w) * key, held)["NDCG@5"]
        if value > best + 1e-12:
            best_w, best = w, value
    return best_w


@torch.no_grad()
def amc_diagnostics(
    module: nn.Module, split: Any, queries: list[Any], images: ImageFeatures, features: QueryFeatures
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(mean modality weights per family, attention diagnostics) of an AMC Full module."""
    module.eval()
    weights: dict[str, list[torch.Tensor]] = {f: [] for f in FAMILIES}
    true_mass, query_mass, prior_true, prior_query = [], [], [], []
    cell_mass: list[float] = []
    for row, query in enumerate(queries):
        n = len(query.candidate_ids)
        _, w, region_att, keyword_att = (x[0, :n] for x in batch_outputs(module, images, features, torch.tensor([row])))
        weights.setdefault(query.family, []).append(w)
        words = set(tokenize(query.text))
        cell = _CELL_PATTERN.search(query.text) if query.family == "layout" else None
        for j, image_row in enumerate(features.candidates[row, :n].tolist()):
            record = split.images[image_row]
            if query.relevance[j] <= 0:
                continue
            slots = [w for w, c in sorted(record.noisy_keywords, key=lambda kv: (-kv[1], kv[0]))][
                : keyword_att.shape[1]
            ]
            conf = images.keyword_mask[image_row, : len(slots)]
            prior = conf / conf.sum().clamp(min=1e-9)
            is_true = torch.tensor([s in record.true_keywords for s in slots], dtype=torch.bool)
            in_query = torch.tensor([s in words for s in slots], dtype=torch.bool)
            att = keyword_att[j, : len(slots)]
            true_mass.append(float(att[is_true].sum()))
            prior_true.append(float(prior[is_true].sum()))
            if in_query.any():
                query_mass.append(float(att[in_query].sum()))
                prior_query.append(float(prior[in_query].sum()))
            if cell is not None and query.relevance[j] == 2:
                c = CELLS.index(cell.group(0))
                r0, c0 = 2 * (c // 3), 2 * (c % 3)
                grid = region_att[j].view(6, 6)
                cell_mass.append(float(grid[r0 : r0 + 2, c0 : c0 + 2].sum()))
    weight_rows = []
    for family in FAMILIES:
        if not weights.get(family):
            continue
        w = torch.cat(weights[family])
        weight_rows.append(
            {
                "family": family,
                "visual": round(float(w[:, 0].mean()), 4),
                "keyword": round(float(w[:, 1].mean()), 4),
                "queries": len(weights[family]),
                # Templates repeat: a family of 100 queries may hold a few dozen texts, and one
                # image ranked wrongly for a common text moves the family's mean by several queries.
                "texts": len({q.text for q in queries if q.family == family}),
            }
        )
    diag = [
        {
            "diagnostic": "LAN mass on the image's true keywords (relevant candidates)",
            "model": round(float(np.mean(true_mass)), 4) if true_mass else float("nan"),
            "prior": round(float(np.mean(prior_true)), 4) if prior_true else float("nan"),
            "prior_name": "confidence share",
            "pairs": len(true_mass),
        },
        {
            "diagnostic": "LAN mass on keywords that are query words (relevant candidates)",
            "model": round(float(np.mean(query_mass)), 4) if query_mass else float("nan"),
            "prior": round(float(np.mean(prior_query)), 4) if prior_query else float("nan"),
            "prior_name": "confidence share",
            "pairs": len(query_mass),
        },
        {
            "diagnostic": "VAN mass inside the queried cell (layout queries, relevance 2)",
            "model": round(float(np.mean(cell_mass)), 4) if cell_mass else float("nan"),
            "prior": round(4 / 36, 4),
            "prior_name": "uniform (4 of 36 regions)",
            "pairs": len(cell_mass),
        },
    ]
    return weight_rows, diag


def evaluate_text_search(
    corpus: Any,
    models: dict[str, nn.Module],
    image_encoder: nn.Module,
    text_encoder: nn.Module,
    tokenizer: Any,
    seed: int = 0,
) -> dict[str, Any]:
    """Tables of the TEST split's text queries: {"ranking": rows {method, name, NDCG@5..AUC,
    queries}, "weights": rows {family, visual, keyword, queries}, "diagnostics": rows,
    "late_fusion_weight": w}. `models` holds the train_amc keys; missing ones are skipped."""
    vocab = list(corpus.keyword_vocab)
    test, train = corpus.test, corpus.train
    test_images = image_features(test, image_encoder, text_encoder, tokenizer, vocab)
    test_queries = list(test.text_queries)
    test_features = query_features(test, test_queries, text_encoder, tokenizer)
    scores: dict[str, torch.Tensor] = {
        "keyword": bm25_scores(test, test_queries, test_features),
        "visual": visual_scores(test_images, test_features),
    }
    for key in ("dssm_key", "dssm_img", "key_att", "img_att", "amc_full"):
        if key in models:
            scores[key] = score_all(models[key], test_images, test_features)
    fusion_weight = float("nan")
    if "img_att" in models and "key_att" in models:
        _, held_rows = validation_split(len(train.text_queries), seed)
        held_queries = [train.text_queries[i] for i in held_rows]
        train_images = image_features(train, image_encoder, text_encoder, tokenizer, vocab)
        held = query_features(train, held_queries, text_encoder, tokenizer)
        fusion_weight = tune_fusion_weight(
            score_all(models["img_att"], train_images, held), score_all(models["key_att"], train_images, held), held
        )
        scores["late_fusion"] = fusion_weight * scores["img_att"] + (1 - fusion_weight) * scores["key_att"]
        log.info("late fusion weight (ImgATT share) %.2f, tuned on %d held-out TRAIN queries", fusion_weight, len(held))
    ranking = []
    for key, name in METHODS:
        if key not in scores:
            continue
        row: dict[str, Any] = {"method": key, "name": name}
        row.update({k: round(v, 4) for k, v in ranking_metrics(scores[key], test_features).items()})
        row["queries"] = len(test_queries)
        ranking.append(row)
        log.info("text search %s: NDCG@5 %.4f", name, row["NDCG@5"])
    weights: list[dict[str, Any]] = []
    diagnostics: list[dict[str, Any]] = []
    if "amc_full" in models:
        weights, diagnostics = amc_diagnostics(models["amc_full"], test, test_queries, test_images, test_features)
    return {"ranking": ranking, "weights": weights, "diagnostics": diagnostics, "late_fusion_weight": fusion_weight}


def format_tables(result: dict[str, Any]) -> str:
    """Markdown: the ranking table, the weights per family and the diagnostics."""
    columns = [f"NDCG@{k}" for k in NDCG_KS] + ["P@5", "MAP", "MRR", "AUC"]
    lines = ["| method | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
    for r in result["ranking"]:
        lines.append(f"| {r['name']} | " + " | ".join(f"{r[c]:.4f}" for c in columns) + " |")
    w = result["late_fusion_weight"]
    if w == w:
        lines.append("")
        lines.append(
            f"Late fusion: {w:.2f} x ImgATT + {1 - w:.2f} x KeyATT, the weight tuned on held-out TRAIN queries."
        )
    if result["weights"]:
        lines += [
            "",
            "| query family | mean visual weight w_v | mean keyword weight w_k | queries | distinct texts |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in result["weights"]:
            lines.append(f"| {r['family']} | {r['visual']:.4f} | {r['keyword']:.4f} | {r['queries']} | {r['texts']} |")
    if result["diagnostics"]:
        lines += ["", "| AMC Full attention diagnostic | model | reference | pairs |", "| --- | --- | --- | --- |"]
        for r in result["diagnostics"]:
            lines.append(
                f"| {r['diagnostic']} | {r['model']:.4f} | {r['prior']:.4f} ({r['prior_name']}) | {r['pairs']} |"
            )
    return "\n".join(lines)

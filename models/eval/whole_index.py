"""The protocol users see: each TEST text query ranked over the whole test gallery.

The paper's protocol ranks each query's own ~50 candidates. A Search ranks the whole index: its
candidates come from the index (vector ANN over the global embedding, BM25 over the indexed
keywords, or both merged), and AMC only reorders them. This evaluation runs the service's own
candidate generation in process (models/train/candidates.py: the embedded index engine of
services/amcsearch/search, exact vector search below its HNSW threshold, keyword_index.py's BM25,
the gateway's merge), then AMC Full
over those candidates on the int8 regions the index stores, and grades every ranked image with
the corpus's rule (models.corpus.queries.grade). NDCG@k divides by the ideal DCG of the whole
gallery, not of the returned list.

Diagnostics for the layout family: the recall of the fully relevant images in the candidate
list, and AMC's VAN mass inside the queried cell on every fully relevant image of the gallery.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from amcsearch.runtime.keywords import placement_label
from amcsearch.runtime.quantize import dequantize_regions, quantize_regions
from torch import nn

from models.corpus.queries import grade
from models.metrics import ndcg_against_ideal
from models.train.amc import ImageFeatures, QueryFeatures, batch_outputs, image_features, query_features, score_all
from models.train.candidates import CANDIDATES, candidate_lists, placements

log = logging.getLogger(__name__)

KS = (5, 10)
SOURCES = ("vector", "keyword", "hybrid", "union")
"""Candidate lists: vector ANN, keyword BM25, their reciprocal rank fusion (the service's
default), and their union (up to 2 x CANDIDATES)."""
FAMILIES = ("layout", "attribute", "theme", "mixed")


def placement_accuracy(split: Any, found: list[list[tuple[str, float]]]) -> tuple[float, float]:
    """(precision, recall) of the tagger's placements against the scene graphs."""
    truth = [{placement_label(a, o.cell) for o in r.objects for a in (o.color, o.shape, o.size)} for r in split.images]
    said = [{label for label, _ in row} for row in found]
    hits = sum(len(t & s) for t, s in zip(truth, said, strict=True))
    return hits / max(1, sum(map(len, said))), hits / max(1, sum(map(len, truth)))


def served_features(images: ImageFeatures) -> ImageFeatures:
    """The features as the rescorer sees them from the index: regions through int8 and back."""
    regions, scales = quantize_regions(images.regions.numpy())
    return ImageFeatures(
        embedding=images.embedding,
        regions=torch.from_numpy(dequantize_regions(regions, scales)),
        keyword_index=images.keyword_index,
        keyword_mask=images.keyword_mask,
        vocab_embedding=images.vocab_embedding,
    )


def candidate_features(split: Any, queries: list[Any], base: QueryFeatures, lists: list[list[str]]) -> QueryFeatures:
    """`base` (the queries' embeddings) with each query's candidates replaced by `lists`."""
    width = max((len(ids) for ids in lists), default=1) or 1
    candidates = torch.zeros(len(queries), width, dtype=torch.long)
    relevance = torch.zeros(len(queries), width)
    valid = torch.zeros(len(queries), width, dtype=torch.bool)
    for row, (query, ids) in enumerate(zip(queries, lists, strict=True)):
        rows = [split.index_of(i) for i in ids]
        candidates[row, : len(rows)] = torch.tensor(rows, dtype=torch.long)
        relevance[row, : len(rows)] = torch.tensor(
            [grade(query.spec, split.images[r]) for r in rows], dtype=torch.float
        )
        valid[row, : len(rows)] = True
    return QueryFeatures(base.embedding, candidates, relevance, valid, base.families)


def rank_scores(split: Any, queries: list[Any], features: QueryFeatures, scores: torch.Tensor | None) -> list[dict]:
    """Per query: its family and NDCG@k of the candidates ordered by `scores` (None: as listed)."""
    ideal_of = [sorted((grade(q.spec, r) for r in split.images), reverse=True)[: max(KS)] for q in queries]
    rows = []
    for row, query in enumerate(queries):
        n = int(features.valid[row].sum())
        order = torch.arange(n) if scores is None else torch.argsort(-scores[row, :n], stable=True)
        ranked = features.relevance[row, :n][order].tolist()
        rows.append({"family": query.family, **{k: ndcg_against_ideal(ranked, ideal_of[row], k) for k in KS}})
    return rows


def summarise(rows: list[dict]) -> dict[str, float]:
    """Mean NDCG@k per family and over all queries: {"all@5": ..., "layout@5": ...}."""
    out = {}
    for k in KS:
        out[f"all@{k}"] = float(np.mean([r[k] for r in rows]))
        for family in FAMILIES:
            values = [r[k] for r in rows if r["family"] == family]
            if values:
                out[f"{family}@{k}"] = float(np.mean(values))
    return out


def layout_recall(split: Any, queries: list[Any], lists: list[list[str]], limit: int = CANDIDATES) -> float:
    """Share of each layout query's fully relevant images (up to `limit` of them) that are in
    its candidate list, averaged over the layout queries."""
    values = []
    for query, ids in zip(queries, lists, strict=True):
        if query.family != "layout":
            continue
        relevant = {r.id for r in split.images if grade(query.spec, r) == 2}
        if relevant:
            values.append(len(relevant & set(ids)) / min(len(relevant), limit))
    return float(np.mean(values)) if values else float("nan")


@torch.no_grad()
def van_cell_mass(module: nn.Module, split: Any, queries: list[Any], images: ImageFeatures, base: QueryFeatures):
    """AMC Full's region attention inside the queried cell, on every fully relevant image of the
    gallery, averaged over (layout query, image) pairs; uniform attention gives 4 / 36."""
    layout = [(row, q) for row, q in enumerate(queries) if q.spec.get("kind") == "layout"]
    lists = [[r.id for r in split.images if grade(q.spec, r) == 2] for _, q in layout]
    sub = QueryFeatures(base.embedding[[row for row, _ in layout]], base.candidates, base.relevance, base.valid, [])
    features = candidate_features(split, [q for _, q in layout], sub, lists)
    masses = []
    for row, (_, query) in enumerate(layout):
        n = int(features.valid[row].sum())
        if n == 0:
            continue
        region_att = batch_outputs(module, images, features, torch.tensor([row]))[2][0, :n]
        cell = int(query.spec["cell"])  # 0..8, row-major on the 3 x 3 grid: 2 x 2 regions of the 6 x 6
        r0, c0 = 2 * (cell // 3), 2 * (cell % 3)
        masses.extend(region_att.view(n, 6, 6)[:, r0 : r0 + 2, c0 : c0 + 2].sum(dim=(1, 2)).tolist())
    return float(np.mean(masses)) if masses else float("nan"), len(masses)


def evaluate_whole_index(
    split: Any,
    amc_full: nn.Module,
    image_encoder: nn.Module,
    text_encoder: nn.Module,
    tokenizer: Any,
    vocab: list[str],
    queries: list[Any] | None = None,
    limit: int = CANDIDATES,
    sources: tuple[str, ...] = SOURCES,
    tagger: nn.Module | None = None,
    synonyms: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """{"rows": [{"method", "source", NDCG per family}], "diagnostics": [...]} for the split's
    text queries (or `queries`, e.g. their paraphrases) over its whole gallery; the gallery
    holds `tagger`'s placements when given (as the service indexes it), and the keyword route
    reads `synonyms` (the exported query synonym table) as the gateway does."""
    queries = list(split.text_queries if queries is None else queries)
    raw = image_features(split, image_encoder, text_encoder, tokenizer, vocab)
    images = served_features(raw)
    base = query_features(split, queries, text_encoder, tokenizer)
    rows, diagnostics = [], []
    lists = candidate_lists(split, raw, queries, base.embedding, sources, limit, tagger, synonyms)
    if "vector" in lists:
        vector_only = candidate_features(split, queries, base, [ids[:10] for ids in lists["vector"]])
        rows.append(
            {"method": "ANN only (global embedding, no rescoring)", "source": "vector"}
            | summarise(rank_scores(split, queries, vector_only, None))
        )
    for s in sources:
        features = candidate_features(split, queries, base, lists[s])
        scores = score_all(amc_full, images, features)
        rows.append({"method": "AMC Full", "source": s} | summarise(rank_scores(split, queries, features, scores)))
        diagnostics.append(
            {
                "diagnostic": f"layout: fully relevant images in the {s} candidates (recall)",
                "value": layout_recall(split, queries, lists[s], limit),
            }
        )
        log.info("whole index, AMC Full over %s candidates: NDCG@5 %.4f", s, rows[-1]["all@5"])
    if tagger is not None:
        precision, recall = placement_accuracy(split, placements(tagger, raw.regions))
        diagnostics.append(
            {"diagnostic": "placements: share of the tagger's that the scene has (precision)", "value": precision}
        )
        diagnostics.append(
            {"diagnostic": "placements: share of the scene's that the tagger finds (recall)", "value": recall}
        )
    mass, pairs = van_cell_mass(amc_full, split, queries, images, base)
    diagnostics.append(
        {
            "diagnostic": f"layout: VAN mass inside the queried cell, every fully relevant image ({pairs} pairs; "
            "uniform 0.111)",
            "value": mass,
        }
    )
    return {"rows": rows, "diagnostics": diagnostics, "queries": len(queries), "gallery": len(split.images)}


def format_table(result: dict[str, Any], title_note: str = "") -> str:
    columns = [f"{f}@{k}" for k in KS for f in ("all", *FAMILIES)]
    header = "| method | candidates | " + " | ".join(c.replace("@", " NDCG@") for c in columns) + " |"
    lines = [header, "| " + " | ".join(["---"] * (len(columns) + 2)) + " |"]
    for row in result["rows"]:
        values = " | ".join(f"{row[c]:.4f}" if c in row else "-" for c in columns)
        lines.append(f"| {row['method']} | {row['source']} | {values} |")
    lines += ["", "| layout diagnostic | value |", "| --- | --- |"]
    lines += [f"| {d['diagnostic']} | {d['value']:.4f} |" for d in result["diagnostics"]]
    return "\n".join(lines)


def format_depth_table(depth: list[tuple[int, dict[str, Any]]]) -> str:
    """Per candidate list length: AMC Full's NDCG@5 (all, layout) and the layout recall."""
    lines = [
        "| candidates | all NDCG@5 | layout NDCG@5 | layout recall of fully relevant |",
        "| --- | --- | --- | --- |",
    ]
    for n, result in depth:
        row = result["rows"][-1]
        recall = result["diagnostics"][0]["value"]
        lines.append(f"| {n} | {row['all@5']:.4f} | {row.get('layout@5', float('nan')):.4f} | {recall:.4f} |")
    return "\n".join(lines)


def format_paraphrase_table(
    original: dict[str, Any], reworded: dict[str, Any], unexpanded: dict[str, Any] | None = None
) -> str:
    """NDCG@5 per family of AMC Full on the original and the paraphrased queries, per source;
    with `unexpanded` (the paraphrases without query synonyms), its rows too, as an ablation."""
    columns = [f"{f}@5" for f in ("all", *FAMILIES)]
    lines = [
        "| candidates | queries | " + " | ".join(c.replace("@", " NDCG@") for c in columns) + " |",
        "| " + " | ".join(["---"] * (len(columns) + 2)) + " |",
    ]
    amc = {r["source"]: r for r in original["rows"] if r["method"] == "AMC Full"}
    plain = {r["source"]: r for r in (unexpanded or {}).get("rows", []) if r["method"] == "AMC Full"}
    for row in (r for r in reworded["rows"] if r["method"] == "AMC Full"):
        base = amc[row["source"]]
        lines.append(f"| {row['source']} | original | " + " | ".join(f"{base[c]:.4f}" for c in columns) + " |")
        lines.append(f"| {row['source']} | paraphrased | " + " | ".join(f"{row[c]:.4f}" for c in columns) + " |")
        lines.append(f"| {row['source']} | drop | " + " | ".join(f"{base[c] - row[c]:+.4f}" for c in columns) + " |")
        other = plain.get(row["source"])
        if other is not None:
            label = "paraphrased, no query synonyms (ablation)"
            lines.append(f"| {row['source']} | {label} | " + " | ".join(f"{other[c]:.4f}" for c in columns) + " |")
            lines.append(
                f"| {row['source']} | drop without query synonyms | "
                + " | ".join(f"{base[c] - other[c]:+.4f}" for c in columns)
                + " |"
            )
    return "\n".join(lines)

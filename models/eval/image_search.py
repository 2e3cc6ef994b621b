"""Query by image (Gordo & Larlus): rank each query's candidates by the cosine of global image
embeddings, score against the caption tf-idf proxy with NDCG@k and Pearson correlation.

Rows compare the same architecture untrained (seed-initialised) and trained, and a tf-idf-free
reference: the pixel baseline (cosine of raw downsampled pixels), so that the table says how far
the learned embedding is from what pixels alone give.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.metrics import ndcg_at_k, pearson

log = logging.getLogger(__name__)

KS = (5, 10, 20)


@torch.no_grad()
def image_embeddings(encoder: nn.Module, pixels: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """Global embeddings [N, D] (eval mode) of uint8 pixels [N, 128, 128, 3]."""
    encoder.eval()
    out = []
    for start in range(0, len(pixels), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(pixels[start : start + batch_size]))
        out.append(encoder(chunk)[0])
    return torch.cat(out)


def pixel_embeddings(pixels: np.ndarray) -> torch.Tensor:
    """The no-learning reference: mean-centred 16 x 16 RGB thumbnails, L2-normalised."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float()
    x = F.adaptive_avg_pool2d(x, 16).flatten(1)
    x = x - x.mean(dim=0, keepdim=True)
    return F.normalize(x, dim=1)


def score_embeddings(split: Any, embeddings: torch.Tensor) -> dict[str, float]:
    """NDCG@5/10/20 (mean over queries) and Pearson(cosine, proxy) over all query-candidate pairs."""
    emb = F.normalize(embeddings.float(), dim=1)
    ndcg = {k: [] for k in KS}
    cosines: list[float] = []
    proxies: list[float] = []
    for query in split.image_queries:
        q = emb[split.index_of(query.image_id)]
        rows = torch.tensor([split.index_of(c) for c in query.candidate_ids], dtype=torch.long)
        sims = (emb[rows] @ q).numpy().astype(np.float64)
        rel = np.asarray(query.relevance, dtype=np.float64)
        order = np.argsort(-sims, kind="stable")
        for k in KS:
            ndcg[k].append(ndcg_at_k(rel[order], k))
        cosines.extend(sims.tolist())
        proxies.extend(rel.tolist())
    result = {f"NDCG@{k}": float(np.mean(v)) if v else 0.0 for k, v in ndcg.items()}
    result["Pearson"] = pearson(cosines, proxies) if cosines else 0.0
    return result


def evaluate_image_search(
    split: Any, image_encoder_untrained: nn.Module, image_encoder_trained: nn.Module
) -> list[dict[str, Any]]:
    """Rows {model, NDCG@5, NDCG@10, NDCG@20, Pearson, queries}; a Corpus means its TEST split."""
    if hasattr(split, "test"):
        split = split.test
    rows: list[dict[str, Any]] = []
    candidates = [
        ("pixels (no learning)", lambda: pixel_embeddings(split.pixels)),
        ("image encoder, untrained", lambda: image_embeddings(image_encoder_untrained, split.pixels)),
        ("image encoder, trained", lambda: image_embeddings(image_encoder_trained, split.pixels)),
    ]
    for name, embed in candidates:
        scores = score_embeddings(split, embed())
        row: dict[str, Any] = {"model": name}
        row.update({k: round(v, 4) for k, v in scores.items()})
        row["queries"] = len(split.image_queries)
        rows.append(row)
        log.info("image search %s: %s", name, scores)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of evaluate_image_search rows."""
    lines = [
        "| model | NDCG@5 | NDCG@10 | NDCG@20 | Pearson (cosine vs tf-idf proxy) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['NDCG@5']:.4f} | {r['NDCG@10']:.4f} | {r['NDCG@20']:.4f} | {r['Pearson']:.4f} |"
        )
    return "\n".join(lines)

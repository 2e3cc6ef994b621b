"""Composed-query features and Recall@K (TIRG's protocol), shared by training and evaluation.

models/train/composer.py trains on these features and selects each method's epoch by held-out
R@1; models/eval/composed.py reports Recall@K on the TEST split with the same two functions, so
selection and the report measure alike. Nothing here imports models.train or models.eval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.nets.text_encoder import encode_texts

KS = (1, 5, 10, 50)


@dataclass
class ComposedFeatures:
    """Frozen-encoder features of one split: per image, per unique modification, per query."""

    image_emb: torch.Tensor  # [N, 384] L2-normalised global embeddings (the index)
    regions: torch.Tensor  # [N, 36, 128]
    labels: torch.Tensor  # [N] scene labels
    text_emb: torch.Tensor  # [M, 384] per unique modification text
    tokens: torch.Tensor  # [M, 32, 384]
    token_mask: torch.Tensor  # [M, 32] float
    source: torch.Tensor  # [Q] image row of each query's reference
    target: torch.Tensor  # [Q] image row of each query's target
    text: torch.Tensor  # [Q] row in text_emb of each query's modification
    target_labels: torch.Tensor  # [Q]
    n_gallery: int  # image rows [0, n_gallery) are the split's images, the retrieval gallery
    n_original: int  # query rows [0, n_original) are the split's own composed queries

    @property
    def n_queries(self) -> int:
        return int(self.source.shape[0])

    def inputs(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The five composer inputs for these query rows."""
        s, t = self.source[rows], self.text[rows]
        return self.image_emb[s], self.regions[s], self.text_emb[t], self.tokens[t], self.token_mask[t]


@torch.no_grad()
def image_features(
    image_encoder: nn.Module, pixels: np.ndarray, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """(embedding [N, 384], regions [N, 36, 128]) of uint8 images, in eval mode."""
    image_encoder.eval()
    embs, regs = [], []
    for start in range(0, len(pixels), batch_size):
        emb, reg = image_encoder(torch.from_numpy(np.ascontiguousarray(pixels[start : start + batch_size])))
        embs.append(emb.float())
        regs.append(reg.float())
    return torch.cat(embs), torch.cat(regs)


@dataclass
class SyntheticQueries:
    """Extra training queries: modifications of TRAIN scenes with freshly rendered targets."""

    source_rows: list[int]
    modifications: list[str]
    pixels: np.ndarray  # uint8 [n, 128, 128, 3], the rendered targets
    labels: list[int]  # scene labels, shared with the split's own images where scenes are equal


def precompute_features(
    split: Any,
    image_encoder: nn.Module,
    text_encoder: nn.Module,
    tokenizer: Any,
    extra: SyntheticQueries | None = None,
) -> ComposedFeatures:
    """Features of the split's composed queries, then of `extra` ones (their targets are appended
    after the split's images, outside the retrieval gallery)."""
    image_emb, regions = image_features(image_encoder, split.pixels)
    labels = [r.label for r in split.images]
    queries = split.composed_queries
    sources = [split.index_of(q.source_id) for q in queries]
    targets = [split.index_of(q.target_id) for q in queries]
    mods = [q.modification for q in queries]
    target_labels = [q.target_label for q in queries]
    n_gallery = len(labels)
    if extra is not None and extra.labels:
        extra_emb, extra_regions = image_features(image_encoder, extra.pixels)
        image_emb, regions = torch.cat([image_emb, extra_emb]), torch.cat([regions, extra_regions])
        sources += extra.source_rows
        targets += list(range(n_gallery, n_gallery + len(extra.labels)))
        mods += extra.modifications
        labels += extra.labels
        target_labels += extra.labels
    unique = sorted(set(mods))
    text_emb, tokens = encode_texts(text_encoder, unique, tokenizer=tokenizer)
    _, mask, _ = tokenizer.encode(unique) if unique else (None, np.zeros((0, 32), np.int64), None)
    mask = np.pad(mask, [(0, 0), (0, tokenizer.seq_len - mask.shape[1])])  # the length of encode_texts' tokens
    position = {t: i for i, t in enumerate(unique)}
    assert tokens is not None
    return ComposedFeatures(
        image_emb=F.normalize(image_emb, dim=1),
        regions=regions,
        labels=torch.tensor(labels, dtype=torch.long),
        text_emb=text_emb,
        tokens=tokens,
        token_mask=torch.from_numpy(mask).float(),
        source=torch.tensor(sources, dtype=torch.long),
        target=torch.tensor(targets, dtype=torch.long),
        text=torch.tensor([position[m] for m in mods], dtype=torch.long),
        target_labels=torch.tensor(target_labels, dtype=torch.long),
        n_gallery=n_gallery,
        n_original=len(queries),
    )


def first_hit_ranks(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    source_index: torch.Tensor,
    target_labels: torch.Tensor,
    k_max: int = max(KS),
    chunk: int = 1024,
) -> torch.Tensor:
    """Per query, the rank (0 = first) of its first target-label image, k_max when none is in the
    top k_max. queries [Q, D] and gallery [N, D] are compared by cosine; gallery row
    source_index[q] is excluded for query q."""
    q_all = F.normalize(queries.float(), dim=1)
    g = F.normalize(gallery.float(), dim=1)
    k_max = min(k_max, g.shape[0] - 1)
    ranks = []
    for start in range(0, q_all.shape[0], chunk):
        q = q_all[start : start + chunk]
        sims = q @ g.T
        rows = torch.arange(q.shape[0])
        sims[rows, source_index[start : start + chunk]] = float("-inf")
        top = sims.topk(k_max, dim=1).indices
        match = gallery_labels[top] == target_labels[start : start + chunk, None]
        ranks.append(torch.where(match.any(1), match.float().argmax(1), torch.full_like(rows, k_max)))
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


def composed_recall(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    source_index: torch.Tensor,
    target_labels: torch.Tensor,
    ks: tuple[int, ...] = KS,
    chunk: int = 1024,
) -> dict[int, float]:
    """Recall@K for each K: fraction of queries with a target-label image in their top K."""
    first = first_hit_ranks(queries, gallery, gallery_labels, source_index, target_labels, max(ks), chunk)
    return recall_at(first, ks)


def recall_at(first: torch.Tensor, ks: tuple[int, ...] = KS) -> dict[int, float]:
    """Recall@K for each K from first_hit_ranks."""
    n = max(first.shape[0], 1)
    return {k: int((first < k).sum()) / n for k in ks}


@torch.no_grad()
def compose_all(
    composer: nn.Module, feats: ComposedFeatures, query_rows: torch.Tensor, batch_size: int = 512
) -> torch.Tensor:
    """Composed vectors [Q, 384] for the given rows of a ComposedFeatures (eval mode)."""
    composer.eval()
    out = []
    for start in range(0, len(query_rows), batch_size):
        out.append(composer(*feats.inputs(query_rows[start : start + batch_size])))
    return torch.cat(out) if out else torch.zeros(0, 384)

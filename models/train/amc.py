"""Training of the AMC rescorer and its text-search ablations with AMC's ranking loss.

Data: the TRAIN split's text queries, each with ~50 candidates graded 0/1/2. A fixed part of
them (VAL_FRACTION, chosen by the seed) is held out: it picks each model's best epoch here and
the late-fusion weight in models/eval/text_search.py; the test split is never looked at. The rest
is augmented with extra queries drawn from the train images by the corpus's own query generator
(models.corpus.queries.make_text_queries), so the small corpus sizes still give enough pairs.
AMC Full's training queries also get candidates drawn as a Search draws them over the whole TRAIN
gallery (AMCBudget.service_candidates): the hard negatives of the keyword route.

Everything frozen is computed once: query embeddings (text encoder), region grids and global
embeddings (image encoder), keyword embeddings (text encoder over the vocabulary; an image's
keyword slots index it, mask = tagger confidence of its top 32 noisy keywords).

Order: ImgATT and KeyATT first; AMC Full then starts from their trained VAN and LAN (its MTN and
query projections start fresh), which reached a better held-out NDCG@5 than a cold start; then
the two DSSM baselines. Each model keeps its best held-out epoch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from models.corpus.paraphrase import paraphrased
from models.corpus.queries import grade, make_text_queries
from models.metrics import ndcg_at_k
from models.nets.amc import GRID, NUM_KEYWORDS, AMCRescorer, build_text_search_models
from models.nets.text_encoder import embed_texts

log = logging.getLogger(__name__)

VAL_FRACTION = 0.2
"""Part of the TRAIN split's text queries held out for model selection and late fusion."""


@dataclass(frozen=True)
class AMCBudget:
    epochs: int = 8
    batch_queries: int = 16
    lr: float = 2e-3
    margin: float = 0.3
    negatives: int = 4
    extra_queries_per_family: int = 0
    warm_start: bool = True  # AMC Full starts from the trained ImgATT VAN and KeyATT LAN
    paraphrase_copies: int = 3
    """Each training query also appears this many times reworded (models/corpus/paraphrase.py,
    seeded apart from evaluation's seed), so the rescorer learns the wording users use."""
    where_weight: float = 1.0
    """Weight of the where head's own loss (where_loss) beside the ranking loss; 0 leaves the head
    to the ranking loss alone (benchmarks/LAYOUT.md compares both)."""
    service_candidates: int = 25
    """Each training query's own ~50 candidates get up to this many more, drawn as a Search draws
    them over the whole TRAIN gallery (hybrid: the vector and keyword routes fused) and graded by
    the corpus's rule. Over the whole index BM25 brings images whose noisy keywords match the
    query (a sport scene tagged 'wedding' at 0.38); the paper's random candidates almost never hold
    them, so AMC never learned to weigh them down (docs/decisions/0016-service-candidates.md;
    25 was chosen over 50 on validation). 0: the paper's candidates only."""


BUDGETS: dict[str, AMCBudget] = {
    "ci": AMCBudget(epochs=4, extra_queries_per_family=50),
    "demo": AMCBudget(epochs=8, extra_queries_per_family=0),
    "full": AMCBudget(epochs=10, extra_queries_per_family=0),
}


def as_amc_budget(budget: AMCBudget | dict[str, Any] | None) -> AMCBudget:
    """An AMCBudget from None, a budget, or a dict ({"size": "demo"} and/or field overrides)."""
    if budget is None:
        return AMCBudget()
    if isinstance(budget, AMCBudget):
        return budget
    base = BUDGETS.get(str(budget.get("size", "")), AMCBudget())
    known = {f.name for f in fields(AMCBudget)}
    overrides = {k: v for k, v in budget.items() if k in known}
    return AMCBudget(**{**base.__dict__, **overrides})


@dataclass
class ImageFeatures:
    """Frozen per-image inputs of the rescorers, rows in split order."""

    embedding: torch.Tensor  # [N, 384] global image embedding
    regions: torch.Tensor  # [N, 36, 128]
    keyword_index: torch.Tensor  # int64 [N, 32] rows of vocab_embedding (0 where padded)
    keyword_mask: torch.Tensor  # [N, 32] tagger confidence, 0 = padding
    vocab_embedding: torch.Tensor  # [V, 384]


@dataclass
class QueryFeatures:
    """Text queries with their candidates as padded row-index matrices."""

    embedding: torch.Tensor  # [Q, 384]
    candidates: torch.Tensor  # int64 [Q, C] image rows (0 where padded)
    relevance: torch.Tensor  # float [Q, C]
    valid: torch.Tensor  # bool [Q, C]
    families: list[str]
    where_target: torch.Tensor | None = None
    """[Q, G*G]: where each query puts its object (where_target), for the where head's loss."""

    def __len__(self) -> int:
        return self.embedding.shape[0]


def keyword_slots(images: Any, vocab: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-32 noisy keywords of each image by confidence: vocab indices and confidences."""
    position = {word: i for i, word in enumerate(vocab)}
    index = torch.zeros(len(images), NUM_KEYWORDS, dtype=torch.long)
    mask = torch.zeros(len(images), NUM_KEYWORDS)
    for row, record in enumerate(images):
        ranked = sorted(record.noisy_keywords, key=lambda kv: (-kv[1], kv[0]))
        ranked = [(w, c) for w, c in ranked if w in position and c > 0][:NUM_KEYWORDS]
        for slot, (word, confidence) in enumerate(ranked):
            index[row, slot] = position[word]
            mask[row, slot] = float(confidence)
    return index, mask


@torch.no_grad()
def image_features(
    split: Any,
    image_encoder: nn.Module,
    text_encoder: nn.Module,
    tokenizer: Any,
    vocab: list[str],
    batch_size: int = 256,
) -> ImageFeatures:
    image_encoder.eval()
    embeddings, regions = [], []
    for start in range(0, len(split.pixels), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(split.pixels[start : start + batch_size]))
        emb, reg = image_encoder(chunk)
        embeddings.append(emb.float())
        regions.append(reg.float())
    index, mask = keyword_slots(split.images, vocab)
    return ImageFeatures(
        embedding=torch.cat(embeddings),
        regions=torch.cat(regions),
        keyword_index=index,
        keyword_mask=mask,
        vocab_embedding=embed_texts(text_encoder, list(vocab), tokenizer=tokenizer),
    )


def where_target(spec: dict, grid: int = GRID) -> np.ndarray:
    """The grid distribution a query's words ask for: a position query ("... top-left") spreads 1
    over its 3 x 3 cell's regions, any other query is uniform (it names no place)."""
    target = np.full((grid, grid), 1.0 / (grid * grid), dtype=np.float32)
    if spec.get("kind") == "layout" and "cell" in spec:
        side = grid // 3
        row, column = divmod(int(spec["cell"]), 3)
        target[:] = 0.0
        target[row * side : (row + 1) * side, column * side : (column + 1) * side] = 1.0 / (side * side)
    return target.reshape(-1)


def query_features(split: Any, queries: list[Any], text_encoder: nn.Module, tokenizer: Any) -> QueryFeatures:
    width = max((len(q.candidate_ids) for q in queries), default=1)
    candidates = torch.zeros(len(queries), width, dtype=torch.long)
    relevance = torch.zeros(len(queries), width)
    valid = torch.zeros(len(queries), width, dtype=torch.bool)
    for row, query in enumerate(queries):
        n = len(query.candidate_ids)
        candidates[row, :n] = torch.tensor([split.index_of(c) for c in query.candidate_ids])
        relevance[row, :n] = torch.tensor(query.relevance, dtype=torch.float32)
        valid[row, :n] = True
    return QueryFeatures(
        embedding=embed_texts(text_encoder, [q.text for q in queries], tokenizer=tokenizer),
        candidates=candidates,
        relevance=relevance,
        valid=valid,
        families=[q.family for q in queries],
        where_target=torch.from_numpy(np.stack([where_target(q.spec) for q in queries]))
        if queries
        else torch.zeros(0, GRID * GRID),
    )


CandidateLists = Callable[[Any, ImageFeatures, list[Any], torch.Tensor], list[list[str]]]
"""(split, its image features, queries, their embeddings) -> each query's candidate ids over the
split's whole gallery, best first, as a Search draws them (models/train/candidates.py)."""


def with_service_candidates(
    split: Any, queries: list[Any], features: QueryFeatures, lists: list[list[str]], extra: int
) -> QueryFeatures:
    """`features` with each query's first `extra` listed candidates that are not already its own
    appended after its own, graded by the corpus's rule."""
    own_counts = [int(n) for n in features.valid.sum(dim=1)]
    added = []
    for row, ids in enumerate(lists):
        own = set(features.candidates[row, : own_counts[row]].tolist())
        added.append([r for r in (split.index_of(i) for i in ids) if r not in own][:extra])
    width = max((n + len(rows) for n, rows in zip(own_counts, added, strict=True)), default=1)
    candidates = torch.zeros(len(queries), width, dtype=torch.long)
    relevance = torch.zeros(len(queries), width)
    valid = torch.zeros(len(queries), width, dtype=torch.bool)
    for row, (query, rows) in enumerate(zip(queries, added, strict=True)):
        n, total = own_counts[row], own_counts[row] + len(rows)
        candidates[row, :n] = features.candidates[row, :n]
        relevance[row, :n] = features.relevance[row, :n]
        candidates[row, n:total] = torch.tensor(rows, dtype=torch.long)
        relevance[row, n:total] = torch.tensor([grade(query.spec, split.images[r]) for r in rows], dtype=torch.float)
        valid[row, :total] = True
    return QueryFeatures(features.embedding, candidates, relevance, valid, features.families, features.where_target)


def validation_split(n_queries: int, seed: int, fraction: float = VAL_FRACTION) -> tuple[list[int], list[int]]:
    """(train rows, held-out rows) of the TRAIN split's text queries, fixed by the seed."""
    order = np.random.default_rng([seed, 31]).permutation(n_queries)
    n_held = max(1, int(round(fraction * n_queries)))
    return sorted(int(i) for i in order[n_held:]), sorted(int(i) for i in order[:n_held])


def batch_outputs(
    module: nn.Module, images: ImageFeatures, queries: QueryFeatures, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """forward()'s four outputs for every candidate of the query rows, shaped [R, C, ...], through
    forward's own three stages: the query side once per query, the keyword projection once per
    vocabulary word (it is linear) and gathered per keyword slot."""
    candidates = queries.candidates[rows]
    n_rows, width = candidates.shape
    flat = candidates.reshape(-1)
    encoded = module.encode_query(queries.embedding[rows])
    query = encoded.unsqueeze(1).expand(n_rows, width, -1).reshape(n_rows * width, -1)
    # a modality the module ignores gets an empty placeholder instead of a costly gather
    if module.uses_keywords:
        keywords = module.project_keywords(images.vocab_embedding)[images.keyword_index[flat]]
    else:
        keywords = images.vocab_embedding.new_zeros(flat.shape[0], images.keyword_index.shape[1], 0)
    if module.uses_regions:
        regions = images.regions[flat]
    else:
        regions = images.regions.new_zeros(flat.shape[0], images.regions.shape[1], 0)
    outputs = module.score(query, regions, keywords, images.keyword_mask[flat])
    return tuple(x.reshape(n_rows, width, -1) for x in outputs)  # type: ignore[return-value]


def batch_scores(module: nn.Module, images: ImageFeatures, queries: QueryFeatures, rows: torch.Tensor) -> torch.Tensor:
    """Scores [R, C] of the candidates of the query rows (see batch_outputs)."""
    return batch_outputs(module, images, queries, rows)[0].squeeze(2)


@torch.no_grad()
def score_all(module: nn.Module, images: ImageFeatures, queries: QueryFeatures, chunk: int = 64) -> torch.Tensor:
    """Scores [Q, C] of every query's candidates (eval mode; padded slots are -inf)."""
    module.eval()
    out = [
        batch_scores(module, images, queries, torch.arange(s, min(s + chunk, len(queries))))
        for s in range(0, len(queries), chunk)
    ]
    scores = torch.cat(out) if out else torch.zeros(0, queries.candidates.shape[1])
    return scores.masked_fill(~queries.valid, float("-inf"))


def mean_ndcg(scores: torch.Tensor, queries: QueryFeatures, k: int = 5) -> float:
    values = []
    for row in range(len(queries)):
        n = int(queries.valid[row].sum())
        order = torch.argsort(-scores[row, :n], stable=True)
        values.append(ndcg_at_k(queries.relevance[row, :n][order].numpy(), k))
    return float(np.mean(values)) if values else 0.0


def ranking_loss(
    scores: torch.Tensor,
    relevance: torch.Tensor,
    valid: torch.Tensor,
    margin: float,
    negatives: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """AMC's loss: for each candidate x+ with relevance > 0, `negatives` candidates x- of lower
    relevance drawn at random, sum of max(0, margin - s(q,x+) + s(q,x-)); mean over positives."""
    n_queries, width = scores.shape
    positive = valid & (relevance > 0)
    eligible = (relevance.unsqueeze(2) > relevance.unsqueeze(1)) & valid.unsqueeze(1) & positive.unsqueeze(2)
    keys = torch.rand(n_queries, width, width, generator=generator).to(scores.device)
    keys = keys.masked_fill(~eligible, -1.0)
    top_keys, negative_index = keys.topk(min(negatives, width), dim=2)
    chosen = top_keys >= 0
    negative_scores = scores.unsqueeze(1).expand(n_queries, width, width).gather(2, negative_index)
    hinge = torch.relu(margin - scores.unsqueeze(2) + negative_scores) * chosen.to(scores.dtype)
    n_positive = chosen.any(dim=2).sum().clamp(min=1)
    return hinge.sum() / n_positive


def where_loss(module: nn.Module, queries: QueryFeatures, rows: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the where head's p_q against where_target: it learns to read the place a
    query names (and "nowhere in particular" from every other query) from the words themselves,
    which the ranking loss alone teaches slowly (benchmarks/LAYOUT.md). Zero for modules without
    a where head in use."""
    if not isinstance(module, AMCRescorer) or module.layout == "none" or not module.uses_regions:
        return torch.zeros(())
    if queries.where_target is None:
        return torch.zeros(())
    log_p = module.van.where_logits(queries.embedding[rows])
    return -(queries.where_target[rows] * log_p).sum(dim=1).mean()


def fit(
    module: nn.Module,
    images: ImageFeatures,
    train: QueryFeatures,
    held: QueryFeatures,
    budget: AMCBudget,
    seed: int,
) -> tuple[nn.Module, float]:
    """Adam on the ranking loss; returns the module at its best held-out NDCG@5 epoch."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(module.parameters(), lr=budget.lr)
    best_state = {k: v.clone() for k, v in module.state_dict().items()}
    best = mean_ndcg(score_all(module, images, held), held)
    for epoch in range(budget.epochs):
        module.train()
        order = torch.randperm(len(train), generator=generator)
        total = 0.0
        for start in range(0, len(order), budget.batch_queries):
            rows = order[start : start + budget.batch_queries]
            scores = batch_scores(module, images, train, rows)
            loss = ranking_loss(
                scores, train.relevance[rows], train.valid[rows], budget.margin, budget.negatives, generator
            )
            loss = loss + budget.where_weight * where_loss(module, train, rows)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
        value = mean_ndcg(score_all(module, images, held), held)
        log.info("epoch %d loss %.4f held-out NDCG@5 %.4f", epoch + 1, total / max(len(train), 1), value)
        if value > best:
            best, best_state = value, {k: v.clone() for k, v in module.state_dict().items()}
    module.load_state_dict(best_state)
    return module.eval(), best


def training_queries(corpus: Any, seed: int, budget: AMCBudget) -> tuple[list[Any], list[Any]]:
    """(queries to train on, held-out queries): the TRAIN split's own queries minus the held-out
    part, plus generated extra queries over the train images."""
    official = list(corpus.train.text_queries)
    train_rows, held_rows = validation_split(len(official), seed)
    train = [official[i] for i in train_rows]
    if budget.extra_queries_per_family > 0:
        rng = np.random.default_rng([seed, 43])
        train += make_text_queries(corpus.train.images, budget.extra_queries_per_family, rng, "train-extra")
    originals = list(train)
    for copy in range(budget.paraphrase_copies):
        train += paraphrased(originals, seed=1000 + 100 * seed + copy)
    return train, [official[i] for i in held_rows]


def train_amc(
    corpus: Any,
    text_encoder: nn.Module,
    tokenizer: Any,
    image_encoder: nn.Module,
    seed: int = 0,
    budget: AMCBudget | dict[str, Any] | None = None,
    candidates: CandidateLists | None = None,
) -> dict[str, nn.Module]:
    """Keys amc_full, img_att, key_att, dssm_img, dssm_key, each at its best held-out epoch.
    `candidates` draws the service candidates (AMCBudget.service_candidates) AMC Full's training
    queries get beside their own; held-out queries keep the paper's candidates."""
    cfg = as_amc_budget(budget)
    started = time.perf_counter()
    images = image_features(corpus.train, image_encoder, text_encoder, tokenizer, list(corpus.keyword_vocab))
    train_queries, held_queries = training_queries(corpus, seed, cfg)
    train = query_features(corpus.train, train_queries, text_encoder, tokenizer)
    held = query_features(corpus.train, held_queries, text_encoder, tokenizer)
    full_train = train
    if candidates is not None and cfg.service_candidates > 0:
        lists = candidates(corpus.train, images, train_queries, train.embedding)
        full_train = with_service_candidates(corpus.train, train_queries, train, lists, cfg.service_candidates)
    log.info(
        "amc features in %.1fs: %d train / %d held-out queries, AMC Full's %.1f candidates per training query",
        time.perf_counter() - started,
        len(train),
        len(held),
        float(full_train.valid.sum(dim=1).float().mean()) if len(full_train) else 0.0,
    )
    torch.manual_seed(seed)
    models = build_text_search_models()
    result: dict[str, nn.Module] = {}
    order = ("img_att", "key_att", "amc_full", "dssm_img", "dssm_key")
    for offset, name in enumerate(order):
        module = models[name]
        if name == "amc_full" and cfg.warm_start:
            module.van.load_state_dict(result["img_att"].van.state_dict())
            module.lan.load_state_dict(result["key_att"].lan.state_dict())
        # AMC Full, the served rescorer, also learns on the candidates a Search gives it; its
        # ablations keep the paper's candidates, as the paper's tables train them
        queries = full_train if name == "amc_full" else train
        result[name], value = fit(module, images, queries, held, cfg, seed + offset)
        log.info("amc %s: held-out NDCG@5 %.4f (%.0fs so far)", name, value, time.perf_counter() - started)
    return {name: result[name] for name in models}

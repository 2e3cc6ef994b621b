"""Training of the cross-domain models on the street/shop corpus's TRAIN products.

The three models share the frozen trunk of the make-models image encoder: its region grid and
its global head's input are computed once per image, and each model trains only what sits on
top, which is cheap on a CPU:
- global embedding (the baseline): the image encoder's own global head, from its make-models
  weights, retrained on street/shop pairs;
- TagYNet: the Y (shared 1 x 1 convolution, street and shop arms) and the tag projection;
- CtxYNet: its own Y, plus u and V (zero at the start: uniform street attention); ctx_init
  (CTX_INITS) can start it from TagYNet's trained Y instead, as the authors' code can start CtxNIN
  from a trained TagNIN.
Every model has the same loss: the triplet hinge on squared L2, max(0, |a-p|^2 - |a-n|^2 +
margin), with a a street shot, p its product's shop vector and n each other product's shop
vector in the batch (every cyclic shift of the batch; shots of the same product are no
negatives); for CtxYNet the query is recomputed with each negative as its context. The hinge is
averaged over the violating triplets. The trained parts have no dropout and no batch norm, so
the modules stay in eval mode (the frozen trunk's batch norm keeps its statistics).

Each model stops early once its validation score has not improved for its patience (global 12
epochs, TagYNet 8, CtxYNet 4); the learning-rate schedule still spans the budget's epochs, so a
stop keeps the model the whole run would have kept unless a later epoch would have beaten it.
TagYNet's validation score jumps by up to 0.04 between epochs: with a patience of 4, an Intel Xeon
(family 6 model 167) stopped it at epoch 22 of 30 (best 18, score 0.560, validation top-1 0.285);
run on, its best epoch was 28 (0.584, top-1 0.299), and CtxYNet on top of it went from 0.352 to
0.361 top-1. The Zen 4 machine had run all 30 epochs with the patience of 4.

The Y is 96 wide (YNET_HIDDEN) and CtxYNet trains 10 epochs, so that make models stays within
20 minutes at the demo size on the slowest 2-core machine measured (an AVX2 AMD EPYC, where the
Y at 128 wide and CtxYNet at 15 epochs took this stage to 720 s of a 1280 s make models). On the
2880 validation queries, top-1 / top-20, one run each on the same frozen features:
| Y width, TagYNet / CtxYNet epochs | TagYNet | CtxYNet (served re-rank) | their training here |
| 128, 30 / 15 | 0.343 / 0.818 | 0.390 / 0.851 | 350 s + 177 s |
| 128, 30 / 10 | 0.343 / 0.818 | 0.399 / 0.855 | 350 s + 119 s |
| 128, 22 / 10 | 0.327 / 0.800 | 0.376 / 0.846 | 234 s + 115 s |
| 128, 18 / 10 | 0.315 / 0.784 | 0.374 / 0.838 | 191 s + 114 s |
| 96, 30 / 10 (the default) | 0.324 / 0.795 | 0.388 / 0.841 | 232 s + 86 s |
CtxYNet's schedule over 10 epochs scored as well as over 15 (its best epoch had been 8, 10 and
14 of 15 in three make models runs); the narrower Y costs about 0.01 of the served method's
top-1 and top-20, less than cutting TagYNet's epochs for the same time. The baseline (0.318-0.328 / 0.714-0.719 here) keeps its full
80-epoch budget: a weaker baseline would flatter CtxYNet. CtxYNet's own Y reused from TagYNet
("tag_frozen", 31 s) scored 0.345 / 0.819, hardly above TagYNet, with attention barely off
uniform on the product (0.180 against 0.176 uniform; the fresh Y's 0.350): it stays fresh.
Also measured earlier, on a 2-core Intel Xeon with the 128-wide Y, and dropped as they cost more
than they saved: batches of 64 products x 2 shots (the shop side computed for half the rows:
TagYNet 0.308 / 0.801 against 0.332 / 0.802), bfloat16 autocast of the Y on a CPU with AMX
(steps 33% cheaper; TagYNet 0.315 / 0.793, CtxYNet 0.372 / 0.840 against 0.381 / 0.840; and
results that would depend on the CPU), the baseline's schedule over 50 or 40 epochs (0.303 /
0.710, 0.295 / 0.697 against 0.314 / 0.713: a weaker baseline).

Model selection uses only TRAIN: a random share of the train products is held out; their street
shots are the validation queries and the shop images of every train product the gallery (1200 at
the demo size: the held-out products' 180 alone ranked configurations unlike the 500-image TEST
gallery did). Each model keeps its epoch with the best validation score (mean top-1/5/10/20),
the untrained start included, and CtxYNet is validated as it is used, re-ranking the chosen
TagYNet's validation top K by its distance plus CROSS_DOMAIN_TAG_WEIGHT times TagYNet's.

The demo size trains on 16 street shots per product (the corpus's train_shots), with the epochs
cut to keep the steps and the time of 4 shots: TagYNet 30, CtxYNet 15 (now 10, above). At 4
shots every Y learnt its 1020 products by heart (train top-1 0.998, validation 0.21), and TagYNet stayed behind the
baseline at top-1. The same 720 validation queries, top-1 / top-20 (one run of each; the
baseline keeps its best setting, 80 epochs, at every data size):
- 4 shots: baseline 0.215 / 0.592, TagYNet 0.206 / 0.642;
- 8 shots: baseline 0.268 / 0.646, TagYNet 0.254 / 0.747 (60 epochs), 0.278 / 0.754 (120);
- 16 shots: baseline 0.294 / 0.697, TagYNet 0.326 / 0.789 (30 epochs), 0.350 / 0.819 (60, twice
  the time), CtxYNet re-ranking the 30-epoch TagYNet 0.367 / 0.850 (15 epochs). make models
  then gave, on its 2880 validation queries (every shot of the held-out products): baseline
  0.314 / 0.713, TagYNet 0.332 / 0.802, CtxYNet 0.381 / 0.840; the re-rank's w in (0, 0.5, 1,
  2, 4) top-1 0.184, 0.359, 0.381, 0.376, 0.364, so w = 1 stays.
Regularising the 4-shot Y instead did not close the gap: shifting the street grid by a cell
(0.144 / 0.518), a 3 x 3 convolution in the shared stem (0.211 / 0.663 at 1.7x the time), every
location given the grid's mean and max (0.051 / 0.364).

The other defaults were chosen at 4 shots per product (top-1 / top-20 below, demo size, 720
validation queries), with the same effort for the baseline:
- baseline: a smaller margin and more epochs took its top-1 from 0.19 to 0.33 earlier; 160
  epochs instead of 80 gave 0.400 / 0.839 against 0.399 / 0.843 (180-image gallery): it stays at
  80. On the 1200-image gallery: 0.232 / 0.606.
- TagYNet: 120 epochs and an inner width of 128 (hidden) took it from 0.336 / 0.853 to 0.411 /
  0.897 on the 180-image gallery, 0.138 / 0.561 to 0.179 / 0.632 on the 1200-image one (256 wide:
  0.419 / 0.881 at 6x the time; C = 128: 0.394 / 0.886).
- CtxYNet on that TagYNet, 1200-image gallery: its own fresh Y 0.168 / 0.664; TagYNet's Y with
  only u and V trained ("tag_frozen") 0.174 / 0.639, the same validation score (0.440 / 0.442)
  but an attention that barely leaves uniform (its gain is TagYNet's own ranking), so the fresh
  Y, which learns to attend the product, is the default. Fine-tuning TagYNet's Y ("tag" at 3e-3
  or 3e-4, "tag_street": the street arm only, like the authors' freeze_shop) fell below the start
  and never beat it.
- The re-rank's distance, d_ctx + w d_tag (CtxYNet's plus w times TagYNet's), same models,
  1200-image gallery: w = 0 (CtxYNet alone) 0.168 / 0.664, 0.25: 0.204 / 0.697, 0.5: 0.226 /
  0.711, 1: 0.242 / 0.726, 2: 0.228 / 0.719 (the baseline: 0.232 / 0.606). w = 1 is served (the
  two nets' vectors concatenated); choosing CtxYNet's epoch on that fused score picks the same
  epoch. Training CtxYNet on the fused distance instead gave 0.182 / 0.632 (with TagYNet's
  distance in the loss most triplets are already met, and CtxYNet learns little of its own).
- The street attention's form, CtxYNet alone: the authors' MLP attention h . tanh(U x_l + W ctx)
  (64 hidden) 0.151 / 0.679 at 6x the training time (681 s against 106 s); a bilinear content
  term g <x_l, W ctx> added to the linear form 0.156 / 0.665. The paper's linear form stays.
Tried and dropped: batches of look-alike products (shared tags) for harder in-batch negatives
(no gain beyond noise), only the k hardest in-batch negatives (training collapsed: top-1 0.20 for
the baseline, 0.03 for TagYNet), margins 0.05 and 0.2. TagYNet alone stays behind the baseline at
top-1 on both validation galleries; CtxYNet alone, too, until its distance is summed with
TagYNet's.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.corpus.street_shop import StreetShopCorpus
from models.features.cross_domain import (
    DomainFeatures,
    cosine_distances,
    ctx_ynet_ranks,
    domain_features,
    global_distances,
    global_vectors,
    rank_of_truth,
    tag_ynet_vectors,
    top_k_accuracy,
    validation_score,
)
from models.nets.image_encoder import ImageEncoder, count_parameters
from models.nets.ynet import YNET_HIDDEN, CtxYNet, TagYNet, street_embedding

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class YNetBudget:
    """Defaults are the demo size's, chosen on the validation products (see the module doc)."""

    dim: int = 64  # C (the exported contract's YNET_DIM)
    hidden: int = YNET_HIDDEN  # the Y's inner width
    global_epochs: int = 80
    tag_epochs: int = 30
    ctx_epochs: int = 10
    # Early stop: after this many epochs without a better validation score (0: never). The
    # learning-rate schedule still spans the epochs above, so a stop keeps the very model the
    # whole run would have kept, unless a later epoch would have beaten it.
    global_patience: int = 12
    tag_patience: int = 8
    ctx_patience: int = 4
    batch_size: int = 128
    global_lr: float = 3e-3
    tag_lr: float = 3e-3
    ctx_lr: float = 3e-3  # CtxYNet's trained Y parts (none with ctx_init "tag_frozen")
    attention_lr: float = 2e-2  # CtxYNet's u and V: a few hundred steps must move them from zero
    ctx_init: str = "fresh"  # CtxYNet's Y: one of CTX_INITS (module doc)
    weight_decay: float = 1e-4
    margin: float = 0.1
    val_fraction: float = 0.15
    validation_gallery: str = "train"  # "train": every train product's shop image; "held_out": theirs only
    rerank_k: int = 100


# How CtxYNet's Y starts and what of it trains: "fresh" (its own Y, trained), "tag" (TagYNet's Y,
# fine-tuned), "tag_street" (TagYNet's Y, only the street arm fine-tuned: the authors' freeze_shop)
# or "tag_frozen" (TagYNet's Y as it is; only the context attention u, V trains).
CTX_INITS = ("fresh", "tag", "tag_street", "tag_frozen")
VALIDATION_GALLERIES = ("train", "held_out")  # validation_queries, product_subset


def as_ynet_budget(budget: YNetBudget | dict[str, Any] | None) -> YNetBudget:
    """The budget as a YNetBudget (unknown keys of a dict are ignored); ValueError on a setting
    outside its choices."""
    if budget is None:
        cfg = YNetBudget()
    elif isinstance(budget, YNetBudget):
        cfg = budget
    else:
        known = set(YNetBudget.__dataclass_fields__)
        cfg = YNetBudget(**{k: v for k, v in dict(budget).items() if k in known})
    if cfg.ctx_init not in CTX_INITS:
        raise ValueError(f"ctx_init must be one of {', '.join(CTX_INITS)}, not {cfg.ctx_init!r}")
    if cfg.validation_gallery not in VALIDATION_GALLERIES:
        raise ValueError(
            f"validation_gallery must be one of {', '.join(VALIDATION_GALLERIES)}, not {cfg.validation_gallery!r}"
        )
    return cfg


@dataclass
class Fitted:
    """What fit() keeps: the best-epoch copy, its validation score, that epoch (0: the untrained
    start) and the epochs trained before the schedule ended or patience ran out."""

    module: nn.Module
    score: float
    best_epoch: int
    epochs_run: int


@dataclass
class YNetResult:
    """The trained modules (checkpoint name -> module) and what the manifest records."""

    modules: dict[str, nn.Module]
    report: dict[str, Any] = field(default_factory=dict)


def held_out_products(n_products: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit products, validation products): a random `fraction` of the rows is held out."""
    rng = np.random.default_rng([seed, 41])
    order = rng.permutation(n_products)
    n_val = max(1, int(round(fraction * n_products)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def shots_of(feats: DomainFeatures, products: np.ndarray) -> torch.Tensor:
    """The rows of the street shots of these product rows."""
    return torch.from_numpy(np.flatnonzero(np.isin(feats.street_product.numpy(), products)))


def product_subset(feats: DomainFeatures, products: np.ndarray) -> DomainFeatures:
    """The features of these products and their street shots, product rows renumbered 0..n-1."""
    rows = torch.from_numpy(products.astype(np.int64))
    renumber = torch.full((feats.shop_regions.shape[0],), -1, dtype=torch.long)
    renumber[rows] = torch.arange(len(rows))
    shots = shots_of(feats, products)
    return DomainFeatures(
        shop_regions=feats.shop_regions[rows],
        shop_head=feats.shop_head[rows],
        street_regions=feats.street_regions[shots],
        street_head=feats.street_head[shots],
        street_product=renumber[feats.street_product[shots]],
        tags=feats.tags[rows],
    )


def validation_queries(feats: DomainFeatures, products: np.ndarray) -> DomainFeatures:
    """The street shots of these (held-out) products as queries, against the shop images of every
    train product as the gallery: a gallery larger than the held-out products alone, like TEST's
    (a 180-image gallery of held-out products alone ranked the models unlike TEST's 500)."""
    shots = shots_of(feats, products)
    return DomainFeatures(
        shop_regions=feats.shop_regions,
        shop_head=feats.shop_head,
        street_regions=feats.street_regions[shots],
        street_head=feats.street_head[shots],
        street_product=feats.street_product[shots],
        tags=feats.tags,
    )


def triplet_loss(distances: torch.Tensor, products: torch.Tensor, margin: float) -> torch.Tensor:
    """distances [B, B]: street shot i (rows) to the shop vector of shot j's product (columns);
    the diagonal holds the positives. Hinge averaged over the violating triplets."""
    positive = distances.diagonal().unsqueeze(1)
    negative = (products.view(-1, 1) != products.view(1, -1)).to(distances.dtype)
    hinge = F.relu(positive - distances + margin) * negative
    return hinge.sum() / (hinge > 0).sum().clamp(min=1)


BatchDistances = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _schedule(optimizer: torch.optim.Optimizer, step: int, total: int) -> None:
    """Linear warm-up over the first 5% of the steps, then cosine decay, of each group's base_lr."""
    warmup = max(1, total // 20)
    if step < warmup:
        factor = (step + 1) / warmup
    else:
        factor = 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


def fit(
    name: str,
    module: nn.Module,
    groups: list[dict[str, Any]],
    batch_distances: BatchDistances,
    validate: Callable[[], float],
    feats: DomainFeatures,
    epochs: int,
    patience: int,
    cfg: YNetBudget,
    seed: int,
) -> Fitted:
    """Trains the parameter groups ({"params", "base_lr"}) of `module` in place; keeps the
    best-epoch copy by `validate`, and stops after `patience` epochs without a better score (0:
    never). batch_distances(street rows, their products) -> [B, B] distances."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW([{**g, "lr": g["base_lr"]} for g in groups], weight_decay=cfg.weight_decay)
    n = feats.street_regions.shape[0]
    steps_per_epoch = max(1, n // cfg.batch_size)
    total = epochs * steps_per_epoch
    best, best_score, best_epoch = copy.deepcopy(module), validate(), 0
    log.info("%s: validation score %.4f before training", name, best_score)
    step = 0
    for epoch in range(epochs):
        if patience and epoch - best_epoch >= patience:
            log.info("%s: stopped after epoch %d, no better validation score since epoch %d", name, epoch, best_epoch)
            return Fitted(best.eval(), best_score, best_epoch, epoch)
        order = torch.randperm(n, generator=generator)
        running = 0.0
        for b in range(steps_per_epoch):
            rows = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            products = feats.street_product[rows]
            _schedule(optimizer, step, total)
            loss = triplet_loss(batch_distances(rows, products), products, cfg.margin)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += float(loss.detach())
            step += 1
        score = validate()
        log.info("%s epoch %d/%d: loss %.4f validation %.4f", name, epoch + 1, epochs, running / steps_per_epoch, score)
        if score > best_score:
            best, best_score, best_epoch = copy.deepcopy(module), score, epoch + 1
    return Fitted(best.eval(), best_score, best_epoch, epochs)


def train_global(
    encoder: ImageEncoder, fit_feats: DomainFeatures, val: DomainFeatures, cfg: YNetBudget, seed: int
) -> Fitted:
    """The baseline: a copy of the image encoder whose global head retrains on street/shop pairs."""
    model = copy.deepcopy(encoder).eval()
    for p in model.trunk.parameters():
        p.requires_grad_(False)

    def distances(rows: torch.Tensor, products: torch.Tensor) -> torch.Tensor:
        return cosine_distances(
            global_vectors(model, fit_feats.street_head[rows]), global_vectors(model, fit_feats.shop_head[products])
        )

    @torch.no_grad()
    def validate() -> float:
        return validation_score(rank_of_truth(global_distances(model, val), val.street_product))

    groups = [{"params": list(model.head.parameters()), "base_lr": cfg.global_lr}]
    return fit(
        "global embedding",
        model,
        groups,
        distances,
        validate,
        fit_feats,
        cfg.global_epochs,
        cfg.global_patience,
        cfg,
        seed,
    )


def train_tag_ynet(
    encoder: ImageEncoder, vocab_size: int, fit_feats: DomainFeatures, val: DomainFeatures, cfg: YNetBudget, seed: int
) -> Fitted:
    """TagYNet on the image encoder's frozen trunk."""
    torch.manual_seed(seed)
    model = TagYNet(vocab_size, cfg.dim, cfg.hidden).eval()
    model.trunk.load_state_dict(encoder.trunk.state_dict())
    for p in model.trunk.parameters():
        p.requires_grad_(False)
    branches = model.branches

    def distances(rows: torch.Tensor, products: torch.Tensor) -> torch.Tensor:
        street = street_embedding(branches.street_locations(fit_feats.street_regions[rows]))
        shop, _ = branches.shop_embedding(
            branches.shop_locations(fit_feats.shop_regions[products]), fit_feats.tags[products]
        )
        return cosine_distances(street, shop)

    def validate() -> float:
        street, shop, _ = tag_ynet_vectors(model, val)
        return validation_score(rank_of_truth(cosine_distances(street, shop), val.street_product))

    groups = [{"params": list(branches.parameters()), "base_lr": cfg.tag_lr}]
    return fit("TagYNet", model, groups, distances, validate, fit_feats, cfg.tag_epochs, cfg.tag_patience, cfg, seed)


def train_ctx_ynet(
    tag_ynet: TagYNet, vocab_size: int, fit_feats: DomainFeatures, val: DomainFeatures, cfg: YNetBudget, seed: int
) -> Fitted:
    """CtxYNet on the frozen trunk (its own Y); validated re-ranking TagYNet's validation top K."""
    torch.manual_seed(seed)
    model = CtxYNet(vocab_size, cfg.dim, cfg.hidden).eval()
    if cfg.ctx_init != "fresh":
        model.branches.load_state_dict(tag_ynet.branches.state_dict())
    street, shop, _ = tag_ynet_vectors(tag_ynet, val)
    first = cosine_distances(street, shop)

    def distances(rows: torch.Tensor, products: torch.Tensor) -> torch.Tensor:
        contexts, _ = model.context(fit_feats.shop_regions[products], fit_feats.tags[products])
        return model.pairwise_distances(model.branches.street_locations(fit_feats.street_regions[rows]), contexts)

    def validate() -> float:
        return validation_score(ctx_ynet_ranks(model, val, first, cfg.rerank_k))

    trained = {"fresh": model.branches, "tag": model.branches, "tag_street": model.branches.street}.get(cfg.ctx_init)
    for p in model.branches.parameters():
        p.requires_grad_(False)
    groups = [{"params": list(model.score.parameters()), "base_lr": cfg.attention_lr, "weight_decay": 0.0}]
    if trained is not None:
        for p in trained.parameters():
            p.requires_grad_(True)
        groups.append({"params": list(trained.parameters()), "base_lr": cfg.ctx_lr})
    return fit("CtxYNet", model, groups, distances, validate, fit_feats, cfg.ctx_epochs, cfg.ctx_patience, cfg, seed)


def validation_accuracy(models: dict[str, nn.Module], val: DomainFeatures, k: int) -> dict[str, dict[int, float]]:
    """Top-1/5/10/20 on the validation products, per model (the manifest records them)."""
    global_model, tag_ynet, ctx_ynet = models["ynet_global"], models["tag_ynet"], models["ctx_ynet"]
    with torch.no_grad():
        g = global_distances(global_model, val)  # type: ignore[arg-type]
        street, shop, _ = tag_ynet_vectors(tag_ynet, val)  # type: ignore[arg-type]
        first = cosine_distances(street, shop)
    ks = (1, 5, 10, 20)
    return {
        "global": top_k_accuracy(rank_of_truth(g, val.street_product), ks),
        "tag_ynet": top_k_accuracy(rank_of_truth(first, val.street_product), ks),
        "ctx_ynet": top_k_accuracy(ctx_ynet_ranks(ctx_ynet, val, first, k), ks),  # type: ignore[arg-type]
        "ctx_ynet_alone": top_k_accuracy(ctx_ynet_ranks(ctx_ynet, val, first, k, 0.0), ks),  # type: ignore[arg-type]
    }


def train_ynets(
    corpus: StreetShopCorpus,
    image_encoder: ImageEncoder,
    seed: int = 0,
    budget: YNetBudget | dict[str, Any] | None = None,
) -> YNetResult:
    """The baseline, TagYNet and CtxYNet on corpus.train; modules under their checkpoint names
    ynet_global, tag_ynet, ctx_ynet; the report has seconds, parameters and validation scores."""
    cfg = as_ynet_budget(budget)
    started = time.perf_counter()
    feats = domain_features(image_encoder.trunk, corpus.train, corpus.keyword_vocab)
    fit_products, val_products = held_out_products(len(corpus.train.products), cfg.val_fraction, seed)
    fit_feats = product_subset(feats, fit_products)
    val = (
        product_subset(feats, val_products)
        if cfg.validation_gallery == "held_out"
        else validation_queries(feats, val_products)
    )
    features_seconds = time.perf_counter() - started
    log.info(
        "street/shop features in %.1fs: %d fit / %d validation products",
        features_seconds,
        len(fit_products),
        len(val_products),
    )
    vocab_size = len(corpus.keyword_vocab)
    seconds: dict[str, float] = {}

    def timed(key: str, train: Callable[[], Fitted]) -> Fitted:
        start = time.perf_counter()
        result = train()
        seconds[key] = round(time.perf_counter() - start, 2)
        return result

    fitted = {"global": timed("global", lambda: train_global(image_encoder, fit_feats, val, cfg, seed))}
    fitted["tag_ynet"] = timed(
        "tag_ynet", lambda: train_tag_ynet(image_encoder, vocab_size, fit_feats, val, cfg, seed + 1)
    )
    tag_ynet = fitted["tag_ynet"].module
    fitted["ctx_ynet"] = timed(
        "ctx_ynet",
        lambda: train_ctx_ynet(tag_ynet, vocab_size, fit_feats, val, cfg, seed + 2),  # type: ignore[arg-type]
    )
    modules = {"ynet_global": fitted["global"].module, "tag_ynet": tag_ynet, "ctx_ynet": fitted["ctx_ynet"].module}
    report = {
        "budget": vars(cfg),
        "train_products": len(fit_products),
        "validation_products": len(val_products),
        "street_shots": int(fit_feats.street_regions.shape[0]),
        "features_seconds": round(features_seconds, 2),
        "models": {
            key: {
                "seconds": seconds[key],
                "parameters": count_parameters(fit.module),
                "trained_parameters": _trained_parameters(fit.module),
                "validation_score": round(fit.score, 4),
                "best_epoch": fit.best_epoch,
                "epochs_run": fit.epochs_run,
            }
            for key, fit in fitted.items()
        },
        "validation_top_k": validation_accuracy(modules, val, cfg.rerank_k),
    }
    log.info("cross-domain models in %.1fs: %s", time.perf_counter() - started, report["validation_top_k"])
    return YNetResult(modules, report)


def _trained_parameters(module: nn.Module) -> int:
    """The parameters a stage trains (the trunk is frozen everywhere, and so is CtxYNet's Y when
    it is TagYNet's as it is)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

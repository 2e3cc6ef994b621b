"""Why layout queries fail, measured, and the directions tried to make "where" count.

Diagnostics (QUALITY.md, `make eval`), each a question of issue 26 answered with a number:
- text: do the embeddings of queries that differ only in position differ as much as queries that
  differ in colour or shape? Mean cosine of such pairs, and how well a linear probe reads the
  queried cell (3 x 3) back from the query embedding (trained on TRAIN layout queries, scored on
  TEST ones; chance 1/9).
- regions: does a region feature carry where it is? A linear probe from one 128-d region to its
  3 x 3 cell (trained on TRAIN images, scored on TEST images; chance 1/9).
- fused: does the vector AMC scores keep the VAN's where? A linear probe from the fused vector
  x^q = w_v v^q + w_k k^q to the cell the VAN attends most, on TEST layout queries' fully relevant
  and misplaced images; and from v^q alone.
- score: does the score tell the right place from the wrong one? For TEST layout queries, the AUC
  of AMC's score of every fully relevant image (grade 2) against every image with the right object
  in another cell, over the whole gallery; 0.5 is blind to position.

Directions (benchmarks/LAYOUT.md, `python -m models.eval.layout`): AMC Full is retrained with each
way of using the query's where head (models/nets/amc.py LAYOUTS) from the same frozen features
and KeyATT, then scored on the held-out TRAIN queries over the whole TRAIN gallery with the
service's own hybrid candidates, original and paraphrased. The default (amc.LAYOUT) is the best
of them on that validation, never on TEST.
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from amcsearch.search.settings import SearchSettings
from torch import nn

from models.corpus.paraphrase import paraphrased
from models.corpus.queries import grade
from models.corpus.vocab import CELLS, COLORS, SHAPES
from models.eval import evaluation_parser
from models.eval.whole_index import candidate_features, rank_scores, served_features, summarise
from models.nets.amc import LAYOUT, AMCRescorer
from models.nets.text_encoder import embed_texts
from models.train.amc import (
    AMCBudget,
    ImageFeatures,
    QueryFeatures,
    as_amc_budget,
    batch_outputs,
    fit,
    image_features,
    query_features,
    score_all,
    training_queries,
)
from models.train.candidates import CANDIDATES, CandidateSource, gallery_records

log = logging.getLogger(__name__)

GRID = 6


def cell_of_region(index: np.ndarray) -> np.ndarray:
    """The 3 x 3 cell (0..8, row-major) of each region index (0..35, row-major on the 6 x 6 grid)."""
    return (index // GRID) // 2 * 3 + (index % GRID) // 2


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """Accuracy of a ridge classifier (one-hot targets, closed form, standardised inputs)."""
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
    a, b = (train_x - mean) / std, (test_x - mean) / std
    classes = np.unique(train_y)
    targets = (train_y[:, None] == classes[None, :]).astype(np.float64)
    a1 = np.hstack([a, np.ones((len(a), 1))])
    weights = np.linalg.solve(a1.T @ a1 + 1.0 * np.eye(a1.shape[1]), a1.T @ targets)
    predicted = classes[np.argmax(np.hstack([b, np.ones((len(b), 1))]) @ weights, axis=1)]
    return float(np.mean(predicted == test_y))


def pair_cosines(text_encoder: nn.Module, tokenizer: Any) -> dict[str, float]:
    """Mean cosine of query pairs that differ only in position, only in colour, only in shape."""
    phrases = {(c, s, cell): f"{c} {s} {cell}" for c in COLORS[:4] for s in SHAPES for cell in CELLS}
    keys = list(phrases)
    vectors = embed_texts(text_encoder, [phrases[k] for k in keys], tokenizer=tokenizer).numpy()
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    row = {k: i for i, k in enumerate(keys)}
    sums: dict[str, list[float]] = {"position": [], "colour": [], "shape": []}
    for a, b in itertools.combinations(keys, 2):
        differs = [a[i] != b[i] for i in range(3)]
        if sum(differs) != 1:
            continue
        name = ("colour", "shape", "position")[differs.index(True)]
        sums[name].append(float(vectors[row[a]] @ vectors[row[b]]))
    return {name: float(np.mean(values)) for name, values in sums.items()}


def layout_rows(queries: list[Any]) -> list[int]:
    return [i for i, q in enumerate(queries) if q.spec.get("kind") == "layout"]


def text_cell_probe(train_queries: list[Any], train_q: QueryFeatures, test_queries: list[Any], test_q: QueryFeatures):
    """Probe accuracy of the queried cell from the query embedding (TRAIN layout queries -> TEST)."""
    tr, te = layout_rows(train_queries), layout_rows(test_queries)
    return probe_accuracy(
        train_q.embedding[tr].numpy(),
        np.array([train_queries[i].spec["cell"] for i in tr]),
        test_q.embedding[te].numpy(),
        np.array([test_queries[i].spec["cell"] for i in te]),
    )


def region_cell_probe(train_images: ImageFeatures, test_images: ImageFeatures, per_image: int = 36) -> float:
    """Probe accuracy of a region's 3 x 3 cell from its 128-d feature (TRAIN images -> TEST)."""
    cells = cell_of_region(np.arange(GRID * GRID))

    def flat(images: ImageFeatures) -> tuple[np.ndarray, np.ndarray]:
        regions = images.regions[:, :per_image].numpy()
        return regions.reshape(-1, regions.shape[-1]), np.tile(cells[:per_image], len(regions))

    return probe_accuracy(*flat(train_images), *flat(test_images))


def misplaced(spec: dict, record: Any) -> bool:
    """The queried object (every attribute) is in the image, but not in the queried cell."""
    attrs = spec["attrs"]
    return grade(spec, record) == 1 and any(all(getattr(o, k) == v for k, v in attrs.items()) for o in record.objects)


@torch.no_grad()
def layout_pairs(
    module: AMCRescorer, split: Any, queries: list[Any], images: ImageFeatures, base: QueryFeatures
) -> dict[str, float]:
    """On every TEST layout query with its gallery's right-place and wrong-place images: the AUC of
    the score (right place above wrong place), and probes of the attended cell from x^q and v^q."""
    aucs, fused, visual, cells = [], [], [], []
    for row in layout_rows(queries):
        spec = queries[row].spec
        right = [r.id for r in split.images if grade(spec, r) == 2]
        wrong = [r.id for r in split.images if misplaced(spec, r)]
        if not right or not wrong:
            continue
        sub = QueryFeatures(base.embedding[[row]], base.candidates, base.relevance, base.valid, [])
        features = candidate_features(split, [queries[row]], sub, [right + wrong])
        n = len(right) + len(wrong)
        scores = batch_outputs(module, images, features, torch.tensor([0]))[0][0, :n, 0].numpy()
        pos, neg = scores[: len(right)], scores[len(right) :]
        aucs.append(float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()))
        v, x, att = fused_vectors(module, images, features, n)
        visual.append(v)
        fused.append(x)
        cells.append(cell_of_region(att.argmax(axis=1)))
    v, x, y = np.concatenate(visual), np.concatenate(fused), np.concatenate(cells)
    half = len(aucs) // 2  # probe: the first half of the queries' pairs -> the second half's
    split_at = sum(len(c) for c in cells[:half])
    return {
        "auc": float(np.mean(aucs)),
        "queries": len(aucs),
        "fused_probe": probe_accuracy(x[:split_at], y[:split_at], x[split_at:], y[split_at:]),
        "visual_probe": probe_accuracy(v[:split_at], y[:split_at], v[split_at:], y[split_at:]),
        "pairs": int(len(y)),
    }


def fused_vectors(
    module: AMCRescorer, images: ImageFeatures, features: QueryFeatures, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(v^q, x^q, content attention) of one query's first n candidates."""
    candidates = features.candidates[0, :n]
    encoded = module.encode_query(features.embedding[[0]]).expand(n, -1)
    keywords = module.project_keywords(images.vocab_embedding)[images.keyword_index[candidates]]
    v, k, _, weights, _, _, _ = module.parts(
        encoded, images.regions[candidates], keywords, images.keyword_mask[candidates]
    )
    fused = weights[:, 0:1] * v + weights[:, 1:2] * k
    prior, module.van.prior = module.van.prior, False  # the content attention, whatever the layout
    try:
        _, attention, _ = module.van(
            encoded[:, : module.kernel_size], images.regions[candidates], module.where_of(encoded)
        )
    finally:
        module.van.prior = prior
    return v.numpy(), fused.numpy(), attention.numpy()


def diagnostics(corpus: Any, amc_full: AMCRescorer, image_encoder: nn.Module, text_encoder: nn.Module, tokenizer: Any):
    """The rows of QUALITY.md's layout diagnostic table: (question, measure, AMC Full, AMC Full with
    its where head off, reference)."""
    vocab = list(corpus.keyword_vocab)
    cos = pair_cosines(text_encoder, tokenizer)
    train_q = query_features(corpus.train, corpus.train.text_queries, text_encoder, tokenizer)
    test_q = query_features(corpus.test, corpus.test.text_queries, text_encoder, tokenizer)
    train_images = image_features(corpus.train, image_encoder, text_encoder, tokenizer, vocab)
    test_raw = image_features(corpus.test, image_encoder, text_encoder, tokenizer, vocab)
    test_images = served_features(test_raw)
    with_where = layout_pairs(amc_full, corpus.test, corpus.test.text_queries, test_images, test_q)
    blind = layout_pairs(where_off(amc_full), corpus.test, corpus.test.text_queries, test_images, test_q)
    text_probe = text_cell_probe(corpus.train.text_queries, train_q, corpus.test.text_queries, test_q)
    region_probe = region_cell_probe(train_images, test_raw)
    chance = f"{1 / 9:.4f} (chance)"
    same = "same"
    return [
        (
            "text",
            "mean cosine of query pairs differing only in position (vs only colour / only shape)",
            f"{cos['position']:.4f}",
            same,
            f"{cos['colour']:.4f} / {cos['shape']:.4f}",
        ),
        (
            "text",
            "probe: queried cell read back from the query embedding (accuracy)",
            f"{text_probe:.4f}",
            same,
            chance,
        ),
        (
            "regions",
            "probe: a region's 3 x 3 cell read back from its 128-d feature (accuracy)",
            f"{region_probe:.4f}",
            same,
            chance,
        ),
        (
            "fused",
            f"probe: the VAN's most attended cell read back from v^q ({with_where['pairs']} images)",
            f"{with_where['visual_probe']:.4f}",
            f"{blind['visual_probe']:.4f}",
            chance,
        ),
        (
            "fused",
            "probe: the same from the fused x^q = w_v v^q + w_k k^q",
            f"{with_where['fused_probe']:.4f}",
            f"{blind['fused_probe']:.4f}",
            chance,
        ),
        (
            "score",
            f"AUC: right object in the queried cell above the right object elsewhere ({with_where['queries']}"
            " layout queries, whole gallery)",
            f"{with_where['auc']:.4f}",
            f"{blind['auc']:.4f}",
            "0.5000 (blind to position)",
        ),
    ]


def where_off(module: AMCRescorer) -> AMCRescorer:
    """A copy of `module` with its where head at zero (uniform p_q): the same trained model, blind
    to position again, for the ablation rows."""
    blind = copy.deepcopy(module).eval()
    with torch.no_grad():
        blind.van.where.weight.zero_()
        blind.van.where.bias.zero_()
    return blind


def gate_off(module: AMCRescorer) -> AMCRescorer:
    """A copy of `module` whose where head counts for every query (WHERE_GATE 0), for the ablation
    row."""
    open_gate = copy.deepcopy(module).eval()
    open_gate.van.where_gate = 0.0
    return open_gate


def format_diagnostics(rows: list[tuple[str, str, str, str, str]]) -> str:
    lines = [
        "| question | measure | AMC Full | AMC Full, where head off | reference |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {q} | {m} | {v} | {b} | {r} |" for q, m, v, b, r in rows]
    return "\n".join(lines)


# --- directions, on validation -------------------------------------------------------------------


SHARES = ("full", "coverage")
"""The keyword route's share of the hybrid candidates (SEARCH_KEYWORD_SHARE), both validated."""


class Validation:
    """The held-out TRAIN queries (original and paraphrased) with their hybrid candidates over the
    whole TRAIN gallery, for each keyword share, computed once and shared by every direction."""

    def __init__(
        self,
        corpus: Any,
        held: list[Any],
        images: ImageFeatures,
        text_encoder: nn.Module,
        tokenizer: Any,
        tagger: nn.Module | None = None,
        limit: int = CANDIDATES,
        synonyms: Mapping[str, str] | None = None,
        shares: tuple[str, ...] = SHARES,
        routes: tuple[tuple[str, str, str, float], ...] | None = None,
    ):
        """`routes`: (name, candidate source, keyword share, keyword RRF weight) of each candidate
        set (ROUTES); by default hybrid RRF with each of `shares`, named by the share."""
        self.split = corpus.train
        self.images = served_features(images)
        self.sets: dict[str, tuple[list[Any], QueryFeatures]] = {}
        chosen = routes if routes is not None else tuple((share, "hybrid", share, 1.0) for share in shares)
        with tempfile.TemporaryDirectory() as directory:
            source = CandidateSource(gallery_records(self.split, images, tagger), Path(directory), synonyms=synonyms)
            try:
                for wording, queries in (("original", held), ("paraphrased", paraphrased(held, 7))):
                    base = query_features(self.split, queries, text_encoder, tokenizer)
                    for name, route, share, weight in chosen:
                        source.index.keyword_share = share
                        lists = [
                            source.candidates(base.embedding[i].numpy(), q.text, route, limit, weight)
                            for i, q in enumerate(queries)
                        ]
                        self.sets[f"{wording}/{name}"] = (
                            queries,
                            candidate_features(self.split, queries, base, lists),
                        )
            finally:
                source.close()

    def score(self, module: nn.Module) -> dict[str, dict[str, float]]:
        out = {}
        for name, (queries, features) in self.sets.items():
            out[name] = summarise(rank_scores(self.split, queries, features, score_all(module, self.images, features)))
        return out


DIRECTIONS: tuple[tuple[str, float], ...] = (
    ("none", 0.0),
    ("term", 0.0),
    ("prior", 0.0),
    ("both", 0.0),
    ("term", 1.0),
    ("prior", 1.0),
    ("both", 1.0),
)
"""(layout, where_weight) pairs: each way of using the where head, taught by the ranking loss alone
(0) or with its own loss beside it (1)."""


def train_direction(
    layout: str,
    where_weight: float,
    images: ImageFeatures,
    train: QueryFeatures,
    held: QueryFeatures,
    key_att: nn.Module,
    cfg: AMCBudget,
    seed: int,
) -> tuple[nn.Module, float]:
    """ImgATT then AMC Full (warm VAN from ImgATT, LAN from the given KeyATT) with this layout."""
    cfg = replace(cfg, where_weight=where_weight)
    torch.manual_seed(seed)
    img_att, _ = fit(AMCRescorer("img", layout=layout), images, train, held, cfg, seed)
    amc = AMCRescorer("full", layout=layout)
    amc.van.load_state_dict(img_att.van.state_dict())
    amc.lan.load_state_dict(key_att.lan.state_dict())
    return fit(amc, images, train, held, cfg, seed + 2)


def run_directions(
    corpus: Any, image_encoder: nn.Module, key_att: nn.Module, text_encoder, tokenizer, seed: int, size: str
):
    cfg = as_amc_budget({"size": size})
    vocab = list(corpus.keyword_vocab)
    images = image_features(corpus.train, image_encoder, text_encoder, tokenizer, vocab)
    train_queries, held_queries = training_queries(corpus, seed, cfg)
    train = query_features(corpus.train, train_queries, text_encoder, tokenizer)
    held = query_features(corpus.train, held_queries, text_encoder, tokenizer)
    validation = Validation(corpus, held_queries, images, text_encoder, tokenizer)
    results = []
    for layout, where_weight in DIRECTIONS:
        started = time.perf_counter()
        module, held_ndcg = train_direction(layout, where_weight, images, train, held, key_att, cfg, seed)
        scores = validation.score(module)
        results.append(
            {
                "layout": layout,
                "where_weight": where_weight,
                "held": held_ndcg,
                "seconds": time.perf_counter() - started,
            }
            | scores
        )
        log.info("direction %s, where loss %s: %s", layout, where_weight, scores)
    return results, len(held_queries)


GENERATED_END = "<!-- the table above is written by python -m models.eval.layout; what follows is kept -->"

DIRECTION_NOTES = {
    "none": "AMC as published: the VAN's content attention only",
    "term": "score + w log(36 sum a p_q + 0.01): the where head's placement term",
    "prior": "VAN logits + log p_q: v^q pools the queried cells",
    "both": "the prior and the placement term",
}


def format_directions(results: list[dict[str, Any]], n_held: int, seconds: float) -> str:
    families = ("all", "layout", "attribute", "theme", "mixed")
    lines = [
        "# Layout directions, on validation",
        "",
        "Written by `python -m models.eval.layout` (models/eval/layout.py). Each direction retrains ImgATT and AMC"
        " Full (demo budget, the same frozen image encoder, features and KeyATT as `make models`) and is scored on"
        f" the {n_held} held-out TRAIN queries ranked over the whole TRAIN gallery with the service's hybrid"
        " candidates (100), as worded and paraphrased (paraphrase seed 7, not TEST's), with the keyword route's"
        " share of the candidates full or by coverage (SEARCH_KEYWORD_SHARE). TEST is never looked at; the"
        f" defaults (models/nets/amc.py LAYOUT = `{LAYOUT}`, SEARCH_KEYWORD_SHARE = `{SearchSettings.keyword_share}`)"
        " are the ones chosen here.",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {seconds:.0f} s; load average"
        f" {' / '.join(f'{x:.2f}' for x in os.getloadavg())} (1 / 5 / 15 min) at the end",
        "",
        "| direction | what it does | where loss | keyword share | held-out NDCG@5 (50 candidates) | "
        + " | ".join(f"{f} NDCG@5" for f in families)
        + " | paraphrased all | paraphrased layout | paraphrase drop |",
        "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in families) + " | --- | --- | --- |",
    ]
    for r in results:
        for share in SHARES:
            o, p = r[f"original/{share}"], r[f"paraphrased/{share}"]
            lines.append(
                f"| {r['layout']} | {DIRECTION_NOTES[r['layout']]} | {r['where_weight']:g} | {share} | {r['held']:.4f} | "
                + " | ".join(f"{o[f + '@5']:.4f}" for f in families)
                + f" | {p['all@5']:.4f} | {p['layout@5']:.4f} | {o['all@5'] - p['all@5']:+.4f} |"
            )
    return "\n".join(lines) + "\n"


def validation_inputs(corpus: Any, folder: Path, text_encoder: nn.Module, tokenizer: Any, seed: int, size: str):
    """(held-out TRAIN queries, TRAIN image features, the AMC Full and keyword tagger of `folder`):
    what a validation run of already trained models needs."""
    from models.export.checkpoints import load_amc_models, load_image_encoder, load_keyword_tagger

    vocab = list(corpus.keyword_vocab)
    _, held = training_queries(corpus, seed, as_amc_budget({"size": size}))
    images = image_features(corpus.train, load_image_encoder(folder, "image_encoder"), text_encoder, tokenizer, vocab)
    return held, images, load_amc_models(folder)["amc_full"], load_keyword_tagger(folder, len(vocab))


def placement_validation(
    corpus: Any, folder: Path, text_encoder: nn.Module, tokenizer: Any, seed: int, size: str
) -> str:
    """The trained AMC Full of `folder` on validation (held-out TRAIN queries, whole TRAIN gallery,
    hybrid, 100 candidates), the gallery indexed without and with the tagger's placements: a
    markdown table for LAYOUT.md."""
    held, images, amc_full, tagger = validation_inputs(corpus, folder, text_encoder, tokenizer, seed, size)
    families = ("all", "layout", "attribute", "theme", "mixed")
    lines = [
        "| gallery | wording | " + " | ".join(f"{f} NDCG@5" for f in families) + " |",
        "| --- | --- | " + " | ".join("---" for _ in families) + " |",
    ]
    for name, with_tagger in (("without placements", None), ("with placements (kept)", tagger)):
        scores = Validation(corpus, held, images, text_encoder, tokenizer, with_tagger).score(amc_full)
        for wording in ("original", "paraphrased"):
            row = scores[f"{wording}/full"]
            lines.append(f"| {name} | {wording} | " + " | ".join(f"{row[f + '@5']:.4f}" for f in families) + " |")
    return "\n".join(lines) + "\n"


SYNONYM_SETTINGS: tuple[tuple[float, float], ...] = (
    (0.50, 0.10),
    (0.55, 0.10),
    (0.60, 0.10),
    (0.65, 0.10),
    (0.55, 0.05),
    (0.55, 0.15),
    (0.55, 0.00),
)
"""(minimum cosine, minimum margin) pairs of the query synonym table tried on validation."""


def synonym_validation(corpus: Any, folder: Path, text_encoder: nn.Module, tokenizer: Any, seed: int, size: str) -> str:
    """The trained AMC Full of `folder` on validation (held-out TRAIN queries, whole TRAIN gallery
    with placements, hybrid, 100 candidates, SEARCH_KEYWORD_SHARE's default) without query
    synonyms and with the table of each SYNONYM_SETTINGS pair: a markdown table for LAYOUT.md."""
    from models.export.synonyms import candidate_words, nearest_vocabulary, select_synonyms

    vocab = list(corpus.keyword_vocab)
    held, images, amc_full, tagger = validation_inputs(corpus, folder, text_encoder, tokenizer, seed, size)
    words = candidate_words(vocab)
    cosines, nearest = nearest_vocabulary(text_encoder, tokenizer, vocab, words)
    families = ("all", "layout", "attribute", "theme", "mixed")
    share = SearchSettings.keyword_share
    lines = [
        "| minimum cosine | minimum margin | table entries | wording | "
        + " | ".join(f"{f} NDCG@5" for f in families)
        + " | drop (all) |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in families) + " | --- |",
    ]
    settings: list[tuple[float, float] | None] = [None, *SYNONYM_SETTINGS]
    for setting in settings:
        table = {} if setting is None else select_synonyms(words, vocab, cosines, nearest, *setting)
        scores = Validation(
            corpus, held, images, text_encoder, tokenizer, tagger, synonyms=table, shares=(share,)
        ).score(amc_full)
        original, reworded = scores[f"original/{share}"], scores[f"paraphrased/{share}"]
        head = "| none | none | 0 |" if setting is None else f"| {setting[0]:.2f} | {setting[1]:.2f} | {len(table)} |"
        for wording, row in (("original", original), ("paraphrased", reworded)):
            drop = f"{original['all@5'] - reworded['all@5']:+.4f}" if wording == "paraphrased" else ""
            lines.append(f"{head} {wording} | " + " | ".join(f"{row[f + '@5']:.4f}" for f in families) + f" | {drop} |")
        log.info("synonyms %s: %d entries, %s", setting, len(table), scores)
    return "\n".join(lines) + "\n"


ROUTES: tuple[tuple[str, str, str, float], ...] = (
    ("vector", "vector", "full", 1.0),
    ("keyword", "keyword", "full", 1.0),
    ("hybrid, RRF (kept)", "hybrid", "full", 1.0),
    ("hybrid, keyword share by coverage", "hybrid", "coverage", 1.0),
    ("hybrid, RRF, keyword weight 1.5", "hybrid", "full", 1.5),
    ("hybrid, RRF, keyword weight 2", "hybrid", "full", 2.0),
    ("hybrid, RRF, keyword weight 3 (keyword list first)", "hybrid", "full", 3.0),
)
"""(name, candidate source, SEARCH_KEYWORD_SHARE, keyword RRF weight) of each candidate route
validated by --routes. A keyword weight above 160 / 61 puts the whole keyword list first."""


def route_validation(corpus: Any, folder: Path, text_encoder: nn.Module, tokenizer: Any, seed: int, size: str) -> str:
    """The trained AMC Full of `folder` on validation (held-out TRAIN queries, whole TRAIN gallery
    with placements, the exported query synonyms, 100 candidates) over each candidate route of
    ROUTES, as worded and paraphrased: per family, which route helps and which hurts (a markdown
    table for LAYOUT.md). TEST is never looked at."""
    from models.export.synonyms import build_synonyms

    held, images, amc_full, tagger = validation_inputs(corpus, folder, text_encoder, tokenizer, seed, size)
    synonyms = build_synonyms(text_encoder, tokenizer, list(corpus.keyword_vocab))
    scores = Validation(corpus, held, images, text_encoder, tokenizer, tagger, synonyms=synonyms, routes=ROUTES).score(
        amc_full
    )
    families = ("all", "layout", "attribute", "theme", "mixed")
    lines = [
        "| candidates | wording | " + " | ".join(f"{f} NDCG@5" for f in families) + " |",
        "| --- | --- | " + " | ".join("---" for _ in families) + " |",
    ]
    for wording in ("original", "paraphrased"):
        for name, *_ in ROUTES:
            row = scores[f"{wording}/{name}"]
            lines.append(f"| {name} | {wording} | " + " | ".join(f"{row[f + '@5']:.4f}" for f in families) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from amcsearch.query_encoder.tokenize import Tokenizer

    from models.corpus import load_or_build_corpus
    from models.export.checkpoints import load_amc_models, load_image_encoder
    from models.nets.text_encoder import load_text_encoder

    parser = evaluation_parser("python -m models.eval.layout", __doc__.split("\n")[0], "benchmarks/LAYOUT.md")
    parser.add_argument(
        "--placements",
        action="store_true",
        help="only print the validation table of the gallery with and without the tagger's placements (no training)",
    )
    parser.add_argument(
        "--synonyms",
        action="store_true",
        help="only print the validation table of the query synonym thresholds (no training)",
    )
    parser.add_argument(
        "--routes",
        action="store_true",
        help="only print the validation table of each candidate route and keyword share (no training)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    folder = args.checkpoints / args.size
    corpus = load_or_build_corpus(args.size, seed=args.seed, cache_dir=args.corpus_cache)
    text_encoder, tokenizer = load_text_encoder(), Tokenizer.default()
    if args.placements:
        print(placement_validation(corpus, folder, text_encoder, tokenizer, args.seed, args.size))
        return
    if args.synonyms:
        print(synonym_validation(corpus, folder, text_encoder, tokenizer, args.seed, args.size))
        return
    if args.routes:
        print(route_validation(corpus, folder, text_encoder, tokenizer, args.seed, args.size))
        return
    key_att = load_amc_models(folder)["key_att"]
    results, n_held = run_directions(
        corpus, load_image_encoder(folder, "image_encoder"), key_att, text_encoder, tokenizer, args.seed, args.size
    )
    document = format_directions(results, n_held, time.perf_counter() - started) + "\n" + GENERATED_END + "\n"
    print(document)
    earlier = args.out.read_text() if args.out.exists() else ""
    if GENERATED_END in earlier:  # the follow-up runs written below the table stay
        document += earlier.split(GENERATED_END, 1)[1].lstrip("\n").join(["\n", ""])
    args.out.write_text(document)


if __name__ == "__main__":
    main()

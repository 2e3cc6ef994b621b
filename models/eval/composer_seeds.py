"""Do TIRG and concatenation differ, or does one training run's luck decide? Both retrained with
several seeds on the same features and budget as `make models`, each scored on TEST (R@1, the
reference excluded) and on the held-out TRAIN queries that select epochs.

    python -m models.eval.composer_seeds --size demo --seed 0 --seeds 5 --out benchmarks/COMPOSER_SEEDS.md

QUALITY.md's ordering table compares the two exported checkpoints on 300 TEST queries: its
interval is the query sampling's, for one training run each. This is the other source of
variance, the training run itself. Nothing here is selected: every seed's model is reported.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from models.eval import evaluation_parser
from models.features.composed import precompute_features
from models.nets.composer import build_composer
from models.train.composer import as_composer_budget, fit_composer, heldout_r1, holdout_rows, synthesize_queries

log = logging.getLogger(__name__)
METHODS = ("concat", "tirg")


def run(corpus, image_encoder, text_encoder, tokenizer, seed: int, seeds: int) -> dict[str, list[tuple[float, float]]]:
    """Per method, (held-out TRAIN R@1, TEST R@1) of each training seed (seed, seed + 1, ...)."""
    cfg = as_composer_budget(None)
    extra = synthesize_queries(corpus, int(round(cfg.synthetic_factor * len(corpus.train.composed_queries))), seed)
    train_feats = precompute_features(corpus.train, image_encoder, text_encoder, tokenizer, extra)
    train, held = holdout_rows(train_feats, cfg.val_fraction, seed)
    test_feats = precompute_features(corpus.test, image_encoder, text_encoder, tokenizer)
    every_test_query = torch.arange(test_feats.n_queries)
    offsets = {"concat": 2, "tirg": 3}  # train_composers' seed offsets: run 0 is make models' own
    out: dict[str, list[tuple[float, float]]] = {m: [] for m in METHODS}
    for run_index in range(seeds):
        for method in METHODS:
            run_seed = seed + offsets[method] + 100 * run_index
            torch.manual_seed(run_seed)
            model, held_r1 = fit_composer(build_composer(method), train_feats, train, held, cfg, run_seed)
            out[method].append((held_r1, heldout_r1(model, test_feats, every_test_query)))
            log.info("run %d %s: held-out R@1 %.3f, TEST R@1 %.3f", run_index, method, *out[method][-1])
    return out


def format_table(result: dict[str, list[tuple[float, float]]], seconds: float, seeds: int) -> str:
    lines = [
        "## TIRG against concatenation, over training runs",
        "",
        f"Written by `python -m models.eval.composer_seeds --seeds {seeds}` (models/eval/composer_seeds.py):"
        f" each method retrained {seeds} times (seeds apart, run 0 being `make models`' own), same features and"
        f" budget; R@1 on TEST and on the held-out TRAIN queries that pick each run's epoch."
        f" {seconds:.0f} s; load average {' / '.join(f'{x:.2f}' for x in os.getloadavg())} at the end.",
        "",
        "| method | TEST R@1 per run | TEST R@1 mean (sd) | held-out R@1 mean (sd) |",
        "| --- | --- | --- | --- |",
    ]
    for method, runs in result.items():
        held = np.array([h for h, _ in runs])
        test = np.array([t for _, t in runs])
        lines.append(
            f"| {method} | {', '.join(f'{t:.3f}' for t in test)} | {test.mean():.3f} ({test.std(ddof=1):.3f}) |"
            f" {held.mean():.3f} ({held.std(ddof=1):.3f}) |"
        )
    tirg = np.array([t for _, t in result["tirg"]])
    concat = np.array([t for _, t in result["concat"]])
    wins = int((tirg > concat).sum())
    ties = int((tirg == concat).sum())
    lines += [
        "",
        f"TIRG minus concat, run by run: {', '.join(f'{d:+.3f}' for d in tirg - concat)}"
        f" (TIRG ahead in {wins} of {len(tirg)} runs, level in {ties}).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from amcsearch.query_encoder.tokenize import Tokenizer

    from models.corpus import load_or_build_corpus
    from models.export.checkpoints import load_image_encoder
    from models.nets.text_encoder import load_text_encoder

    parser = evaluation_parser(
        "python -m models.eval.composer_seeds", __doc__.split("\n")[0], "benchmarks/COMPOSER_SEEDS.md"
    )
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(os.cpu_count() or 1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    started = time.perf_counter()
    corpus = load_or_build_corpus(args.size, seed=args.seed, cache_dir=args.corpus_cache)
    image_encoder = load_image_encoder(args.checkpoints / args.size, "image_encoder")
    result = run(corpus, image_encoder, load_text_encoder(), Tokenizer.default(), args.seed, args.seeds)
    document = format_table(result, time.perf_counter() - started, args.seeds)
    print(document)
    Path(args.out).write_text(document)


if __name__ == "__main__":
    main()

"""Do the composers differ, or does one training run's luck decide? Concatenation, TIRG on the
global features, TIRG on the region grid and the locally bounded composer retrained with several
seeds on the same features and budget as `make models`, each scored on TEST (R@1, the reference
excluded) and on the held-out TRAIN queries that select epochs.

    python -m models.eval.composer_seeds --size demo --seed 0 --seeds 5 --out benchmarks/COMPOSER_SEEDS.md

QUALITY.md's ordering table compares the `make models` checkpoints on 300 TEST queries: its
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
from models.eval.composed import METHOD_NAMES, PAPER_ORDER
from models.features.composed import precompute_features
from models.nets.composer import COMPOSERS, build_composer
from models.train.composer import as_composer_budget, fit_composer, heldout_r1, holdout_rows, synthesize_queries

log = logging.getLogger(__name__)
METHODS = ("concat", "tirg", "tirg_grid", "lbf")
PAIRS = (*PAPER_ORDER, ("tirg", "tirg_grid"))
"""(weaker, stronger), compared run by run where both were trained: QUALITY.md's ordering rows,
then what the region grid adds to TIRG."""


def seed_offset(method: str) -> int:
    """train_composers' seed offset of a method (its place in COMPOSERS): run 0 is make models' own."""
    return list(COMPOSERS).index(method)


def run(
    corpus, image_encoder, text_encoder, tokenizer, seed: int, seeds: int, methods: tuple[str, ...] = METHODS
) -> dict[str, list[tuple[float, float, float]]]:
    """Per method, (held-out TRAIN R@1, TEST R@1, training seconds) of each training seed
    (seed + offset, then 100 apart)."""
    cfg = as_composer_budget(None)
    extra = synthesize_queries(corpus, int(round(cfg.synthetic_factor * len(corpus.train.composed_queries))), seed)
    train_feats = precompute_features(corpus.train, image_encoder, text_encoder, tokenizer, extra)
    train, held = holdout_rows(train_feats, cfg.val_fraction, seed)
    test_feats = precompute_features(corpus.test, image_encoder, text_encoder, tokenizer)
    every_test_query = torch.arange(test_feats.n_queries)
    out: dict[str, list[tuple[float, float, float]]] = {m: [] for m in methods}
    for run_index in range(seeds):
        for method in methods:
            run_seed = seed + seed_offset(method) + 100 * run_index
            torch.manual_seed(run_seed)
            started = time.perf_counter()
            model, held_r1 = fit_composer(build_composer(method), train_feats, train, held, cfg, run_seed)
            seconds = time.perf_counter() - started
            out[method].append((held_r1, heldout_r1(model, test_feats, every_test_query), seconds))
            log.info("run %d %s: held-out R@1 %.3f, TEST R@1 %.3f (%.0f s)", run_index, method, *out[method][-1])
    return out


def format_table(result: dict[str, list[tuple[float, float, float]]], seconds: float, seeds: int) -> str:
    methods = ",".join(result)
    lines = [
        "## Composers over training runs",
        "",
        f"Written by `python -m models.eval.composer_seeds --seeds {seeds} --methods {methods}`"
        f" (models/eval/composer_seeds.py): each method retrained {seeds} times (seeds apart, run 0 being"
        f" `make models`' own), same features and budget; R@1 on TEST and on the held-out TRAIN queries that"
        f" pick each run's epoch; training seconds per run (2 threads, beside other work)."
        f" {seconds:.0f} s; load average {' / '.join(f'{x:.2f}' for x in os.getloadavg())} at the end.",
    ]
    lines += [
        "",
        "| method | TEST R@1 per run | TEST R@1 mean (sd) | held-out R@1 mean (sd) | training s per run |",
        "| --- | --- | --- | --- | --- |",
    ]
    for method, runs in result.items():
        held = np.array([r[0] for r in runs])
        test = np.array([r[1] for r in runs])
        train_s = np.array([r[2] for r in runs])
        lines.append(
            f"| {METHOD_NAMES[method]} | {', '.join(f'{t:.3f}' for t in test)} |"
            f" {test.mean():.3f} ({_sd(test):.3f}) | {held.mean():.3f} ({_sd(held):.3f}) | {train_s.mean():.0f} |"
        )
    lines.append("")
    for weaker, stronger in PAIRS:
        if weaker not in result or stronger not in result:
            continue
        strong = np.array([r[1] for r in result[stronger]])
        weak = np.array([r[1] for r in result[weaker]])
        lines.append(
            f"- TEST R@1, {METHOD_NAMES[stronger]} minus {METHOD_NAMES[weaker]}, run by run:"
            f" {', '.join(f'{d:+.3f}' for d in strong - weak)} (ahead in {int((strong > weak).sum())} of"
            f" {len(strong)} runs, level in {int((strong == weak).sum())})."
        )
    return "\n".join(lines) + "\n"


def _sd(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def main(argv: list[str] | None = None) -> None:
    from amcsearch.query_encoder.tokenize import Tokenizer

    from models.corpus import load_or_build_corpus
    from models.export.checkpoints import load_image_encoder
    from models.nets.text_encoder import load_text_encoder

    parser = evaluation_parser(
        "python -m models.eval.composer_seeds", __doc__.split("\n")[0], "benchmarks/COMPOSER_SEEDS.md"
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated composer names")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(os.cpu_count() or 1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    started = time.perf_counter()
    corpus = load_or_build_corpus(args.size, seed=args.seed, cache_dir=args.corpus_cache)
    image_encoder = load_image_encoder(args.checkpoints / args.size, "image_encoder")
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    result = run(corpus, image_encoder, load_text_encoder(), Tokenizer.default(), args.seed, args.seeds, methods)
    document = format_table(result, time.perf_counter() - started, args.seeds)
    print(document)
    Path(args.out).write_text(document)


if __name__ == "__main__":
    main()

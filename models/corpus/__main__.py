"""`python -m models.corpus [--size demo] [--seed 0] [--images DIR]`: build, cache, summarise."""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np

from models.corpus import load_or_build_corpus, write_image_dir
from models.corpus.build import cache_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="ci", choices=["ci", "demo", "full"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default="build/corpus")
    parser.add_argument("--images", help="also write the test split as PNGs + metadata.jsonl here")
    args = parser.parse_args()
    start = time.perf_counter()
    corpus = load_or_build_corpus(args.size, args.seed, args.cache_dir)
    print(
        f"corpus {args.size} seed {args.seed}: {time.perf_counter() - start:.1f} s, "
        f"cache {cache_path(args.size, args.seed, args.cache_dir)}"
    )
    for split in (corpus.train, corpus.test):
        rel = Counter(r for q in split.text_queries for r in q.relevance)
        print(
            f"  {split.name}: {len(split.images)} images, {len(set(split.labels))} labels, "
            f"{np.mean([r.corrupted for r in split.images]):.0%} corrupted, "
            f"{len(split.text_queries)} text / {len(split.image_queries)} image / "
            f"{len(split.composed_queries)} composed queries; text relevance {dict(rel)}"
        )
    if args.images:
        paths = write_image_dir(corpus.test, args.images)
        print(f"wrote {len(paths)} images to {args.images}")


if __name__ == "__main__":
    main()

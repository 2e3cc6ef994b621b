"""Served quality over the whole index: each text query of a split ranked by Search over every
indexed image, graded with the corpus's own rule (models.corpus.queries.grade).

    python -m benchmarks.served_quality --size ci --split test

Used by the scale benchmark (NDCG@10 at each size) and runnable on its own against a fresh stack.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path

import grpc
import numpy as np
from amcsearch.v1 import common_pb2, search_pb2, search_pb2_grpc

from loadtests.auth import write_metadata
from loadtests.data import png
from loadtests.stack import start_stack
from models.corpus.queries import grade
from models.metrics import ndcg_against_ideal

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("served_quality")


def image_items(split, prefix: str = "") -> list[search_pb2.ImageItem]:
    """The split's images as the benchmarks index them: the corpus's noisy keywords as weighted
    keywords (no auto tags), the caption as the title."""
    return [
        search_pb2.ImageItem(
            id=f"{prefix}{r.id}",
            image=png(p),
            title=r.caption,
            keywords=[common_pb2.Keyword(text=k, confidence=float(w)) for k, w in r.noisy_keywords],
        )
        for r, p in zip(split.images, split.pixels, strict=True)
    ]


async def index_split(stub, split, prefix: str = "", batch: int = 32) -> None:
    items = image_items(split, prefix)
    for start in range(0, len(items), batch):
        reply = await stub.Index(
            search_pb2.IndexRequest(items=items[start : start + batch], skip_auto_tags=True),
            timeout=300,
            metadata=write_metadata(),
        )
        if reply.failed_count:
            raise RuntimeError(f"indexing failed: {[r.error for r in reply.results if not r.indexed][:3]}")


SOURCES = {"default": 0, "vector": 1, "keyword": 2, "hybrid": 3}


async def whole_index_ndcg(
    stub,
    split,
    k: int = 10,
    prefix: str = "",
    concurrency: int = 4,
    candidates: int = 0,
    source: str = "default",
    queries=None,
) -> dict[str, float]:
    """Mean NDCG@k per query family and over all, each query ranked over the whole index."""
    by_id = {f"{prefix}{r.id}": r for r in split.images}
    scores: dict[str, list[float]] = {}
    queue = list(split.text_queries if queries is None else queries)

    async def worker() -> None:
        while queue:
            query = queue.pop()
            reply = await stub.Search(
                search_pb2.SearchRequest(
                    text=query.text, top_k=k, candidates=candidates, candidate_source=SOURCES[source]
                ),
                timeout=60,
            )
            if reply.degradations:
                raise RuntimeError(f"degraded search: {reply.degradations}")
            ranked = [grade(query.spec, by_id[r.id]) for r in reply.results if r.id in by_id]
            ideal = sorted((grade(query.spec, r) for r in split.images), reverse=True)[:k]
            score = ndcg_against_ideal(ranked, ideal, k)
            scores.setdefault(query.family, []).append(score)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    out = {family: float(np.mean(values)) for family, values in sorted(scores.items())}
    out["all"] = float(np.mean([v for values in scores.values() for v in values]))
    return out


async def main_async(args) -> None:
    from models.corpus import load_or_build_corpus

    corpus = load_or_build_corpus(args.size, args.seed)
    split = corpus.test if args.split == "test" else corpus.train
    stack = start_stack(
        args.repository, args.work, {"TRITON_CANARY_INTERVAL_SECONDS": "3600", "SEARCH_HYBRID_MERGE": args.merge}
    )
    try:
        async with grpc.aio.insecure_channel(stack.address("search")) as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            await index_split(stub, split)
            print(f"load average {os.getloadavg()}; {len(split.images)} images, {len(split.text_queries)} queries")
            for source in args.sources.split(","):
                result = await whole_index_ndcg(stub, split, args.k, source=source)
                print(
                    f"{source} (merge {args.merge}): "
                    + " ".join(f"{family} {value:.4f}" for family, value in result.items())
                )
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="ci")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="test", choices=["test", "train"])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--sources", default="default", help="comma-separated: vector, keyword, hybrid, default")
    parser.add_argument("--merge", default="rrf", choices=["rrf", "union"])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "served_quality")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

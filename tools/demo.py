"""`make demo`: the whole product in one command.

Starts the stack (Triton, Redis, the five services), indexes the demo corpus's test split, runs
example searches of each kind (text, image, image + modification), prints the results with their
modality weights, writes an HTML page, and says where to look next. Then cross-domain search: a
catalogue of clean, tagged product images in its own collection, and street snapshots of those
products as queries (TagYNet + CtxYNet, attention heatmaps in the pages). Ctrl-C stops everything.

Run as `python -m tools.demo` with PYTHONPATH=services:. (the Makefile sets it): it imports the
corpus generator from models/, which the installed amcsearch package must not depend on.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import grpc
from amcsearch.cli import index_directory, results_table
from amcsearch.launcher import ROOT, Stack
from amcsearch.report import query_kind, thumbnails_from, write_html
from amcsearch.v1 import search_pb2, search_pb2_grpc
from PIL import Image

from models.corpus import load_or_build_corpus
from models.corpus.street_shop import load_or_build_street_shop

TEXT_EXAMPLES = ("large red circle top-left", "festive images", "vintage picture with a green triangle")


def write_corpus_dir(size: str, seed: int, directory: Path):
    """The test split as PNG files plus metadata.jsonl with the simulated tagger's keywords.

    The scenes' themes are never drawn: only these external keywords carry them (as Clickture's
    auto-tags do), which is what AMC's keyword modality is for.
    """
    split = load_or_build_corpus(size, seed).test
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "metadata.jsonl").open("w") as metadata:
        for record, pixels in zip(split.images, split.pixels, strict=False):
            path = directory / f"{record.id}.png"
            if not path.exists():
                Image.fromarray(pixels).save(path)
            entry = {"id": record.id, "title": record.caption, "keywords": record.noisy_keywords}
            metadata.write(json.dumps(entry) + "\n")
    return split


def run_examples(stub, out_dir: Path, composed_query, images: Path) -> None:
    """Three text searches, one by image, one composed (a modification from the benchmark); the
    pages draw the results from `images`, the folder the demo wrote and indexed."""
    first_id = composed_query.source_id
    modification = composed_query.modification
    requests = [search_pb2.SearchRequest(text=t, top_k=5, explain=True) for t in TEXT_EXAMPLES]
    requests.append(search_pb2.SearchRequest(image=search_pb2.ImageQuery(id=first_id), top_k=5))
    requests.append(
        search_pb2.SearchRequest(
            composed=search_pb2.ComposedQuery(image=search_pb2.ImageQuery(id=first_id), modification=modification),
            top_k=5,
        )
    )
    for number, request in enumerate(requests, 1):
        started = time.perf_counter()
        reply = stub.Search(request, timeout=60)
        took = (time.perf_counter() - started) * 1000
        kind = request.WhichOneof("query")
        label = {
            "text": request.text,
            "image": f"like image {first_id}",
            "composed": f"image {first_id} + '{modification}' (target: {composed_query.target_id})",
        }[kind]
        print(f"\n== {kind} search: {label}  ({took:.0f} ms)")
        print(results_table(reply, query_kind(request)))
        thumbnails = thumbnails_from(images, [first_id, *(r.id for r in reply.results)])
        write_html(out_dir / f"search-{number}.html", request, reply, thumbnails)


CATALOGUE = "catalogue"
CATALOGUE_PRODUCTS = 200
STREET_EXAMPLES = 3


def write_catalogue_dir(size: str, seed: int, directory: Path):
    """The street/shop corpus's held-out products: shop images as PNG files with their tags in
    metadata.jsonl, and the street snapshots beside them (queries, not indexed)."""
    split = load_or_build_street_shop(size, seed).test
    shop, street = directory / "shop", directory / "street"
    shop.mkdir(parents=True, exist_ok=True)
    street.mkdir(parents=True, exist_ok=True)
    count = min(CATALOGUE_PRODUCTS, len(split.products))
    with (shop / "metadata.jsonl").open("w") as metadata:
        for i, product in enumerate(split.products[:count]):
            Image.fromarray(split.shop_pixels[i]).save(shop / f"{product.id}.png")
            metadata.write(json.dumps({"id": product.id, "title": " ".join(product.tags), "tags": product.tags}) + "\n")
    queries: list[tuple[Path, str]] = []
    for shot in range(len(split.street_pixels)):
        row = int(split.street_product[shot])
        if row < count and len(queries) < STREET_EXAMPLES and all(q[1] != split.products[row].id for q in queries):
            path = street / f"street-{shot}.png"
            Image.fromarray(split.street_pixels[shot]).save(path)
            queries.append((path, split.products[row].id))
    return shop, queries


def run_cross_domain(stub, shop: Path, queries, out_dir: Path) -> None:
    stub.CreateCollection(search_pb2.CreateCollectionRequest(name=CATALOGUE), timeout=30)
    indexed, failed = index_directory(
        stub, shop, batch_size=32, skip_auto_tags=True, progress=False, collection=CATALOGUE
    )
    print(f"\n== cross-domain: catalogue of {indexed} clean product images with their tags ({len(failed)} failed)")
    for number, (path, product) in enumerate(queries, 1):
        request = search_pb2.SearchRequest(
            image=search_pb2.ImageQuery(data=path.read_bytes()),
            image_match=search_pb2.SearchRequest.CROSS_DOMAIN,
            top_k=5,
            explain=True,
            collection=CATALOGUE,
        )
        started = time.perf_counter()
        reply = stub.Search(request, timeout=60)
        took = (time.perf_counter() - started) * 1000
        rank = next((i for i, r in enumerate(reply.results, 1) if r.id == product), None)
        found = f"found at rank {rank}" if rank else "not in the top 5"
        print(f"\n== street snapshot {path.name} of product {product}: {found}  ({took:.0f} ms)")
        print(results_table(reply, query_kind(request)))
        thumbnails = thumbnails_from(shop, [r.id for r in reply.results])
        write_html(out_dir / f"cross-domain-{number}.html", request, reply, thumbnails)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-running", action="store_true", help="leave the stack up until Ctrl-C")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "WARNING"))
    var = ROOT / "var"
    images = var / f"demo-images-{args.size}-{args.seed}"
    started = time.monotonic()
    split = write_corpus_dir(args.size, args.seed, images)
    print(f"demo corpus: {len(split.images)} test-split images in {images}")
    index_path = var / f"demo-{args.size}.db"
    for stale in var.glob(f"{index_path.name}*"):  # each demo indexes afresh: the store and its
        stale.unlink(missing_ok=True)  # write-ahead log, generation, lock and graph snapshots
    stack = Stack(
        ROOT / "model_repository",
        var / "log",
        redis_url=os.environ.get("REDIS_URL"),
        extra_env={"INDEX_URI": str(index_path)},
    )
    try:
        stack.start(timeout=180)
        print(f"stack healthy in {time.monotonic() - started:.0f}s:\n{stack.table()}\n")
        with grpc.insecure_channel(stack.address("search")) as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            began = time.monotonic()
            indexed, failed = index_directory(stub, images, batch_size=32)
            print(f"indexed {indexed} images ({len(failed)} failed) in {time.monotonic() - began:.0f}s")
            run_examples(stub, var, split.composed_queries[0], images)
            shop, street_queries = write_catalogue_dir(args.size, args.seed, var / f"demo-catalogue-{args.size}")
            run_cross_domain(stub, shop, street_queries, var)
            print(
                f"\nResult pages: {var}/search-*.html, {var}/cross-domain-*.html. Logs: {var / 'log'}. Metrics: "
                + ", ".join(p.endpoints["metrics"] for n, p in stack.processes.items() if "metrics" in p.endpoints)
            )
            print(
                f"Try it yourself: `make up`, then `.venv/bin/amcsearch index {images}` and "
                '`.venv/bin/amcsearch search "small blue square bottom-right" --explain --html out.html`.'
            )
            print(f"demo finished in {time.monotonic() - started:.0f}s")
            if args.keep_running:
                print(f"stack still up (SearchService at {stack.address('search')}); Ctrl-C stops it")
                while all(p.alive() for p in stack.processes.values()):
                    time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make bench`: measure the serving figures in one run and write benchmarks/RESULTS.md.

Starts the real stack (tritonserver, redis-server, every service) on free loopback ports,
indexes the ci corpus (both splits), then measures: end-to-end Search QPS and latency at
concurrency 1, 4, 16 against the same pipeline in one process (benchmarks/inprocess.py);
QueryEncoder cache hit vs Triton miss; Triton with and without dynamic batching at concurrency
16 (a second tritonserver on a copy of text_encoder without dynamic_batching); bytes per image
on the wire to Triton; and the share of Search time spent in ANN (the service's stage histogram).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
from amcsearch.runtime.indexed import IndexedFeatures
from amcsearch.search.index import MilvusIndex, Record
from amcsearch.v1 import common_pb2, query_encoder_pb2, query_encoder_pb2_grpc, search_pb2, search_pb2_grpc

from benchmarks import triton_bench
from benchmarks.inprocess import InProcessSearch
from benchmarks.measure import closed_loop, histogram_delta, scrape
from loadtests.auth import write_metadata
from loadtests.data import png
from loadtests.stack import start_stack

ROOT = Path(__file__).resolve().parents[1]
LEVELS = (1, 4, 16)
COUNT_FACTOR = {1: 1, 4: 2, 16: 4}
"""Requests per level: --requests times this (bounded run time at every concurrency)."""
log = logging.getLogger("bench")


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))) / 2**20
    return f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, no GPU used ({platform.platform()})"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


async def index_corpus(stub, corpus) -> list[str]:
    ids = []
    for split in (corpus.train, corpus.test):
        records = list(zip(split.images, split.pixels, strict=True))
        for start in range(0, len(records), 32):
            items = [search_pb2.ImageItem(id=f"bench-{r.id}", image=png(p), title=r.caption, keywords=[
                common_pb2.Keyword(text=k, confidence=float(w)) for k, w in r.noisy_keywords])
                for r, p in records[start:start + 32]]
            reply = await stub.Index(search_pb2.IndexRequest(items=items, skip_auto_tags=True), timeout=300,
                                     metadata=write_metadata())
            if reply.failed_count:
                raise RuntimeError(f"indexing failed: {[r.error for r in reply.results if not r.indexed][:3]}")
            ids.extend(item.id for item in items)
    return ids


async def copy_index(stub, ids: list[str], uri: str) -> tuple[MilvusIndex, dict[str, IndexedFeatures]]:
    """The served index's records (features included) in a milvus-lite file of our own."""
    index = MilvusIndex(uri, "bench_inprocess")
    await index.open()
    features = {}
    for start in range(0, len(ids), 200):
        reply = await stub.Get(search_pb2.GetRequest(ids=ids[start:start + 200], include_features=True), timeout=120)
        records = []
        for image in reply.images:
            def array(t):
                return np.frombuffer(t.data, dtype="<f4").reshape(tuple(t.shape)).astype(np.float32)
            keywords = [(k.text, k.confidence, k.source) for k in image.keywords]
            records.append(Record(image.id, array(image.features.embedding), array(image.features.regions),
                                  image.title, keywords, dict(image.metadata)))
            features[image.id] = IndexedFeatures(image.id, records[-1].regions, [(k[0], k[1]) for k in keywords])
        await index.upsert(records)
    return index, features


def texts_for(corpus, count: int, tag: str) -> list[str]:
    """Distinct query texts (every one a cache miss): corpus queries with a numbered suffix."""
    base = [q.text for q in corpus.train.text_queries + corpus.test.text_queries]
    return [f"{base[i % len(base)]} {tag}{i}" for i in range(count)]


def fmt(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


async def measure(args) -> dict:
    from models.corpus import load_or_build_corpus

    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    corpus = load_or_build_corpus("ci", 0)
    log.info("starting the stack")
    stack = start_stack(args.repository, work / "stack", {"TRITON_CANARY_INTERVAL_SECONDS": "3600"})
    figures: dict = {"levels": {}, "load": os.getloadavg()}
    try:
        channel = grpc.aio.insecure_channel(stack.address("search"))
        search = search_pb2_grpc.SearchServiceStub(channel)
        started = time.monotonic()
        ids = await index_corpus(search, corpus)
        figures["indexed"] = len(ids)
        log.info("indexed %d images in %.0fs", len(ids), time.monotonic() - started)
        search_metrics = stack.processes["search"].endpoints["metrics"]

        async def served(text: str) -> None:
            reply = await search.Search(search_pb2.SearchRequest(text=text, top_k=10), timeout=60)
            if reply.degradations:
                raise RuntimeError(f"degraded search: {reply.degradations}")

        for warm in texts_for(corpus, 16, "warm"):
            await served(warm)
        for level in LEVELS:
            texts = texts_for(corpus, args.requests * COUNT_FACTOR[level], f"e2e{level}-")
            before = scrape(search_metrics)
            run = await closed_loop(lambda n, texts=texts: served(texts[n]), len(texts), level)
            after = scrape(search_metrics)
            stages = {s: histogram_delta(before, after, "amcsearch_stage_duration_seconds", service="search", stage=s)
                      for s in ("encode", "ann", "rescore")}
            rpc = histogram_delta(before, after, "amcsearch_rpc_duration_seconds", service="search", method="Search")
            figures["levels"][level] = {"served": run, "stages": stages, "rpc": rpc}
            log.info("served c=%d: %.1f QPS p50 %s", level, run.qps, fmt(run.p(50)))

        inprocess_index, features = await copy_index(search, ids, str(work / "inprocess.db"))
        pipeline = InProcessSearch(args.repository, inprocess_index, features)
        try:
            agree = []
            for text in texts_for(corpus, 5, "check"):
                mine = [i for i, _ in await pipeline.search(text)]
                reply = await search.Search(search_pb2.SearchRequest(text=text, top_k=10), timeout=60)
                agree.append(len(set(mine) & {r.id for r in reply.results}) / 10)
            figures["agreement"] = sum(agree) / len(agree)
            for warm in texts_for(corpus, 16, "warm"):
                await pipeline.search(warm)
            for level in LEVELS:
                texts = texts_for(corpus, args.requests * COUNT_FACTOR[level], f"inproc{level}-")
                run = await closed_loop(lambda n, texts=texts: pipeline.search(texts[n]), len(texts), level)
                figures["levels"][level]["inprocess"] = run
                log.info("in-process c=%d: %.1f QPS p50 %s", level, run.qps, fmt(run.p(50)))
        finally:
            pipeline.close()
            await inprocess_index.close()

        encoder_channel = grpc.aio.insecure_channel(stack.address("query_encoder"))
        encoder = query_encoder_pb2_grpc.QueryEncoderStub(encoder_channel)

        async def encode(text: str) -> None:
            await encoder.Encode(query_encoder_pb2.EncodeRequest(queries=[query_encoder_pb2.QueryInput(text=text)]),
                                 timeout=30)

        misses = texts_for(corpus, 2 * args.requests, "cache-")
        miss_run = await closed_loop(lambda n: encode(misses[n]), len(misses), 1)
        hit_run = await closed_loop(lambda n: encode(misses[n]), len(misses), 1)
        figures["cache"] = (hit_run, miss_run)
        await encoder_channel.close()
        await channel.close()

        triton_metrics = stack.processes["tritonserver"].endpoints["metrics"]
        batched = await triton_bench.text_encoder_load(stack.env["TRITON_URL"], triton_metrics, 16, args.triton_requests)
        plain_repo = triton_bench.repository_without_batching(args.repository, ["text_encoder"], work / "nobatch")
        plain = triton_bench.start_triton(plain_repo, work / "logs-nobatch", ["text_encoder"])
        try:
            unbatched = await triton_bench.text_encoder_load(plain.endpoints["grpc"], plain.endpoints["metrics"], 16,
                                                             args.triton_requests)
        finally:
            plain.stop()
        figures["batching"] = (batched, unbatched)
        figures["wire"] = triton_bench.wire_bytes_per_image([png(p) for p in corpus.test.pixels[:32]])
    finally:
        stack.stop()
    return figures


def report(figures: dict, command: str) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# Serving benchmarks", "",
             f"- date: {now}", f"- machine: {machine()}",
             "- load average (1, 5, 15 min) when the run started: " + ", ".join(f"{x:.1f}" for x in figures["load"])
             + " (other work on the machine shares its cores and skews every figure)", f"- command: `{command}` (commit {commit()})",
             f"- index: {figures['indexed']} images (ci corpus, both splits), milvus-lite; Search(text), top_k 10, "
             "100 candidates rescored; every query text distinct (query-cache misses)", "",
             "## End-to-end Search vs the same pipeline in-process", "",
             "In-process (benchmarks/inprocess.py): the same TorchScript files, tokenizer, MilvusIndex calls and "
             "rescorer input builder in one Python process; no gRPC between services, no Triton, no Redis. "
             f"Top-10 agreement between the two: {figures['agreement']:.2f}.", "",
             "| concurrency | served QPS | served p50 | served p99 | in-process QPS | in-process p50 | in-process p99 | QPS ratio (goal >= 0.8) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for level, f in figures["levels"].items():
        s, i = f["served"], f["inprocess"]
        lines.append(f"| {level} | {s.qps:.1f} | {fmt(s.p(50))} | {fmt(s.p(99))} | {i.qps:.1f} | {fmt(i.p(50))} | "
                     f"{fmt(i.p(99))} | {s.qps / i.qps:.2f} |")
    one = figures["levels"][LEVELS[0]]
    rpc = one["rpc"]
    lines += ["", "## Where a Search spends its time (SearchService stage histogram, concurrency 1)", "",
              "| stage | p50 (histogram) | mean | share of Search mean |", "| --- | --- | --- | --- |"]
    for name, stage in one["stages"].items():
        lines.append(f"| {name} | {fmt(stage.quantile(0.5))} | {fmt(stage.mean)} | {stage.sum / rpc.sum:.0%} |")
    lines.append(f"| Search RPC | {fmt(rpc.quantile(0.5))} | {fmt(rpc.mean)} | 100% |")
    ann = one["stages"]["ann"]
    lines += ["", f"ANN time as a share of Search p50: {ann.quantile(0.5) / rpc.quantile(0.5):.0%} "
              f"(p50 of the ann stage over p50 of Search, both interpolated in the same buckets).", ""]
    hit, miss = figures["cache"]
    batched, unbatched = figures["batching"]
    wire = figures["wire"]
    lines += ["## Ratios", "",
              "| figure | measured | goal |", "| --- | --- | --- |",
              f"| QueryEncoder.Encode p50, cache hit / Triton miss | {fmt(hit.p(50))} / {fmt(miss.p(50))} = "
              f"{hit.p(50) / miss.p(50):.2f} | <= 0.1 |",
              f"| text_encoder QPS at concurrency 16 (1 query per request), dynamic batching / none | "
              f"{batched.run.qps:.0f} / {unbatched.run.qps:.0f} = {batched.run.qps / unbatched.run.qps:.2f} | >= 3 |",
              f"| bytes per image on the wire to Triton (image_encoder request, uint8 NHWC) | "
              f"{wire['request']:.0f} (PNG from the caller {wire['png']:.0f}; float32 would be {wire['float32']:.0f}; "
              f"reply {wire['reply']:.0f}) | |",
              "", "Triton's counters over the two text_encoder runs (concurrency 16, one query per request):", "",
              "| server | QPS | p50 | mean batch executed | queue per request | compute per execution |",
              "| --- | --- | --- | --- | --- | --- |"]
    for name, load in (("dynamic batching", batched), ("no dynamic batching", unbatched)):
        lines.append(f"| {name} | {load.run.qps:.0f} | {fmt(load.run.p(50))} | {load.mean_batch:.1f} | "
                     f"{load.queue_ms:.1f} ms | {load.compute_ms_per_execution:.1f} ms |")
    lines += ["", "## GPU", "", "Not measured in this run: no GPU on this machine.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    parser.add_argument("--repository", type=Path,
                        default=Path(os.environ.get("MODEL_REPOSITORY", ROOT / "model_repository")))
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--requests", type=int, default=24, help="requests at concurrency 1 (x2 at 4, x4 at 16)")
    parser.add_argument("--triton-requests", type=int, default=320)
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(message)s")
    if not (args.repository / "text_encoder" / "1" / "model.pt").exists():
        print(f"no models in {args.repository}: run `make models` first", file=sys.stderr)
        return 2
    figures = asyncio.run(measure(args))
    text = report(figures, "make bench" if os.environ.get("MAKELEVEL") else " ".join(["python -m benchmarks.run", *(argv or sys.argv[1:])]))
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make bench [SCALE=1k,10k,100k]`: the serving figures against the compute floor, per index size.

For each size: render (once, kept in build/scale) a scale corpus of N images, index it through
the real Index RPC into a stack started on free loopback ports (the built index is kept in
build/bench and reused by the next run when the corpus and the model builds are the same), then
measure, in one run:
- the compute floor (benchmarks/floor.py) on the same cores: text_encoder batch 1, amc_rescorer
  over the candidates, exact top-N over the index's vectors;
- Search(text) p50 / p99 and QPS at concurrency 1, 4, 16, every query text distinct (cache misses),
  100 candidates rescored, top_k 10; served / floor;
- CPU per Search: every stack process's CPU seconds (/proc, Triton's model stubs included) during
  the concurrency-16 run, divided by the Searches served, beside the floor's (cores / floor QPS);
- where the time goes (every service's stage histograms, Triton's own compute per model);
- bytes sent to Triton per Search; Index images/s against the image models' in-process rate;
- bytes per image in the index and in Redis, RSS of every process, served NDCG@10 over the
  whole index (benchmarks/served_quality.py).
Writes benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import torch
from amcsearch.processes import MALLOC_TUNABLES
from amcsearch.runtime.quantize import quantize_regions
from amcsearch.runtime.rescoring import pack
from amcsearch.search.feature_cache import ROW_BYTES, FeatureCache
from amcsearch.search.records import usable_keywords
from amcsearch.search.settings import SearchSettings
from amcsearch.v1 import common_pb2, search_pb2, search_pb2_grpc

from benchmarks.floor import ComputeFloor, Floor
from benchmarks.measure import Run, closed_loop, histogram_delta, scrape, total
from benchmarks.served_quality import whole_index_ndcg
from loadtests.auth import write_metadata
from loadtests.stack import start_stack
from models.export.triton_repo import keyword_vocabulary, read_config, run_with_environment
from models.train import cpu_model

ROOT = Path(__file__).resolve().parents[1]
LEVELS = (1, 4, 16)
COUNT_FACTOR = {1: 1, 4: 2, 16: 4}
"""Requests per level: --requests times this (bounded run time at every concurrency)."""
INDEX_BATCH = 32
INDEX_CONCURRENCY = 2
CANDIDATES = 100
BATCH_SIZE = 8
STAGES = {
    "search": ("encode", "keyword_search", "ann", "feature_read", "merge", "rescore"),
    "query_encoder": ("tokenize", "cache_get", "triton_text_encoder", "cache_set"),
    "attention_rescorer": ("build_inputs", "triton"),
}
log = logging.getLogger("bench")


def parse_size(text: str) -> int:
    text = text.strip().lower()
    return int(float(text[:-1]) * 1000) if text.endswith("k") else int(text)


def machine() -> str:
    cpu = cpu_model()
    memory = (
        int(
            next(
                line.split()[1]
                for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")
            )
        )
        / 2**20
    )
    return f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, no GPU used ({platform.platform()})"


def commit() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or "unknown"
        )
    except OSError:
        return "unknown"


def fmt(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def rss_of_tree(pid: int) -> int:
    """Resident bytes of a process and its descendants (tritonserver's Python stubs)."""
    total_kb, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total_kb += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (OSError, StopIteration):
            continue
        pending.extend(int(c) for c in children)
    return total_kb * 1024


def descendants(pid: int) -> list[int]:
    """A process and every process under it (tritonserver's Python model stubs)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        try:
            pending.extend(int(c) for c in Path(f"/proc/{current}/task/{current}/children").read_text().split())
        except OSError:
            continue
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads), from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stack_cpu(stack) -> dict[str, float]:
    """CPU seconds so far of every stack process; tritonserver's stubs as their own entry."""
    out = {}
    for name, process in stack.processes.items():
        if not process.popen:
            continue
        pid = process.popen.pid
        out[name] = cpu_seconds(pid)
        if name == "tritonserver":
            out["triton stubs"] = sum(cpu_seconds(p) for p in descendants(pid)[1:])
    return out


def machine_ticks() -> tuple[int, int]:
    """(idle + iowait, all) jiffies of the whole machine so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return values[3] + values[4], sum(values)


def redis_used_bytes(url: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


@dataclass
class SizeFigures:
    size: int
    index_seconds: float = 0.0
    index_reused: bool = False
    levels: dict[int, Run] = field(default_factory=dict)
    floor: Floor | None = None
    stages: dict[tuple[str, str], object] = field(default_factory=dict)
    triton_compute: dict[str, float] = field(default_factory=dict)
    triton_bytes_per_search: float = 0.0
    index_bytes: int = 0
    redis_bytes: int = 0
    rss: dict[str, int] = field(default_factory=dict)
    ndcg: dict[str, float] = field(default_factory=dict)
    ann_mode: str = ""
    model_index_rate: float = 0.0
    search_rpc_p50: float = 0.0
    batch: tuple[float, float] | None = None
    """(queries/s through BatchSearch of BATCH_SIZE, queries/s as single Searches), concurrency 1."""
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds per Search of each process during the concurrency-16 run."""
    coalesced: float = 1.0
    """Mean Searches the gateway answered together (coalescer.py) during the concurrency-16 run."""
    busy: float = 0.0
    """Share of the machine's CPU time that was busy during the concurrency-16 run (/proc/stat)."""
    client_cpu: float = 0.0
    """The bench's own CPU seconds per Search during the concurrency-16 run (the callers)."""
    forwards: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per model, Triton's counters over the concurrency-16 run: requests, forwards, rows, compute and
    queue seconds (sums over requests)."""


def query_texts(corpus, count: int, tag: str) -> list[str]:
    """Distinct texts (every one a query-cache miss): the corpus's queries with a numbered suffix."""
    base = [q.text for q in corpus.text_queries]
    return [f"{base[i % len(base)]} {tag}{i}" for i in range(count)]


async def index_corpus(stub, corpus) -> float:
    """Index every image through Index (batches of INDEX_BATCH, INDEX_CONCURRENCY in flight)."""
    batches = list(range(0, len(corpus.images), INDEX_BATCH))
    started = time.perf_counter()

    async def one(start: int) -> None:
        stop = min(start + INDEX_BATCH, len(corpus.images))
        items = [
            search_pb2.ImageItem(
                id=r.id,
                image=png,
                title=r.caption,
                keywords=[common_pb2.Keyword(text=k, confidence=float(w)) for k, w in r.noisy_keywords],
            )
            for r, png in zip(corpus.images[start:stop], corpus.pngs(start, stop), strict=True)
        ]
        reply = await stub.Index(search_pb2.IndexRequest(items=items), timeout=600, metadata=write_metadata())
        if reply.failed_count:
            raise RuntimeError(f"indexing failed: {[r.error for r in reply.results if not r.indexed][:3]}")

    queue = list(batches)

    async def worker() -> None:
        while queue:
            await one(queue.pop(0))
            done = len(batches) - len(queue)
            if done % 100 == 0:
                log.info("indexed %d / %d images", done * INDEX_BATCH, len(corpus.images))

    await asyncio.gather(*(worker() for _ in range(INDEX_CONCURRENCY)))
    return time.perf_counter() - started


def model_index_rate(repository: Path, corpus) -> float:
    """Images/s of image_encoder + keyword_tagger in-process at the Index batch, on decoded pixels."""
    import io

    from PIL import Image

    torch.set_num_threads(2)
    encoder = torch.jit.load(str(repository / "image_encoder" / "1" / "model.pt")).eval()
    tagger = torch.jit.load(str(repository / "keyword_tagger" / "1" / "model.pt")).eval()
    pixels = torch.from_numpy(
        np.stack([np.asarray(Image.open(io.BytesIO(p)).convert("RGB")) for p in corpus.pngs(0, INDEX_BATCH)])
    )
    with torch.inference_mode():
        encoder(pixels), tagger(pixels)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            encoder(pixels)
            tagger(pixels)
            times.append(time.perf_counter() - start)
    return INDEX_BATCH / float(np.median(times))


async def batch_gain(stub, corpus, requests: int) -> tuple[float, float]:
    """Queries/s of BatchSearch (BATCH_SIZE queries a call) and of the same number of single
    Searches, one caller, every text distinct."""
    texts = query_texts(corpus, requests * BATCH_SIZE, "batch-")
    singles = query_texts(corpus, requests * BATCH_SIZE, "single-")

    async def batch(n: int) -> None:
        chunk = texts[n * BATCH_SIZE : (n + 1) * BATCH_SIZE]
        await stub.BatchSearch(
            search_pb2.BatchSearchRequest(
                searches=[search_pb2.SearchRequest(text=t, top_k=10, candidates=CANDIDATES) for t in chunk]
            ),
            timeout=120,
        )

    async def single(n: int) -> None:
        await stub.Search(search_pb2.SearchRequest(text=singles[n], top_k=10, candidates=CANDIDATES), timeout=60)

    batched = await closed_loop(batch, requests, 1)
    one_by_one = await closed_loop(single, requests * BATCH_SIZE, 1)
    return batched.qps * BATCH_SIZE, one_by_one.qps


async def floor_inputs(stub, texts: list[str]):
    """The index's vectors and the features of one real Search's candidates, read through Get."""
    stats = await stub.Stats(search_pb2.StatsRequest(), timeout=30)
    reply = await stub.Search(
        search_pb2.SearchRequest(text=texts[0], top_k=CANDIDATES, candidates=CANDIDATES), timeout=60
    )
    ids = [r.id for r in reply.results]
    got = await stub.Get(search_pb2.GetRequest(ids=ids, include_features=True), timeout=60)
    quantized = [quantize_regions(np.frombuffer(i.features.regions.data, "<f4").reshape(36, 128)) for i in got.images]
    candidates = pack(
        [i.id for i in got.images],
        [q for q, _ in quantized],
        [s for _, s in quantized],
        [usable_keywords([(k.text, k.confidence, k.source) for k in i.keywords]) for i in got.images],
    )
    return stats.image_count, candidates


async def index_vectors(stub, ids: list[str]) -> np.ndarray:
    vectors = []
    for start in range(0, len(ids), 100):
        got = await stub.Get(search_pb2.GetRequest(ids=ids[start : start + 100], include_features=True), timeout=120)
        vectors.extend(np.frombuffer(i.features.embedding.data, "<f4") for i in got.images)
    return np.stack(vectors)


def stage_deltas(stack, before: dict[str, str], after: dict[str, str]) -> dict:
    out = {}
    for service, names in STAGES.items():
        for name in names:
            out[(service, name)] = histogram_delta(
                before[service], after[service], "amcsearch_stage_duration_seconds", service=service, stage=name
            )
    out[("search", "Search RPC")] = histogram_delta(
        before["search"], after["search"], "amcsearch_rpc_duration_seconds", service="search", method="Search"
    )
    return out


def triton_compute(before: str, after: str) -> dict[str, float]:
    """Mean compute and queue time per request, per model, from Triton's own counters."""
    out = {}
    for model, counted in triton_forwards(before, after).items():
        if counted["requests"] > 0:
            out[model] = counted["compute"] / counted["requests"]
            out[f"{model} queue"] = counted["queue"] / counted["requests"]
    return out


def triton_forwards(before: str, after: str) -> dict[str, dict[str, float]]:
    """Per model, what Triton counted between two scrapes: requests, forwards (executions), rows
    (inferences: the batch items), and the compute and queue seconds summed over requests."""
    counters = {
        "requests": "nv_inference_request_success",
        "forwards": "nv_inference_exec_count",
        "rows": "nv_inference_count",
        "compute": "nv_inference_compute_infer_duration_us",
        "queue": "nv_inference_queue_duration_us",
    }
    out = {}
    for model in ("text_encoder", "amc_rescorer"):
        got = {k: total(after, name, model=model) - total(before, name, model=model) for k, name in counters.items()}
        got["compute"] /= 1e6
        got["queue"] /= 1e6
        out[model] = got
    return out


def scrape_all(stack) -> dict[str, str]:
    texts = {name: scrape(stack.processes[name].endpoints["metrics"]) for name in STAGES}
    texts["tritonserver"] = scrape(stack.processes["tritonserver"].endpoints["metrics"])
    return texts


def triton_bytes(texts: dict[str, str]) -> float:
    return sum(
        total(texts[s], "amcsearch_triton_request_bytes_sum", service=s)
        for s in ("query_encoder", "attention_rescorer")
    )


def coalesced_per_batch(before: str, after: str) -> float:
    batches = total(after, "amcsearch_coalesced_searches_count") - total(before, "amcsearch_coalesced_searches_count")
    searches = total(after, "amcsearch_coalesced_searches_sum") - total(before, "amcsearch_coalesced_searches_sum")
    return searches / batches if batches else 1.0


async def measure_size(args, size: int) -> SizeFigures:
    from models.corpus.scale import load_or_build_scale_corpus

    corpus = load_or_build_scale_corpus(size, 0, args.scale_cache)
    work = (args.work / f"scale-{size}").resolve()
    marker = work / "indexed.json"
    builds = {
        m: read_config(args.repository, m).parameters["build_id"].string_value
        for m in ("image_encoder", "keyword_tagger", "text_encoder")
    }
    identity = {"corpus": corpus.directory.name, "builds": builds}
    reuse = marker.exists() and json.loads(marker.read_text()).get("identity") == identity
    if not reuse:
        shutil.rmtree(work, ignore_errors=True)
    figures = SizeFigures(size)
    stack = start_stack(
        args.repository,
        work / "stack",
        {"TRITON_CANARY_INTERVAL_SECONDS": "3600", "INDEX_URI": str(work / "index.sqlite")},
    )
    try:
        async with grpc.aio.insecure_channel(stack.address("search")) as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            if reuse:
                figures.index_seconds = json.loads(marker.read_text())["seconds"]
                figures.index_reused = True
            else:
                figures.index_seconds = await index_corpus(stub, corpus)
                marker.write_text(json.dumps({"identity": identity, "seconds": figures.index_seconds}))
            figures.model_index_rate = model_index_rate(args.repository, corpus)
            for _ in range(600):
                figures.ann_mode = (await stub.Stats(search_pb2.StatsRequest(), timeout=30)).ann_mode
                if "building" not in figures.ann_mode:
                    break
                await asyncio.sleep(1)

            async def served(text: str) -> None:
                reply = await stub.Search(
                    search_pb2.SearchRequest(text=text, top_k=10, candidates=CANDIDATES), timeout=60
                )
                if reply.degradations:
                    raise RuntimeError(f"degraded search: {reply.degradations}")

            for text in query_texts(corpus, 16, "warm"):
                await served(text)
            for level in LEVELS:
                texts = query_texts(corpus, args.requests * COUNT_FACTOR[level], f"c{level}-")
                before = scrape_all(stack)
                cpu_before, own_before, ticks_before = stack_cpu(stack), cpu_seconds(os.getpid()), machine_ticks()
                figures.levels[level] = await closed_loop(lambda n, texts=texts: served(texts[n]), len(texts), level)
                cpu_after, own_after, ticks_after = stack_cpu(stack), cpu_seconds(os.getpid()), machine_ticks()
                after = scrape_all(stack)
                if level == 16:
                    figures.cpu = {n: (cpu_after[n] - cpu_before.get(n, 0.0)) / len(texts) for n in cpu_after}
                    figures.coalesced = coalesced_per_batch(before["search"], after["search"])
                    figures.client_cpu = (own_after - own_before) / len(texts)
                    idle, every = (a - b for a, b in zip(ticks_after, ticks_before, strict=True))
                    figures.busy = 1 - idle / every if every else 0.0
                    figures.forwards = triton_forwards(before["tritonserver"], after["tritonserver"])
                    # amc_rescorer has no batch dimension: its rows are the candidates AttentionRescorer sent
                    figures.forwards["amc_rescorer"]["rows"] = total(
                        after["attention_rescorer"], "amcsearch_batch_items_sum", method="Rescore"
                    ) - total(before["attention_rescorer"], "amcsearch_batch_items_sum", method="Rescore")
                if level == 1:
                    figures.stages = stage_deltas(stack, before, after)
                    figures.triton_compute = triton_compute(before["tritonserver"], after["tritonserver"])
                    figures.triton_bytes_per_search = (triton_bytes(after) - triton_bytes(before)) / len(texts)
                log.info(
                    "size %d c=%d: %.1f QPS p50 %s",
                    size,
                    level,
                    figures.levels[level].qps,
                    fmt(figures.levels[level].p(50)),
                )

            figures.batch = await batch_gain(stub, corpus, args.requests)
            figures.ndcg = await whole_index_ndcg(stub, corpus, 10)
            count, candidates = await floor_inputs(stub, query_texts(corpus, 1, "floor"))
            vectors = await index_vectors(stub, [r.id for r in corpus.images])
            floor = ComputeFloor(args.repository, keyword_vocabulary(args.repository))
            figures.floor = floor.measure(
                query_texts(corpus, 64, "floor"),
                vectors,
                candidates,
                hnsw=figures.ann_mode == "hnsw",
                text_batches=(served_text_batch(figures),),
            )
            figures.index_bytes = sum(p.stat().st_size for p in work.glob("index.sqlite*") if p.is_file())
            figures.redis_bytes = redis_used_bytes(stack.redis_url)
            figures.rss = {name: rss_of_tree(p.popen.pid) for name, p in stack.processes.items() if p.popen}
    finally:
        stack.stop()
    return figures


def served_text_batch(figures: SizeFigures) -> int:
    """Texts per text_encoder forward during the concurrency-16 run, rounded (at least 1)."""
    counted = figures.forwards.get("text_encoder", {})
    return max(1, round(counted.get("rows", 0) / counted["forwards"])) if counted.get("forwards") else 1


def report(
    all_figures: list[SizeFigures], command: str, load: tuple[float, float, float], load_end: tuple[float, float, float]
) -> str:
    lines = header(command, load, load_end)
    sections = (
        floor_section,
        served_section,
        cpu_section,
        concurrency_section,
        scale_section,
        projection_section,
        stage_sections,
    )
    for section in (*sections, targets_section):
        lines += section(all_figures)
    lines += ["", "## GPU", "", "Not measured in this run: no GPU on this machine.", ""]
    return "\n".join(lines)


def header(command: str, load: tuple[float, float, float], load_end: tuple[float, float, float]) -> list[str]:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        "# Serving benchmarks",
        "",
        f"- date: {now}; command: `{command}` (commit {commit()})",
        f"- machine: {machine()}",
        "- load average (1, 5, 15 min) at the start: "
        + ", ".join(f"{x:.2f}" for x in load)
        + "; at the end: "
        + ", ".join(f"{x:.2f}" for x in load_end)
        + " (other work on the machine shares its cores)",
        "- index engine: embedded (SQLite + usearch HNSW, exact below 20,000 images); Search(text), top_k 10, "
        f"{CANDIDATES} candidates rescored (hybrid: vector and keyword candidates merged by RRF); every query "
        "text distinct (query-cache misses); scale corpora rendered by models/corpus/scale.py, indexed through "
        f"the Index RPC (batches of {INDEX_BATCH}, {INDEX_CONCURRENCY} in flight; the corpus's noisy keywords "
        "as the caller's weighted keywords, plus KeywordTagger's automatic ones)",
        "",
    ]


def floor_section(all_figures: list[SizeFigures]) -> list[str]:
    rows = all_figures[0].floor.rows()
    lines = [
        "## Compute floor (the model files in-process, same cores, same run)",
        "",
        "Measured in the bench's own process, under the malloc settings the services and Triton's stubs run under "
        "(`GLIBC_TUNABLES`, amcsearch/processes.py), with the stack idle.",
        "",
        "| size | " + " | ".join(name for name, _ in rows) + " | floor QPS (best batch) |",
        "| --- " * (len(rows) + 2) + "|",
    ]
    for f in all_figures:
        lines.append(
            f"| {f.size:,} | "
            + " | ".join(fmt(v) for _, v in f.floor.rows())
            + f" | {f.floor.best_qps:.1f} (batch {f.floor.best_qps_batch}) |"
        )
    return lines


def served_section(all_figures: list[SizeFigures]) -> list[str]:
    lines = [
        "",
        "## Served Search against the floor",
        "",
        "| size | ANN | p50 c=1 | p99 c=1 | p50 / floor | QPS c=1 | QPS c=4 | QPS c=16 | QPS c=16 / floor QPS |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in all_figures:
        one, sixteen = f.levels[1], f.levels[16]
        lines.append(
            f"| {f.size:,} | {f.ann_mode} | {fmt(one.p(50))} | {fmt(one.p(99))} | "
            f"{one.p(50) / f.floor.search:.2f} | {one.qps:.1f} | {f.levels[4].qps:.1f} | {sixteen.qps:.1f} | "
            f"{sixteen.qps / f.floor.best_qps:.2f} |"
        )
    return lines


def cpu_section(all_figures: list[SizeFigures]) -> list[str]:
    names = list(all_figures[0].cpu)
    lines = [
        "",
        "## CPU per Search (concurrency 16)",
        "",
        "Each process's CPU seconds (user + system, /proc) during the concurrency-16 run divided by the "
        "Searches it served; the floor's CPU per Search is its cores over its best QPS. Latency hides "
        "waste that CPU shows. The gateway answers concurrent Searches together (one Encode, one "
        "Rescore; services/amcsearch/search/coalescer.py): the last column is how many it answered "
        "together on average.",
        "",
        "| size | " + " | ".join(names) + " | whole stack | floor | stack / floor | Searches per batch |",
        "| --- " * (len(names) + 5) + "|",
    ]
    for f in all_figures:
        whole = sum(f.cpu.values())
        lines.append(
            f"| {f.size:,} | "
            + " | ".join(fmt(f.cpu.get(n, 0.0)) for n in names)
            + f" | {fmt(whole)} | {fmt(f.floor.cpu_per_search)} | {whole / f.floor.cpu_per_search:.2f}x"
            f" | {f.coalesced:.1f} |"
        )
    lines += [
        "",
        "Triton's per-request compute against the same forward in-process on one intra-op thread (each "
        "model stub runs one), concurrency 1:",
        "",
        "| size | model | Triton compute | in-process, 1 thread | ratio |",
        "| --- | --- | --- | --- | --- |",
    ]
    for f in all_figures:
        for model, local in (f.floor.one_thread or {}).items():
            if model in f.triton_compute:
                served = f.triton_compute[model]
                lines.append(f"| {f.size:,} | {model} | {fmt(served)} | {fmt(local)} | {served / local:.2f}x |")
    return lines


def concurrency_section(all_figures: list[SizeFigures]) -> list[str]:
    """Where the concurrency-16 throughput goes: how busy the machine was, what the callers
    cost, and the text_encoder forward (the largest model cost) against the same batch in-process."""
    lines = [
        "",
        "## Where the concurrency-16 time goes",
        "",
        "The machine's busy share (/proc/stat, every process, the bench's callers included) and the "
        "callers' own CPU per Search; then Triton's text_encoder over the run: texts per forward "
        "(rows / forwards), compute per text (Triton's compute, summed over requests, over rows) "
        "against the same forward at that batch on one intra-op thread in the bench's process with the "
        "stack idle. The ratio is what running beside the rest of the stack on 2 vCPUs costs a forward.",
        "",
        "| size | machine busy | callers' CPU per Search | text_encoder requests / forwards | texts per forward "
        "| Triton compute per text | in-process per text, same batch, 1 thread | ratio | in-process per text, "
        "batch 1 | amc_rescorer compute per candidate |",
        "| --- " * 10 + "|",
    ]
    for f in all_figures:
        text, amc = f.forwards.get("text_encoder", {}), f.forwards.get("amc_rescorer", {})
        if not text.get("rows") or not f.floor.text_per_text:
            continue
        batch = served_text_batch(f)
        served = text["compute"] / text["rows"]
        local = f.floor.text_per_text.get(batch, float("nan"))
        single = (f.floor.one_thread or {}).get("text_encoder", float("nan"))
        per_candidate = amc["compute"] / amc["rows"] if amc.get("rows") else float("nan")
        lines.append(
            f"| {f.size:,} | {f.busy:.0%} | {fmt(f.client_cpu)} | {text['requests']:.0f} / {text['forwards']:.0f} "
            f"| {text['rows'] / text['forwards']:.1f} | {fmt(served)} | {fmt(local)} | {served / local:.2f}x "
            f"| {fmt(single)} | {per_candidate * 1e6:.0f} us |"
        )
    return lines


def scale_section(all_figures: list[SizeFigures]) -> list[str]:
    lines = [
        "",
        "## Scale curve",
        "",
        "| size | Search p50 | Search p99 | QPS c=1 | QPS c=16 | Index images/s | image models in-process images/s "
        "| index bytes/image | Redis bytes/image | served NDCG@10 (whole index) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in all_figures:
        reused = " (earlier run)" if f.index_reused else ""
        lines.append(
            f"| {f.size:,} | {fmt(f.levels[1].p(50))} | {fmt(f.levels[1].p(99))} | {f.levels[1].qps:.1f} | "
            f"{f.levels[16].qps:.1f} | {f.size / f.index_seconds:.1f}{reused} | {f.model_index_rate:.1f} | "
            f"{f.index_bytes / f.size:,.0f} | {f.redis_bytes / f.size:,.0f} | {f.ndcg['all']:.4f} |"
        )
    lines += [
        "",
        f"BatchSearch of {BATCH_SIZE} text queries (one QueryEncoder and one AttentionRescorer call, so "
        "one Triton request per model) against the same number of single Searches, one caller:",
        "",
        "| size | queries/s, BatchSearch | queries/s, single Searches | gain |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {f.size:,} | {f.batch[0]:.1f} | {f.batch[1]:.1f} | {f.batch[0] / f.batch[1]:.2f}x |"
        for f in all_figures
        if f.batch
    ]
    names = list(all_figures[0].rss)
    lines += [
        "",
        "Resident memory of every process after the run (tritonserver includes its Python model stubs):",
        "",
        "| size | " + " | ".join(names) + " |",
        "| --- " * (len(names) + 1) + "|",
    ]
    lines += [
        f"| {f.size:,} | " + " | ".join(f"{v / 2**20:.0f} MiB" for v in f.rss.values()) + " |" for f in all_figures
    ]
    families = list(all_figures[0].ndcg)
    lines += [
        "",
        "Served NDCG@10 per query family:",
        "",
        "| size | " + " | ".join(families) + " |",
        "| --- " * (len(families) + 1) + "|",
    ]
    lines += [f"| {f.size:,} | " + " | ".join(f"{v:.4f}" for v in f.ndcg.values()) + " |" for f in all_figures]
    return lines


def projection_section(all_figures: list[SizeFigures]) -> list[str]:
    """Toward 1M images: the two largest sizes' per-image figures and stage growth, carried on
    one more decade (each size-dependent stage grows by the same factor as over the last one)."""
    if len(all_figures) < 2:
        return []
    small, large = sorted(all_figures, key=lambda f: f.size)[-2:]
    target = 1_000_000
    decades = np.log10(target / large.size) / np.log10(large.size / small.size)
    grown = ("ann", "keyword_search", "merge")
    p50 = large.levels[1].p(50)
    for name in grown:
        before, after = small.stages[("search", name)].mean, large.stages[("search", name)].mean
        if before > 0 and after > 0 and np.isfinite(before) and np.isfinite(after):
            p50 += after * ((after / before) ** decades - 1)
    index_per_image = large.index_bytes / large.size
    redis_per_image = large.redis_bytes / large.size
    # the feature cache holds ROW_BYTES an image up to its budget: the rest of the gateway grows per image
    cache_capacity = FeatureCache(SearchSettings.feature_cache_mib).capacity

    def cache_bytes(size: int) -> int:
        return min(size, cache_capacity) * ROW_BYTES

    gateway = (
        (large.rss.get("search", 0) - cache_bytes(large.size)) - (small.rss.get("search", 0) - cache_bytes(small.size))
    ) / (large.size - small.size)
    gateway_at_target = large.rss.get("search", 0) - cache_bytes(large.size) + gateway * (target - large.size)
    gateway_at_target += cache_bytes(target)
    return [
        "",
        f"## Toward {target:,} images (projected from {small.size:,} and {large.size:,}, not measured)",
        "",
        f"Per-image figures of the {large.size:,} run times {target:,}; the size-dependent stages (ann, "
        "keyword_search, merge) grow by the same factor per decade as between the two largest sizes; the "
        "rest of a Search does not depend on the index size.",
        "",
        "| figure | projection |",
        "| --- | --- |",
        f"| index on disk | {index_per_image * target / 2**30:.1f} GiB ({index_per_image:,.0f} bytes/image) |",
        f"| Redis | {redis_per_image * target / 2**30:.1f} GiB ({redis_per_image:,.0f} bytes/image) |",
        f"| gateway resident memory | {gateway_at_target / 2**30:.1f} GiB ({gateway:,.0f} bytes per added image,"
        f" and the candidate columns in memory up to INDEX_FEATURE_CACHE_MIB={SearchSettings.feature_cache_mib}) |",
        f"| Search p50, concurrency 1 | {fmt(p50)} (p50 at {all_figures[0].size:,}: {fmt(all_figures[0].levels[1].p(50))}) |",
    ]


def stage_sections(all_figures: list[SizeFigures]) -> list[str]:
    lines = []
    for f in all_figures:
        rpc = f.stages[("search", "Search RPC")]
        lines += [
            "",
            f"## Where a Search spends its time at {f.size:,} images (concurrency 1)",
            "",
            "Stage histograms of every service (p50 interpolated in the buckets, mean exact); the gateway's "
            "`keyword_search` runs while `encode` waits (their shares overlap), `ann` is the vector search, "
            "the merge and one gather of the picked candidates' packed columns, `merge` the fusion alone (inside "
            "`ann`); `encode` and `rescore` are the calls to QueryEncoder and AttentionRescorer, whose own "
            "stages follow.",
            "",
            "| service | stage | p50 | mean | share of Search mean |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {service} | {name} | {fmt(h.quantile(0.5))} | {fmt(h.mean)} | {h.sum / rpc.sum:.0%} |"
            for (service, name), h in f.stages.items()
            if h.count
        ]
        lines += [
            f"| tritonserver | {model} {'wait' if 'queue' in model else 'compute'} per request | | {fmt(seconds)} | |"
            for model, seconds in f.triton_compute.items()
        ]
        lines.append(f"| | bytes sent to Triton per Search | {f.triton_bytes_per_search:,.0f} | | |")
    return lines


def targets_section(all_figures: list[SizeFigures]) -> list[str]:
    def row(target: str, figure: str, met: bool) -> str:
        return f"| {target} | {figure} | {'yes' if met else 'no'} |"

    lines = ["", "## Targets", "", "| target | figure | met |", "| --- | --- | --- |"]
    by_size = {f.size: f for f in all_figures}
    if 10_000 in by_size:
        f = by_size[10_000]
        gateway = f.cpu.get("search", float("nan"))
        lines.append(row("gateway CPU per Search at 10k <= 5 ms", fmt(gateway), gateway <= 0.005))
        ratio = f.levels[1].p(50) / f.floor.search
        lines.append(
            row(
                "Search p50 at 10k <= 2x floor (c=1)",
                f"{ratio:.2f}x ({fmt(f.levels[1].p(50))} / {fmt(f.floor.search)})",
                ratio <= 2,
            )
        )
    if 1_000 in by_size and 100_000 in by_size:
        ratio = by_size[100_000].levels[1].p(50) / by_size[1_000].levels[1].p(50)
        lines.append(row("p50 at 100k <= 1.3x p50 at 1k", f"{ratio:.2f}", ratio <= 1.3))
    if 100_000 in by_size:
        keyword = by_size[100_000].stages[("search", "keyword_search")].quantile(0.5)
        lines.append(row("keyword route p50 at 100k <= 3 ms", fmt(keyword), keyword <= 0.003))
    for f in all_figures:
        whole = sum(f.cpu.values()) / f.floor.cpu_per_search
        qps = f.levels[16].qps / f.floor.best_qps
        gain = f.batch[0] / f.batch[1] if f.batch else float("nan")
        lines += [
            row(f"whole-stack CPU per Search <= 2x the floor's at {f.size:,}", f"{whole:.2f}x", whole <= 2),
            row(f"QPS c=16 >= 0.5x floor QPS at {f.size:,} (0.7x stretch)", f"{qps:.2f}", qps >= 0.5),
            row(f"BatchSearch of {BATCH_SIZE} >= 2.5x single Searches at {f.size:,}", f"{gain:.2f}x", gain >= 2.5),
        ]
        for model, local in (f.floor.one_thread or {}).items():
            if model in f.triton_compute:
                ratio = f.triton_compute[model] / local
                lines.append(
                    row(
                        f"Triton {model} compute <= 1.3x in-process (1 thread) at {f.size:,}",
                        f"{ratio:.2f}x",
                        ratio <= 1.3,
                    )
                )
        lines.append(
            row(
                f"bytes to Triton per Search <= 1 MB at {f.size:,}",
                f"{f.triton_bytes_per_search:,.0f}",
                f.triton_bytes_per_search <= 1_000_000,
            )
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    parser.add_argument(
        "--repository", type=Path, default=Path(os.environ.get("MODEL_REPOSITORY", ROOT / "model_repository"))
    )
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--scale-cache", type=Path, default=ROOT / "build" / "scale")
    parser.add_argument("--scale", default=os.environ.get("SCALE", "1k,10k"), help="index sizes, e.g. 1k,10k,100k")
    parser.add_argument("--requests", type=int, default=40, help="requests at concurrency 1 (x2 at 4, x4 at 16)")
    args = parser.parse_args(argv)
    # The floor runs under the allocator settings every service and Triton stub runs under:
    # without them the amc_rescorer forward alone took 4.7-5.3 ms instead of 2.2-2.5 ms (fresh
    # pages for its megabyte temporaries), a handicap that flattered the served figures.
    run_with_environment("benchmarks.run", {"GLIBC_TUNABLES": MALLOC_TUNABLES})
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(message)s")
    if not (args.repository / "text_encoder" / "1" / "model.pt").exists():
        print(f"no models in {args.repository}: run `make models` first", file=sys.stderr)
        return 2
    load = os.getloadavg()
    figures = [asyncio.run(measure_size(args, parse_size(s))) for s in args.scale.split(",")]
    command = "make bench" if os.environ.get("MAKELEVEL") else "python -m benchmarks.run"
    text = report(figures, f"{command} SCALE={args.scale}", load, os.getloadavg())
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Index-engine probe: top-100 of one 384-d query at 1k / 10k / 100k vectors, per engine.

The measurement behind docs/decisions/0001-index-engine.md. Each engine runs when its package
imports in the interpreter that runs this file, so engines whose pins conflict with the project's
(milvus-lite 2.5 wants pymilvus 2.5, LanceDB pyarrow) can be probed from a scratch venv:

    python -m benchmarks.engine_probe --embed 100000        # project venv: real vectors, once
    python -m benchmarks.engine_probe --sizes 1000,10000,100000 --engines numpy,usearch-hnsw,embedded
    /tmp/other-venv/bin/python -m benchmarks.engine_probe --engines lancedb-flat,milvus-server

Vectors: with --embed, the image_encoder embeddings of a scale corpus (models/corpus/scale.py)
and the text_encoder embeddings of its text queries, i.e. what a text Search sends, cached as
.npy under build/probe; the first N rows are the N-vector index. Without them, a Gaussian
mixture. Recall@100 is against numpy's exact answer; timing is the wall clock around one
search call (p50 / p99 over the queries) after a warm-up, with the load average printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

DIM = 384
TOP = 100


PROBE_DIR = Path(__file__).resolve().parents[1] / "build" / "probe"


def embed(size: int) -> None:
    """Embed a scale corpus's images and queries with the exported models (project venv)."""
    import io

    import torch
    from amcsearch.query_encoder.tokenize import Tokenizer
    from PIL import Image

    from models.corpus.scale import load_or_build_scale_corpus

    corpus = load_or_build_scale_corpus(size)
    repository = Path(__file__).resolve().parents[1] / "model_repository"
    torch.set_num_threads(os.cpu_count() or 1)
    image_encoder = torch.jit.load(str(repository / "image_encoder" / "1" / "model.pt")).eval()
    text_encoder = torch.jit.load(str(repository / "text_encoder" / "1" / "model.pt")).eval()
    vectors = []
    with torch.inference_mode():
        for start in range(0, size, 256):
            pixels = np.stack(
                [
                    np.asarray(Image.open(io.BytesIO(p)).convert("RGB"))
                    for p in corpus.pngs(start, min(start + 256, size))
                ]
            )
            vectors.append(image_encoder(torch.from_numpy(pixels))[0].numpy())
        ids, mask, _ = Tokenizer.default().encode([q.text for q in corpus.text_queries])
        queries = text_encoder(torch.from_numpy(ids), torch.from_numpy(mask))[0].numpy()
    PROBE_DIR.mkdir(parents=True, exist_ok=True)
    np.save(PROBE_DIR / "vectors.npy", np.concatenate(vectors).astype(np.float32))
    np.save(PROBE_DIR / "queries.npy", queries.astype(np.float32))


def real_vectors() -> tuple[np.ndarray, np.ndarray] | None:
    if (PROBE_DIR / "vectors.npy").exists():
        return np.load(PROBE_DIR / "vectors.npy"), np.load(PROBE_DIR / "queries.npy")
    return None


def corpus(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, DIM)).astype(np.float32)
    vectors = centres[rng.integers(0, 1000, size)] + 0.6 * rng.standard_normal((size, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def exact(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    scores = vectors @ query
    top = np.argpartition(-scores, TOP)[:TOP]
    return top[np.argsort(-scores[top])]


def timed(search: Callable[[np.ndarray], list[int]], queries: np.ndarray) -> tuple[list[float], list[list[int]]]:
    for q in queries[:5]:
        search(q)
    times, answers = [], []
    for q in queries:
        start = time.perf_counter()
        answers.append(search(q))
        times.append((time.perf_counter() - start) * 1000)
    return times, answers


def engine_numpy(vectors: np.ndarray, workdir: str):
    return lambda q: exact(vectors, q).tolist(), 0.0


def engine_usearch_hnsw(vectors: np.ndarray, workdir: str):
    """The vector side of the embedded engine alone (VectorIndex with its graph)."""
    from amcsearch.search.vector_index import VectorIndex

    index = VectorIndex(DIM, hnsw_min_rows=1, ef_search=256)
    start = time.perf_counter()
    index.add(np.arange(len(vectors)), vectors, build_graph=False)
    index.ensure_graph(background=False)
    build = time.perf_counter() - start
    return lambda q: index.search(q, TOP)[0].tolist(), build


def engine_embedded(vectors: np.ndarray, workdir: str):
    """The embedded engine end to end: vector search plus the SQLite read of the hits' fields,
    as the gateway calls it (exact search below 20,000 vectors, HNSW above)."""
    import asyncio

    from amcsearch.runtime.quantize import quantize_regions
    from amcsearch.search.embedded_index import EmbeddedIndex
    from amcsearch.search.records import Filter, Record

    loop = asyncio.new_event_loop()
    index = EmbeddedIndex(os.path.join(workdir, "index.sqlite"), "probe")
    loop.run_until_complete(index.open())
    regions, scales = quantize_regions(np.zeros((36, 128), np.float32))
    for start in range(0, len(vectors), 1000):
        records = [
            Record(str(start + i), v, regions, scales, "", [("red", 0.9, 2)], {})
            for i, v in enumerate(vectors[start : start + 1000])
        ]
        loop.run_until_complete(index.upsert("probe", records))
    started = time.perf_counter()
    index.vectors["probe"].wait_for_graph()
    build = time.perf_counter() - started

    def search(q):
        return [int(h.id) for h in loop.run_until_complete(index.search("probe", q, TOP, Filter()))]

    return search, build


def engine_faiss_hnsw(vectors: np.ndarray, workdir: str):
    import faiss

    faiss.omp_set_num_threads(1)
    start = time.perf_counter()
    index = faiss.IndexHNSWFlat(DIM, 16, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 128
    index.add(vectors)
    index.hnsw.efSearch = 128
    build = time.perf_counter() - start
    return lambda q: index.search(q.reshape(1, -1), TOP)[1][0].tolist(), build


def _lance(vectors: np.ndarray, workdir: str, index_type: str | None):
    import lancedb
    import pyarrow as pa

    db = lancedb.connect(os.path.join(workdir, "lance"))
    ids = np.arange(len(vectors))
    table = db.create_table(
        "probe",
        pa.table(
            {
                "row": pa.array(ids, pa.int64()),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIM),
            }
        ),
    )
    start = time.perf_counter()
    if index_type:
        partitions = max(1, int(np.sqrt(len(vectors))))
        table.create_index(
            metric="cosine", vector_column_name="embedding", index_type=index_type, num_partitions=partitions
        )
    build = time.perf_counter() - start

    def search(q):
        query = table.search(q, vector_column_name="embedding").metric("cosine").limit(TOP).select(["row"])
        if index_type:
            query = query.nprobes(20).refine_factor(2) if index_type.startswith("IVF_PQ") else query.nprobes(20)
        return query.to_arrow()["row"].to_pylist()

    return search, build


def engine_lancedb_flat(vectors, workdir):
    return _lance(vectors, workdir, None)


def engine_lancedb_hnsw(vectors, workdir):
    return _lance(vectors, workdir, "IVF_HNSW_SQ")


def _milvus(client, vectors: np.ndarray, index_type: str, consistency: str):
    from pymilvus import DataType

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("row", DataType.INT64, is_primary=True)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=DIM)
    params = client.prepare_index_params()
    extra = {"M": 16, "efConstruction": 128} if index_type == "HNSW" else {}
    params.add_index("embedding", index_type=index_type, metric_type="COSINE", params=extra)
    client.create_collection("probe", schema=schema, index_params=params, consistency_level=consistency)
    for start in range(0, len(vectors), 5000):
        client.insert(
            "probe", [{"row": start + i, "embedding": v.tolist()} for i, v in enumerate(vectors[start : start + 5000])]
        )
    started = time.perf_counter()
    client.flush("probe")
    client.load_collection("probe")
    build = time.perf_counter() - started
    search_params = {"metric_type": "COSINE", "params": {"ef": 128} if index_type == "HNSW" else {}}

    def search(q):
        hits = client.search("probe", [q.tolist()], limit=TOP, search_params=search_params, output_fields=[])
        return [h["id"] if "id" in h else h["row"] for h in hits[0]]

    return search, build


def engine_milvus_lite(vectors, workdir):
    from pymilvus import MilvusClient

    return _milvus(MilvusClient(os.path.join(workdir, "lite.db")), vectors, "FLAT", "Strong")


def engine_milvus_server(vectors, workdir):
    from milvus import default_server
    from pymilvus import MilvusClient

    default_server.set_base_dir(os.path.join(workdir, "milvus"))
    default_server.listen_port = 19539
    default_server.start()
    client = MilvusClient(f"http://127.0.0.1:{default_server.listen_port}")  # start() may move the port
    search, build = _milvus(client, vectors, "HNSW", "Bounded")
    return search, build


ENGINES = {
    "numpy": engine_numpy,
    "usearch-hnsw": engine_usearch_hnsw,
    "embedded": engine_embedded,
    "faiss-hnsw": engine_faiss_hnsw,
    "lancedb-flat": engine_lancedb_flat,
    "lancedb-ivf-hnsw-sq": engine_lancedb_hnsw,
    "milvus-lite": engine_milvus_lite,
    "milvus-server": engine_milvus_server,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--embed", type=int, help="embed a scale corpus of this size into build/probe, then stop")
    args = parser.parse_args()
    if args.embed:
        embed(args.embed)
        return
    real = real_vectors()
    print(
        f"load average at start: {os.getloadavg()}; vectors: {'real (build/probe)' if real is not None else 'synthetic'}"
    )
    print("| engine | vectors | p50 | p99 | recall@100 | index build |")
    print("| --- | --- | --- | --- | --- | --- |")
    for size in (int(s) for s in args.sizes.split(",")):
        vectors = real[0][:size] if real is not None else corpus(size)
        queries = real[1][: args.queries] if real is not None else corpus(args.queries, seed=1)
        truth = [set(exact(vectors, q).tolist()) for q in queries]
        for name in args.engines.split(","):
            workdir = tempfile.mkdtemp(prefix=f"probe-{name}-")
            try:
                search, build = ENGINES[name](vectors, workdir)
                times, answers = timed(search, queries)
            except ImportError as error:
                print(f"| {name} | {size} | skipped: {error} | | | |")
                continue
            finally:
                if name == "milvus-server":
                    from milvus import default_server

                    default_server.stop()
            recall = statistics.mean(len(truth[i] & set(a)) / TOP for i, a in enumerate(answers))
            p50, p99 = np.percentile(times, 50), np.percentile(times, 99)
            print(f"| {name} | {size} | {p50:.2f} ms | {p99:.2f} ms | {recall:.3f} | {build:.1f} s |", flush=True)
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()

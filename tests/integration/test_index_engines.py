"""One suite, both index engines: the embedded default and a real Milvus 2.3 standalone server
(the `milvus` wheel, started on free ports by the milvus_server fixture). Whatever one engine
stores, filters and returns, the other must too: the gateway above them has one code path."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import numpy as np
import pytest
from amcsearch.runtime.errors import NotFound
from amcsearch.runtime.quantize import quantize_regions
from amcsearch.search.index import open_index
from amcsearch.search.records import Filter, MetadataClause, MetadataFilter, Record, Shop

pytestmark = pytest.mark.integration
HOSTILE = ['a"b', "it's", "x') or 1 == 1 --", "[0]", 'id in ["x"]', "back\\slash", "new\nline", "café ☕", "tab\there"]


def unit(seed: int, n: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, 384)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def record(i: int, vector: np.ndarray, keywords=None, metadata=None) -> Record:
    regions, scales = quantize_regions(np.random.default_rng(i).standard_normal((36, 128)).astype(np.float32))
    return Record(
        f"img-{i}",
        vector,
        regions,
        scales,
        f"title {i}",
        keywords or [("red", 0.9, 2), ("circle", 0.6, 2)],
        metadata if metadata is not None else {"n": str(i)},
    )


class Engine:
    """An opened engine and a loop to drive it from synchronous tests."""

    def __init__(self, uri: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.collection = f"t{uuid.uuid4().hex[:12]}"
        self.index = open_index(uri, self.collection)
        self.run(self.index.open())

    def run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def close(self) -> None:
        if self.index.backend == "milvus":
            self.run(self.index.drop_collection(self.collection))
        self.run(self.index.close())
        self.loop.close()


@pytest.fixture(params=["embedded", "milvus"])
def engine(request, tmp_path):
    uri = str(tmp_path / "index.sqlite") if request.param == "embedded" else request.getfixturevalue("milvus_server")
    opened = Engine(uri)
    yield opened
    opened.close()


def test_upsert_get_search_delete(engine):
    vectors = unit(0, 40)
    c = engine.collection
    engine.run(engine.index.upsert(c, [record(i, v) for i, v in enumerate(vectors)]))
    assert engine.run(engine.index.count(c)) == 40
    hits = engine.run(engine.index.search(c, vectors[3], 5, Filter(), with_features=True))
    assert hits[0].id == "img-3" and hits[0].ann_score == pytest.approx(1.0, abs=1e-3)
    expected = record(3, vectors[3])
    np.testing.assert_array_equal(hits[0].regions, expected.regions)
    np.testing.assert_allclose(hits[0].region_scales, expected.region_scales, rtol=1e-6)
    assert hits[0].keywords == expected.keywords and hits[0].metadata == expected.metadata
    engine.run(engine.index.upsert(c, [record(3, vectors[4])]))  # replace
    assert engine.run(engine.index.count(c)) == 40
    got = engine.run(engine.index.get(c, ["img-3", "missing"], True))
    assert list(got) == ["img-3"]
    np.testing.assert_allclose(got["img-3"].embedding, vectors[4], rtol=1e-6)
    assert engine.run(engine.index.delete(c, ["img-3", "missing"])) == ["img-3"]
    assert engine.run(engine.index.count(c)) == 39
    assert all(h.id != "img-3" for h in engine.run(engine.index.search(c, vectors[4], 40, Filter())))


def test_hostile_values_round_trip_and_filter_only_themselves(engine):
    c = engine.collection
    vectors = unit(1, len(HOSTILE))
    records = [
        record(i, v, keywords=[(text, 1.0, 1)], metadata={"k": text, "n": str(i)})
        for i, (text, v) in enumerate(zip(HOSTILE, vectors, strict=True))
    ]
    engine.run(engine.index.upsert(c, records))
    got = engine.run(engine.index.get(c, [r.id for r in records], False))
    for r in records:
        assert got[r.id].keywords == r.keywords and got[r.id].metadata == r.metadata
    for i, text in enumerate(HOSTILE):
        by_keyword = engine.run(engine.index.search(c, vectors[0], 20, Filter(keywords=(text,))))
        assert [h.id for h in by_keyword] == [f"img-{i}"], text
        group = MetadataFilter("and", (MetadataClause("k", "eq", (text,)),))
        assert [h.id for h in engine.run(engine.index.search(c, vectors[0], 20, Filter(metadata=group)))] == [
            f"img-{i}"
        ]
    within = engine.run(engine.index.search(c, vectors[0], 20, Filter(within_ids=("img-1", "img-2"))))
    assert {h.id for h in within} == {"img-1", "img-2"}


def test_metadata_filters(engine):
    c = engine.collection
    vectors = unit(2, 30)
    engine.run(
        engine.index.upsert(
            c,
            [
                record(
                    i,
                    v,
                    metadata={"n": str(i), "kind": "even" if i % 2 == 0 else "odd", **({"star": "1"} if i < 3 else {})},
                )
                for i, v in enumerate(vectors)
            ],
        )
    )

    def ids(group: MetadataFilter, keywords=()) -> set[str]:
        return {h.id for h in engine.run(engine.index.search(c, vectors[0], 100, Filter(keywords, metadata=group)))}

    assert ids(MetadataFilter("and", (MetadataClause("n", "range", lower=10, upper=12),))) == {
        "img-10",
        "img-11",
        "img-12",
    }
    assert ids(MetadataFilter("and", (MetadataClause("n", "range", lower=28, lower_inclusive=False),))) == {"img-29"}
    assert ids(
        MetadataFilter("and", (MetadataClause("kind", "in", ("odd",)), MetadataClause("n", "range", upper=3)))
    ) == {"img-1", "img-3"}
    assert ids(MetadataFilter("and", (MetadataClause("star", "exists"),))) == {"img-0", "img-1", "img-2"}
    either = MetadataFilter("or", (MetadataClause("n", "eq", ("5",)), MetadataClause("star", "exists")))
    assert ids(either) == {"img-0", "img-1", "img-2", "img-5"}
    assert ids(either, keywords=("red",)) == {"img-0", "img-1", "img-2", "img-5"}
    assert ids(either, keywords=("blue",)) == set()


def test_a_selective_filter_returns_as_many_as_asked(engine):
    c = engine.collection
    vectors = unit(3, 600)
    engine.run(engine.index.upsert(c, [record(i, v, metadata={"bucket": str(i % 100)}) for i, v in enumerate(vectors)]))
    group = MetadataFilter("and", (MetadataClause("bucket", "eq", ("7",)),))  # 1% of the collection
    hits = engine.run(engine.index.search(c, vectors[0], 6, Filter(metadata=group)))
    assert len(hits) == 6 and all(int(h.id.split("-")[1]) % 100 == 7 for h in hits)


def test_keyword_retrieval_finds_the_words_and_honours_filters(engine):
    c = engine.collection
    vectors = unit(5, 6)
    words = [["red", "circle"], ["blue", "square"], ["red", "square", "festive"], ["café"], ["green"], ["red"]]
    engine.run(
        engine.index.upsert(
            c,
            [
                record(i, v, keywords=[(w, 1.0, 1) for w in ws], metadata={"n": str(i)})
                for i, (v, ws) in enumerate(zip(vectors, words, strict=True))
            ],
        )
    )

    def ids(text, condition=Filter()):
        return {h.id for h in engine.run(engine.index.keyword_search(c, vectors[0], text, 10, condition, True))}

    assert ids("a red circle") == {"img-0", "img-2", "img-5"}
    assert ids("festive") == {"img-2"}
    assert ids('"; drop table items; --') == set() and ids("") == set()
    group = MetadataFilter("and", (MetadataClause("n", "eq", ("2",)),))
    assert ids("red", Filter(metadata=group)) == {"img-2"}
    hits = engine.run(engine.index.keyword_search(c, vectors[0], "red circle", 10, Filter(), True))
    assert hits[0].id == "img-0" and hits[0].regions.shape == (36, 128)
    assert {h.id: h.ann_score for h in hits}["img-0"] == pytest.approx(1.0, abs=1e-3)  # still the vector cosine


def shop(i: int, vector: np.ndarray) -> Shop:
    rng = np.random.default_rng(100 + i)
    attention = rng.random(36).astype(np.float32)
    return Shop(vector, rng.standard_normal(64).astype(np.float32), attention / attention.sum())


def test_cross_domain_vectors_search_filter_replace_and_delete(engine):
    c = engine.collection
    vectors, shop_vectors = unit(5, 12), unit(6, 12)[:, :64]
    shop_vectors = shop_vectors / np.linalg.norm(shop_vectors, axis=1, keepdims=True)
    records = [record(i, v) for i, v in enumerate(vectors)]
    for i in range(10):  # the last two have no cross-domain features
        records[i].shop = shop(i, shop_vectors[i])
    engine.run(engine.index.upsert(c, records))
    hits = engine.run(engine.index.search_shop(c, shop_vectors[2], 20, Filter()))
    assert hits[0].id == "img-2" and hits[0].ann_score == pytest.approx(1.0, abs=1e-3)
    assert {h.id for h in hits} == {f"img-{i}" for i in range(10)}
    expected = shop(2, shop_vectors[2])
    np.testing.assert_allclose(hits[0].shop.context, expected.context, rtol=1e-6)
    np.testing.assert_allclose(hits[0].shop.attention, expected.attention, rtol=1e-6)
    assert hits[0].title == "title 2" and hits[0].keywords == records[2].keywords
    within = engine.run(engine.index.search_shop(c, shop_vectors[0], 20, Filter(within_ids=("img-3", "img-11"))))
    assert [h.id for h in within] == ["img-3"]
    got = engine.run(engine.index.get(c, ["img-4", "img-11"], True))
    np.testing.assert_allclose(got["img-4"].shop.embedding, shop_vectors[4], rtol=1e-6)
    assert got["img-11"].shop is None
    engine.run(engine.index.upsert(c, [record(2, vectors[2])]))  # replaced without features: gone from cross-domain
    engine.run(engine.index.delete(c, ["img-3"]))
    left = {h.id for h in engine.run(engine.index.search_shop(c, shop_vectors[2], 20, Filter()))}
    assert left == {f"img-{i}" for i in range(10)} - {"img-2", "img-3"}


def test_collections_are_isolated(engine):
    other = f"{engine.collection}_b"
    assert engine.run(engine.index.create_collection(other))
    try:
        engine.run(engine.index.upsert(other, [record(0, unit(4, 1)[0])]))
        assert engine.run(engine.index.get(engine.collection, ["img-0"], False)) == {}
        assert engine.run(engine.index.count(other)) == 1
    finally:
        assert engine.run(engine.index.drop_collection(other)) == 1
    with pytest.raises(NotFound):
        engine.run(engine.index.count(other))


def test_a_filter_of_64_conditions(engine):
    """The API allows 64 metadata conditions; Milvus 2.3 failed a chain of 49 or more ("unsupported
    expr proto node"): the engine sends balanced trees."""
    c = engine.collection
    vectors = unit(9, 30)
    engine.run(
        engine.index.upsert(c, [record(i, v, metadata={"n": str(i), "k": f"v{i}"}) for i, v in enumerate(vectors)])
    )

    def ids(group: MetadataFilter) -> set[str]:
        return {h.id for h in engine.run(engine.index.search(c, vectors[0], 100, Filter(("red",), metadata=group)))}

    ranges = tuple(MetadataClause("n", "range", lower=i / 10, upper=20 + i / 10) for i in range(64))
    assert ids(MetadataFilter("and", ranges)) == {f"img-{i}" for i in range(7, 21)}
    equals = tuple(MetadataClause("k", "eq", (f"v{i}",)) for i in range(64))
    assert ids(MetadataFilter("or", equals)) == {f"img-{i}" for i in range(30)}
    nested = MetadataFilter("and", ranges[:32], (MetadataFilter("or", equals[:16]), MetadataFilter("or", equals[8:24])))
    assert ids(nested) == {f"img-{i}" for i in range(8, 16)}


def test_a_metadata_key_or_value_with_nul_matches_itself_only(engine):
    """Milvus never matched `equals` on a key holding NUL (sent raw, its JSON path was cut)."""
    c = engine.collection
    vectors = unit(10, 3)
    metadata = [{"a\x00b": "v\x00w", "n": "1"}, {"a": "v\x00w", "a\x00b": "other"}, {"a\x00": "v", "b": "7"}]
    engine.run(
        engine.index.upsert(
            c, [record(i, v, metadata=m) for i, (v, m) in enumerate(zip(vectors, metadata, strict=True))]
        )
    )

    def ids(*clauses: MetadataClause) -> set[str]:
        group = MetadataFilter("and", clauses)
        return {h.id for h in engine.run(engine.index.search(c, vectors[0], 10, Filter(metadata=group)))}

    assert ids(MetadataClause("a\x00b", "eq", ("v\x00w",))) == {"img-0"}
    assert ids(MetadataClause("a\x00b", "in", ("other", "nope"))) == {"img-1"}
    assert ids(MetadataClause("a\x00b", "exists")) == {"img-0", "img-1"}
    assert ids(MetadataClause("a\x00", "eq", ("v",))) == {"img-2"}
    assert ids(MetadataClause("a", "eq", ("v\x00w",))) == {"img-1"}
    assert ids(MetadataClause("a", "eq", ("v",))) == set()
    got = engine.run(engine.index.get(c, ["img-0"], False))
    assert got["img-0"].metadata == metadata[0]


def test_a_collection_dropped_under_traffic_is_not_found(engine, tmp_path):
    """Dropped by another gateway (Milvus) while this one had it cached: NOT_FOUND, never
    UNAVAILABLE, so ListCollections (which leaves out what is dropped meanwhile) still answers."""
    name = f"{engine.collection}_gone"
    assert engine.run(engine.index.create_collection(name))
    vector = unit(11, 1)[0]
    engine.run(engine.index.upsert(name, [record(0, vector)]))
    assert engine.run(engine.index.count(name)) == 1  # known to this engine from here on
    if engine.index.backend == "milvus":
        other = open_index(engine.index.uri, engine.collection)
        engine.run(other.open())
        engine.run(other.drop_collection(name))
        engine.run(other.close())
    else:
        engine.run(engine.index.drop_collection(name))
    calls = {
        "count": lambda: engine.index.count(name),
        "search": lambda: engine.index.search(name, vector, 5, Filter()),
        "keyword_search": lambda: engine.index.keyword_search(name, vector, "red", 5, Filter()),
        "get": lambda: engine.index.get(name, ["img-0"], True),
        "upsert": lambda: engine.index.upsert(name, [record(1, vector)]),
        "delete": lambda: engine.index.delete(name, ["img-0"]),
    }
    for what, call in calls.items():
        with pytest.raises(NotFound, match="does not exist"):
            engine.run(call())
            pytest.fail(what)
    assert name not in engine.run(engine.index.collections())
    assert engine.collection in engine.run(engine.index.collections())


def test_a_gateway_on_the_milvus_server_serves_the_same_search(real_stack, milvus_server, ci_corpus, tmp_path):
    """A second SearchService on the same model services, with INDEX_URI on the Milvus server:
    Index, Search (rescored, filtered), Get, Delete and Stats through the real RPCs."""
    import grpc
    from amcsearch.launcher import SERVICES_ROOT
    from amcsearch.processes import free_port, grpc_serving, service_process, wait_until
    from amcsearch.v1 import common_pb2, search_pb2, search_pb2_grpc

    from tests.integration.conftest import png

    collection = f"gw{uuid.uuid4().hex[:10]}"
    env = {**real_stack.env, "INDEX_URI": milvus_server, "INDEX_COLLECTION": collection}
    process = service_process("search", "SEARCH", free_port(), free_port(), env, tmp_path, SERVICES_ROOT)
    process.start()
    try:
        wait_until(lambda: grpc_serving(process.endpoints["grpc"]), 90, "search on milvus", process)
        with grpc.insecure_channel(process.endpoints["grpc"]) as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            records = ci_corpus.test.images[:24]
            items = [
                search_pb2.ImageItem(
                    id=r.id,
                    image=png(p),
                    title=r.caption,
                    keywords=[common_pb2.Keyword(text=k, confidence=c) for k, c in r.noisy_keywords],
                )
                for r, p in zip(records, ci_corpus.test.pixels[:24], strict=True)
            ]
            assert (
                stub.Index(search_pb2.IndexRequest(items=items, skip_auto_tags=True), timeout=120).indexed_count == 24
            )
            reply = stub.Search(search_pb2.SearchRequest(text=records[0].caption, top_k=5, explain=True), timeout=60)
            assert (
                reply.stages == ["encode", "ann", "keyword_search", "merge", "rescore"]
                and not reply.degradations
                and len(reply.results) == 5
            )
            keyword = records[0].noisy_keywords[0][0]
            filtered = stub.Search(
                search_pb2.SearchRequest(text="anything", top_k=24, keyword_filter=[keyword]), timeout=60
            )
            expected = {r.id for r in records if keyword in {k for k, _ in r.noisy_keywords}}
            assert {r.id for r in filtered.results} == expected
            got = stub.Get(search_pb2.GetRequest(ids=[records[1].id], include_features=True), timeout=30)
            assert got.images[0].features.regions.shape == [36, 128]
            assert stub.Delete(search_pb2.DeleteRequest(ids=[records[0].id]), timeout=30).deleted_count == 1
            again = stub.Search(search_pb2.SearchRequest(text=records[0].caption, top_k=24), timeout=60)
            assert records[0].id not in {r.id for r in again.results}
            stats = stub.Stats(search_pb2.StatsRequest(), timeout=30)
            assert (stats.image_count, stats.index_backend, stats.collection) == (23, "milvus", collection)
    finally:
        process.stop()


def test_embedded_cross_domain_vectors_survive_a_restart(tmp_path):
    uri = str(tmp_path / "index.sqlite")
    first = Engine(uri)
    vectors = unit(7, 30)[:, :64]
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    records = [record(i, v) for i, v in enumerate(unit(8, 30))]
    for i, r in enumerate(records):
        r.shop = shop(i, vectors[i])
    first.run(first.index.upsert(first.collection, records))
    first.close()
    second = Engine(uri)
    second.collection = first.collection
    try:
        hits = second.run(second.index.search_shop(second.collection, vectors[7], 3, Filter()))
        assert hits[0].id == "img-7"
    finally:
        second.close()


# --- derived files: verified, never trusted (embedded engine) ------------------------------------


def exact_recall(index, collection: str, vectors: np.ndarray, queries: np.ndarray) -> float:
    """Mean recall@10 of the engine's search against exact search over `vectors` (img-<i>)."""
    found = 0
    for q in queries:
        exact = {f"img-{i}" for i in np.argsort(-(vectors @ q))[:10]}
        found += len(exact & {h.id for h in asyncio.run(index.search(collection, q, 10, Filter()))})
    return found / (10 * len(queries))


def embedded(path, hnsw_min_rows: int = 200):
    from amcsearch.search.embedded_index import EmbeddedIndex

    index = EmbeddedIndex(path, "images", hnsw_min_rows=hnsw_min_rows)
    asyncio.run(index.open())
    return index


def fill(path, vectors: np.ndarray):
    """A store of `vectors` (img-<i>), its graph built, closed gracefully (snapshot saved)."""
    index = embedded(path)
    for start in range(0, len(vectors), 256):
        batch = [record(i, vectors[i], metadata={}) for i in range(start, min(start + 256, len(vectors)))]
        asyncio.run(index.upsert("images", batch))
    assert index.vectors["images"].wait_for_graph(120)
    return index


def test_a_damaged_snapshot_is_rebuilt_not_served(tmp_path, caplog):
    """Repro A: random bytes over the middle of the saved graph. The gateway restored it, served
    recall@10 0.03, and re-saved it at the next graceful stop."""
    path = tmp_path / "index.sqlite"
    vectors = unit(20, 1084)
    asyncio.run(fill(path, vectors).close())
    snapshot = tmp_path / "index.sqlite.images.hnsw"
    with open(snapshot, "r+b") as file:
        file.seek(snapshot.stat().st_size // 2)
        file.write(np.random.default_rng(0).bytes(200 * 64))
    index = embedded(path)
    try:
        assert index.vectors["images"].wait_for_graph(120) and asyncio.run(index.ann_mode("images")) == "hnsw"
        recall = exact_recall(index, "images", vectors, unit(21, 50))
    finally:
        asyncio.run(index.close())
    assert recall >= 0.99, recall
    assert "do not match their checksum" in caplog.text


def killed_after_filling(path, seed: int, count: int) -> None:
    """fill() in a child process that then kills itself with SIGKILL (no graceful stop)."""
    import os
    import subprocess
    import sys

    script = (
        "import os, signal\n"
        "from tests.integration.test_index_engines import fill, unit\n"
        f"fill({str(path)!r}, unit({seed}, {count}))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root / 'services'}{os.pathsep}{root}"}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True, timeout=300)
    assert done.returncode == -9, done.stderr.decode()[-2000:]


def test_a_snapshot_of_another_store_is_rebuilt_not_patched(tmp_path, caplog):
    """Repro B: the store deleted and created again beside the old snapshot, filled, killed;
    its row ids started over, so the old graph's keys name other images. It was patched
    ("48 stale removed, 48 added") and served recall@10 0.04."""
    path = tmp_path / "index.sqlite"
    asyncio.run(fill(path, unit(22, 1084)).close())
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm", "index.sqlite.generation"):
        (tmp_path / name).unlink(missing_ok=True)
    killed_after_filling(path, 23, 1084)
    index = embedded(path)
    try:
        assert index.vectors["images"].wait_for_graph(120)
        recall = exact_recall(index, "images", unit(23, 1084), unit(24, 50))
    finally:
        asyncio.run(index.close())
    assert recall >= 0.99, recall
    assert "derived from another store" in caplog.text


def check_index_report(path, capsys) -> tuple[int, str]:
    from amcsearch.search.check_index import main

    code = main(["--uri", str(path)])
    return code, capsys.readouterr().out


def test_check_index_samples_recall_and_reports_a_disagreeing_snapshot(tmp_path, capsys):
    path = tmp_path / "index.sqlite"
    asyncio.run(fill(path, unit(25, 1084)).close())
    code, report = check_index_report(path, capsys)
    assert code == 0 and report.rstrip().endswith("index OK"), report
    recall = float(report.split("recall@10 against exact search ")[1].split()[0])
    assert recall >= 0.99, report
    snapshot = tmp_path / "index.sqlite.images.hnsw"
    with open(snapshot, "r+b") as file:
        file.seek(snapshot.stat().st_size // 2)
        file.write(np.random.default_rng(1).bytes(200 * 64))
    code, report = check_index_report(path, capsys)
    assert code == 1 and "index.sqlite.images.hnsw disagrees with the store: its bytes do not match" in report, report


@pytest.mark.parametrize("damage", ["random bytes over its pages", "not an SQLite file"])
def test_check_index_reports_a_malformed_store_without_a_traceback(tmp_path, capsys, damage):
    path = tmp_path / "index.sqlite"
    asyncio.run(fill(path, unit(26, 300)).close())
    if damage == "not an SQLite file":
        path.write_text("these are not the pages you are looking for\n" * 200)
    else:
        with open(path, "r+b") as file:
            for offset in range(4096, path.stat().st_size, 4 * 4096):  # every fourth page from the second
                file.seek(offset)
                file.write(np.random.default_rng(offset).bytes(4096))
    code, report = check_index_report(path, capsys)
    assert code == 1 and "PROBLEM" in report and "Traceback" not in report, report
    if damage == "not an SQLite file":
        assert "the store cannot be read (file is not a database)" in report, report

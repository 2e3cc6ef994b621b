"""The embedded index engine on its own: SQLite store, exact and HNSW vector search, filters with
hostile values, durability across reopen, one owner per file, a store deleted underneath."""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest
from amcsearch.runtime.errors import NotFound, Unavailable
from amcsearch.runtime.quantize import dequantize_regions, quantize_regions
from amcsearch.search.embedded_index import EmbeddedIndex
from amcsearch.search.feature_cache import FeatureCache
from amcsearch.search.records import Filter, MetadataClause, MetadataFilter, Record
from amcsearch.search.vector_index import VectorIndex

HOSTILE = ['a"b', "it's", "x') OR 1=1 --", "[0]", 'id in ["x"]', "back\\slash", "new\nline", "café ☕", "%_*"]


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 384)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def record(i: int, vector: np.ndarray, **extra) -> Record:
    regions, scales = quantize_regions(np.full((36, 128), i % 7 - 3, np.float32))
    return Record(
        f"img-{i}",
        vector,
        regions,
        scales,
        f"title {i}",
        extra.get("keywords", [("red", 0.9, 2)]),
        extra.get("metadata", {"n": str(i)}),
    )


def run(coroutine):
    return asyncio.run(coroutine)


def test_exact_search_equals_numpy_and_deleted_rows_leave():
    rng = np.random.default_rng(0)
    vectors = unit(rng, 500)
    index = VectorIndex(384, hnsw_min_rows=10**9, ef_search=64)
    index.add(np.arange(1, 501), vectors)
    query = unit(rng, 1)[0]
    keys, scores = index.search(query, 10)
    expected = np.argsort(-(vectors @ query))[:10] + 1
    assert keys.tolist() == expected.tolist()
    np.testing.assert_allclose(scores, np.sort(vectors @ query)[::-1][:10], rtol=1e-5)
    index.remove([int(keys[0])])
    assert int(keys[0]) not in index.search(query, 10)[0].tolist()
    assert index.count == 499


def test_hnsw_recall_and_filtered_search_never_starves():
    rng = np.random.default_rng(1)
    vectors = unit(rng, 3000)
    index = VectorIndex(384, hnsw_min_rows=1000, ef_search=256)
    index.add(np.arange(3000), vectors)
    assert index.wait_for_graph(120) and index.mode == "hnsw"
    queries = unit(rng, 20)
    recall = np.mean(
        [
            len(set(index.search(q, 50)[0].tolist()) & set(np.argsort(-(vectors @ q))[:50].tolist())) / 50
            for q in queries
        ]
    )
    assert recall > 0.9
    allowed = np.arange(0, 3000, 100)  # 1%: exact over the allowed rows, as many as asked
    keys, _ = index.search(queries[0], 20, allowed)
    assert len(keys) == 20 and set(keys.tolist()) <= set(allowed.tolist())
    broad = np.arange(0, 3000, 2)  # half the rows: the graph, oversampled
    keys, _ = index.search(queries[0], 20, broad)
    assert len(keys) == 20 and set(keys.tolist()) <= set(broad.tolist())


@pytest.mark.parametrize("hnsw_min_rows", [10**9, 100])
def test_search_many_equals_one_search_per_query(hnsw_min_rows):
    rng = np.random.default_rng(5)
    vectors = unit(rng, 400)
    index = VectorIndex(384, hnsw_min_rows=hnsw_min_rows, ef_search=64)
    index.add(np.arange(400), vectors, build_graph=False)  # the graph is built below, not raced
    index.ensure_graph(background=False)
    index.remove([3, 17])
    queries = np.concatenate([unit(rng, 5), np.zeros((1, 384), np.float32)]) * 3.0  # not unit length
    for query, (keys, scores) in zip(queries, index.search_many(queries, 20), strict=True):
        expected_keys, expected_scores = index.search(query, 20)
        assert keys.tolist() == expected_keys.tolist()
        np.testing.assert_allclose(scores, expected_scores, atol=1e-6)


def test_a_batch_of_queries_reads_the_candidates_a_search_would(store):
    """vector_candidates_many (one pass over the vectors for every query) gives
    each query the columns vector_candidates gives it, the keyword route's extra keys included;
    a row deleted between the two ranks is left out."""
    rng = np.random.default_rng(6)
    vectors = unit(rng, 60)
    run(store.upsert("images", [record(i, v, keywords=[(f"k{i % 5}", 0.5, 2)]) for i, v in enumerate(vectors)]))
    queries = unit(rng, 3)
    extra = [np.array([5, 9, 999], np.int64), None, np.zeros(0, np.int64)]
    batch = run(store.vector_candidates_many("images", queries, 10, extra, [None] * 3))
    for query, keys, found in zip(queries, extra, batch, strict=True):
        single = run(store.vector_candidates("images", query, 10, Filter(), keys))
        assert found.keys.tolist() == single.keys.tolist()
        np.testing.assert_allclose(found.ann_scores, single.ann_scores, atol=1e-6)
        np.testing.assert_array_equal(found.regions, single.regions)
        np.testing.assert_array_equal(found.region_scales, single.region_scales)
        np.testing.assert_array_equal(found.confidences, single.confidences)
        assert found.keyword_texts[found.keyword_ids].tolist() == single.keyword_texts[single.keyword_ids].tolist()


def test_only_the_candidates_a_merge_picks_are_gathered_with_their_cosines(store):
    """A hybrid search's merge picks its candidates from the two routes' keys before any column
    is gathered: the reply holds exactly the picked keys, in the merge's order, each with its
    cosine to the query (the vector ranking's own, or computed for a keyword-only key)."""
    rng = np.random.default_rng(8)
    vectors = unit(rng, 40)
    run(store.upsert("images", [record(i, v) for i, v in enumerate(vectors)]))
    query = unit(rng, 1)[0]
    nearest = run(store.vector_candidates("images", query, 5, Filter()))
    described = run(store.describe("images", np.arange(1, 100)))
    rows = {d.id: k for k, d in zip(range(1, 100), described, strict=True) if d}
    far = [rows[f"img-{i}"] for i in range(40) if rows[f"img-{i}"] not in nearest.keys.tolist()][:2]
    extra = np.array([far[0], int(nearest.keys[0]), far[1], 999], np.int64)
    seen = []

    def merge(vector_keys, keyword_keys):
        seen.append((vector_keys.tolist(), keyword_keys.tolist()))
        return np.array([keyword_keys[2], vector_keys[3], keyword_keys[0]], np.int64)

    picked = run(store.vector_candidates("images", query, 5, Filter(), extra, merge))
    assert seen == [(nearest.keys.tolist(), extra.tolist())]
    assert picked.keys.tolist() == [far[1], int(nearest.keys[3]), far[0]]
    vector_of = {rows[f"img-{i}"]: v for i, v in enumerate(vectors)}
    expected = np.stack([vector_of[k] for k in picked.keys.tolist()]) @ query
    np.testing.assert_allclose(picked.ann_scores, expected, atol=1e-5)
    batch = run(store.vector_candidates_many("images", query[None], 5, [extra], [merge]))
    assert batch[0].keys.tolist() == picked.keys.tolist()
    np.testing.assert_array_equal(batch[0].regions, picked.regions)


def _columns(found):
    return (
        found.keys.tolist(),
        found.regions.tobytes(),
        found.region_scales.tobytes(),
        found.confidences.tobytes(),
        found.keyword_texts[found.keyword_ids].tolist(),
    )


@pytest.mark.parametrize("budget_mib", [0, 1, 64])
def test_candidate_columns_held_in_memory_equal_the_stores_and_forget_deleted_rows(tmp_path, budget_mib):
    """A second read of the same candidates (served from memory where the budget allows: 1 MiB
    holds ~200 images, so part of them) gives the store's columns; a row replaced or deleted
    since is never served from memory; a dropped collection leaves none behind."""

    async def scenario():
        index = EmbeddedIndex(tmp_path / "index.sqlite", "images", feature_cache_mib=budget_mib)
        await index.open()
        try:
            rng = np.random.default_rng(9)
            vectors = unit(rng, 400)
            records = [record(i, v, keywords=[(f"k{i % 11}", 0.1 + i % 9 / 10, 2)]) for i, v in enumerate(vectors)]
            await index.upsert("images", records)
            keys = np.concatenate([np.arange(400, 0, -1), [2, 999_999]])  # a duplicate, an unknown row
            scores = np.linspace(0, 1, len(keys)).astype(np.float32)
            first = index._features(keys, scores)
            assert len(index.feature_cache) == min(400, index.feature_cache.capacity)
            second = index._features(keys, scores)
            assert _columns(second) == _columns(first)
            np.testing.assert_array_equal(second.ann_scores, first.ann_scores)
            assert first.keys.tolist() == [k for k in keys.tolist() if k <= 400]
            # img-0 is row 1, img-3 row 4: replace the one, delete the other
            await index.upsert("images", [record(0, vectors[0], keywords=[("changed", 0.7, 2)])])
            await index.delete("images", ["img-3"])
            after = index._features(np.array([1, 4, 401]), np.zeros(3, np.float32))
            assert after.keys.tolist() == [401]
            assert after.keyword_texts[after.keyword_ids[0, 0]] == "changed"
            await index.drop_collection("images")
            assert len(index.feature_cache) == 0
            assert len(index._features(keys, scores)) == 0
        finally:
            await index.close()

    run(scenario())


def test_indexed_rows_are_in_memory_before_their_first_search(tmp_path):
    """Write-through: the rows an upsert commits are held at once (a gateway that had just
    indexed 100k images read nearly every candidate from SQLite), a replaced row's old columns
    are not, and what is held equals what the store gives a gateway that holds nothing."""

    async def scenario():
        path = tmp_path / "index.sqlite"
        rng = np.random.default_rng(11)
        records = [
            record(i, v, keywords=[(f"t{i % 5}", 0.3 + i % 4 / 10, 2), ("shared", 0.5, 1)])
            for i, v in enumerate(unit(rng, 120))
        ]
        index = EmbeddedIndex(path, "images", feature_cache_mib=64)
        await index.open()
        try:
            assert index._warming is not None
            index._warming.join(timeout=60)  # the empty store's warm-up: what follows is the writes'
            await index.upsert("images", records[:80])  # rows 1-80
            replaced = record(5, records[5].embedding, keywords=[("changed", 0.7, 2)])
            await index.upsert("images", [replaced, *records[80:]])  # row 6 -> 81; rows 82-121
            rows = np.setdiff1d(np.arange(1, 122), [6])
            held, _ = index.feature_cache.lookup(np.arange(1, 122))
            assert held.tolist() == [row != 6 for row in range(1, 122)]
            in_memory = index._features(rows, np.zeros(len(rows), np.float32))
        finally:
            await index.close()
        index = EmbeddedIndex(path, "images", feature_cache_mib=0)
        await index.open()
        try:
            from_store = index._features(rows, np.zeros(len(rows), np.float32))
        finally:
            await index.close()
        assert _columns(in_memory) == _columns(from_store)
        assert in_memory.keyword_texts[in_memory.keyword_ids[rows.tolist().index(81), 0]] == "changed"

    run(scenario())


def test_a_reopened_store_warms_its_candidate_columns_in_the_background(tmp_path):
    """After a restart the columns come back into memory from the store, as far as the budget
    goes, and equal what a read of the store gives."""

    async def scenario():
        path = tmp_path / "index.sqlite"
        index = EmbeddedIndex(path, "images", feature_cache_mib=0)
        await index.open()
        rng = np.random.default_rng(10)
        vectors = unit(rng, 300)
        await index.upsert("images", [record(i, v, keywords=[(f"w{i % 13}", 0.6, 2)]) for i, v in enumerate(vectors)])
        keys = np.arange(300, 0, -1)
        from_store = index._features(keys, np.zeros(300, np.float32))
        await index.close()
        for budget, held in ((64, 300), (1, FeatureCache(1).capacity)):  # 1 MiB: 209 of the 300
            index = EmbeddedIndex(path, "images", feature_cache_mib=budget)
            await index.open()
            try:
                assert index._warming is not None
                index._warming.join(timeout=60)
                assert len(index.feature_cache) == min(held, 300)
                assert _columns(index._features(keys, np.zeros(300, np.float32))) == _columns(from_store)
            finally:
                await index.close()

    run(scenario())


def test_upsert_get_search_delete_round_trip(store):
    rng = np.random.default_rng(2)
    vectors = unit(rng, 50)
    run(store.upsert("images", [record(i, v) for i, v in enumerate(vectors)]))
    assert run(store.count("images")) == 50
    hits = run(store.search("images", vectors[7], 3, Filter(), with_features=True))
    assert hits[0].id == "img-7" and hits[0].ann_score == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(dequantize_regions(hits[0].regions, hits[0].region_scales), 0.0 + (7 % 7 - 3), atol=0.02)
    run(store.upsert("images", [record(7, vectors[8])]))  # replaced: same id, new vector
    assert run(store.count("images")) == 50
    assert run(store.search("images", vectors[8], 2, Filter()))[0].id in {"img-7", "img-8"}
    assert run(store.delete("images", ["img-7", "nope"])) == ["img-7"]
    assert "img-7" not in run(store.get("images", ["img-7", "img-8"], False))
    assert all(h.id != "img-7" for h in run(store.search("images", vectors[8], 50, Filter())))


def test_every_stored_value_round_trips_and_filters_are_parameters(store):
    rng = np.random.default_rng(3)
    vectors = unit(rng, len(HOSTILE))
    records = [
        record(i, v, keywords=[(text, 1.0, 1)], metadata={text: text, "n": str(i)})
        for i, (text, v) in enumerate(zip(HOSTILE, vectors, strict=False))
    ]
    run(store.upsert("images", records))
    got = run(store.get("images", [r.id for r in records], False))
    for r in records:
        assert got[r.id].keywords == r.keywords and got[r.id].metadata == r.metadata
    for i, text in enumerate(HOSTILE):
        by_keyword = run(store.search("images", vectors[0], 20, Filter(keywords=(text,))))
        assert [h.id for h in by_keyword] == [f"img-{i}"], text
        clause = MetadataClause(text, "eq", (text,))
        by_metadata = run(store.search("images", vectors[0], 20, Filter(metadata=MetadataFilter("and", (clause,)))))
        assert [h.id for h in by_metadata] == [f"img-{i}"], text


def test_metadata_ranges_in_exists_and_or(store):
    rng = np.random.default_rng(4)
    vectors = unit(rng, 30)
    run(
        store.upsert(
            "images",
            [
                record(i, v, metadata={"n": str(i), **({"even": "yes"} if i % 2 == 0 else {})})
                for i, v in enumerate(vectors)
            ],
        )
    )

    def ids(group: MetadataFilter) -> set[str]:
        return {h.id for h in run(store.search("images", vectors[0], 100, Filter(metadata=group)))}

    assert ids(MetadataFilter("and", (MetadataClause("n", "range", lower=10, upper=12),))) == {
        "img-10",
        "img-11",
        "img-12",
    }
    assert ids(
        MetadataFilter(
            "and", (MetadataClause("n", "range", lower=10, upper=12, lower_inclusive=False, upper_inclusive=False),)
        )
    ) == {"img-11"}
    assert ids(MetadataFilter("and", (MetadataClause("n", "in", ("1", "2", "nope")),))) == {"img-1", "img-2"}
    assert len(ids(MetadataFilter("and", (MetadataClause("even", "exists"),)))) == 15
    either = MetadataFilter("or", (MetadataClause("n", "eq", ("3",)), MetadataClause("n", "eq", ("4",))))
    assert ids(either) == {"img-3", "img-4"}
    both = MetadataFilter("and", (MetadataClause("even", "exists"),), (either,))
    assert ids(both) == {"img-4"}


def test_reopen_keeps_acknowledged_writes_and_restores_the_graph(tmp_path):
    rng = np.random.default_rng(5)
    vectors = unit(rng, 400)

    async def first():
        index = EmbeddedIndex(tmp_path / "index.sqlite", "images", hnsw_min_rows=300)
        await index.open()
        await index.upsert("images", [record(i, v) for i, v in enumerate(vectors)])
        index.vectors["images"].wait_for_graph(60)
        await index.close()

    async def second():
        index = EmbeddedIndex(tmp_path / "index.sqlite", "images", hnsw_min_rows=300)
        await index.open()
        try:
            assert await index.count("images") == 400
            assert await index.ann_mode("images") == "hnsw"  # restored from the snapshot, no rebuild
            assert (await index.search("images", vectors[9], 1, Filter()))[0].id == "img-9"
        finally:
            await index.close()

    run(first())
    run(second())


def test_one_gateway_per_file_and_a_deleted_store_refuses_writes(store, tmp_path):
    other = EmbeddedIndex(tmp_path / "index.sqlite", "images")
    with pytest.raises(Unavailable, match="another process holds the index"):
        run(other.open())
    os.unlink(tmp_path / "index.sqlite")
    assert not run(store.healthy())
    with pytest.raises(Unavailable, match="deleted or replaced"):
        run(store.upsert("images", [record(0, unit(np.random.default_rng(6), 1)[0])]))


def test_collections_are_isolated(store):
    rng = np.random.default_rng(7)
    vectors = unit(rng, 3)
    assert run(store.create_collection("other"))
    assert not run(store.create_collection("other"))
    run(store.upsert("images", [record(0, vectors[0])]))
    run(store.upsert("other", [record(0, vectors[1]), record(1, vectors[2])]))
    assert run(store.count("images")) == 1 and run(store.count("other")) == 2
    assert run(store.get("images", ["img-1"], False)) == {}
    assert run(store.drop_collection("other")) == 2
    with pytest.raises(NotFound):
        run(store.count("other"))


def test_reciprocal_rank_fusion_and_union():
    from amcsearch.search.pipeline import merge_candidates
    from amcsearch.search.records import Hit

    def hits(*ids):
        return [Hit(i, 0.0, "", {}) for i in ids]

    vector, keyword = hits("a", "b", "c", "d"), hits("c", "e", "a")
    assert [h.id for h in merge_candidates(vector, keyword, 3, "rrf")] == ["a", "c", "b"]
    assert [h.id for h in merge_candidates(vector, keyword, 3, "union")] == ["a", "b", "c", "d", "e"]
    assert [h.id for h in merge_candidates(vector, [], 2, "rrf")] == ["a", "b"]


@pytest.mark.parametrize("damage", ["delete the log", "replace the log's index", "random bytes over the log's tail"])
def test_a_log_damaged_under_the_engine_makes_it_unhealthy_and_refuses_writes(store, tmp_path, damage):
    rng = np.random.default_rng(8)
    run(store.upsert("images", [record(i, v) for i, v in enumerate(unit(rng, 20))]))
    assert run(store.healthy())
    wal, shm = tmp_path / "index.sqlite-wal", tmp_path / "index.sqlite-shm"
    if damage == "delete the log":
        os.unlink(wal)
    elif damage == "replace the log's index":
        shm.rename(tmp_path / "elsewhere")
        shm.write_bytes((tmp_path / "elsewhere").read_bytes())
    else:
        with open(wal, "r+b") as file:
            file.seek(wal.stat().st_size - 3000)
            file.write(rng.bytes(2000))
    assert not run(store.healthy())
    with pytest.raises(Unavailable, match="writes are refused"):
        run(store.upsert("images", [record(99, unit(rng, 1)[0])]))
    with pytest.raises(Unavailable, match="writes are refused"):
        run(store.delete("images", ["img-1"]))
    assert not run(store.healthy())  # until a restart
    if damage == "random bytes over the log's tail":  # its pages may read wrong: no answers from them
        with pytest.raises(Unavailable, match="reads and writes are refused"):
            run(store.get("images", ["img-1"], False))
    else:  # SQLite still holds the old file open, and its frames are now in the store file
        assert "img-1" in run(store.get("images", ["img-1"], False))


def test_a_derived_file_is_used_only_with_the_store_it_names(tmp_path):
    from amcsearch.search import derived

    path = tmp_path / "index.sqlite.images.hnsw"
    derived.save(path, lambda tmp: tmp.write_bytes(b"graph bytes"), derived.Source("store-a", "images", 7, 120, 100))

    def why(store_id="store-a", collection="images", generation=9, max_row=130) -> str:
        source, reason = derived.verify(path, store_id, collection, generation, max_row)
        assert (source is None) == bool(reason)
        return reason

    assert why() == "" and derived.verify(path, "store-a", "images", 7, 120)[0].rows == 100
    assert "another store" in why(store_id="store-b")
    assert "collection 'images', not 'other'" in why(collection="other")
    assert "reflects write 7, the store is at write 6" in why(generation=6)  # a store restored from an older copy
    assert "row ids up to 120, the store has issued only 110" in why(max_row=110)
    path.write_bytes(b"graph bytez")
    assert "do not match their checksum" in why()
    derived.sidecar_path(path).write_text("{not json")
    assert "unreadable" in why()
    derived.remove(path)
    assert not path.exists() and not derived.sidecar_path(path).exists()
    path.write_bytes(b"graph bytes")
    assert "no record" in why()

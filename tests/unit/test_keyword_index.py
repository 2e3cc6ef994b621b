"""Keyword retrieval (search/keyword_index.py): the same BM25 as SQLite FTS5's bm25() on the same
documents, top-k without reading every posting, statistics per collection, and the store's packed
candidate columns (including a schema 3 store migrated in place)."""

from __future__ import annotations

import json
import random
import re
import sqlite3

import numpy as np
import pytest
from amcsearch.runtime.keywords import named_place, parse_placement, placement_label
from amcsearch.search.embedded_index import EmbeddedIndex
from amcsearch.search.keyword_index import SMALL_QUERY_WORK, KeywordIndex
from amcsearch.search.pipeline import columnar_request, fuse_keys
from amcsearch.search.records import PLACEMENT, Filter, usable_keywords
from amcsearch.v1 import common_pb2

from tests.unit.test_embedded_index import record, run, unit

WORDS = [
    "red", "blue", "green", "circle", "circles", "triangle", "large", "small", "top-left", "top-right",
    "bottom-center", "photo", "art", "festive", "sale", "vintage", "café", "Running", "runs",
]  # fmt: skip
QUERIES = ["red circle top-left", "large blue triangle", "cafe runs", "festive sale photo", "circles", "top", "x"]


def fts5_top(db: sqlite3.Connection, text: str, limit: int) -> list[float]:
    """Today's reference: FTS5's bm25() (negated: larger is better) of the query's words OR'ed."""
    terms = sorted({t for t in re.findall(r"\w+", text.lower()) if len(t) > 1})
    if not terms:
        return []
    match = " OR ".join(f'"{t}"' for t in terms)
    rows = db.execute("SELECT -bm25(t) FROM t WHERE t MATCH ? ORDER BY bm25(t) LIMIT ?", (match, limit))
    return [r[0] for r in rows]


@pytest.mark.parametrize("small_query_work", [0, SMALL_QUERY_WORK], ids=["threshold", "dense-when-small"])
def test_bm25_scores_equal_fts5_after_adds_and_removes(small_query_work):
    """Both ways to the top-k (the threshold algorithm, and every matching image scored at once
    for a small query) give FTS5's scores."""
    rng = random.Random(0)
    docs = [[rng.choice(WORDS) for _ in range(rng.randint(1, 12))] for _ in range(3000)]
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE t USING fts5 (keywords, tokenize = 'porter unicode61')")
    db.executemany("INSERT INTO t (rowid, keywords) VALUES (?, ?)", ((i, "\n".join(d)) for i, d in enumerate(docs, 1)))
    index = KeywordIndex()
    index.add(range(1, 1501), docs[:1500])
    index.add(range(1501, 3001), docs[1500:])  # two batches, as two Index calls
    removed = list(range(1, 600, 3))
    db.executemany("DELETE FROM t WHERE rowid = ?", ((r,) for r in removed))
    index.remove(removed)
    index.small_query_work = small_query_work
    assert index.dense_counts  # the common words' counts are looked up per image
    for text in QUERIES:
        reference = fts5_top(db, text, 100)
        rows, scores = index.search(text, 100)
        assert len(rows) == len(reference), text
        np.testing.assert_allclose(scores, reference, rtol=1e-5, err_msg=text)
        assert not set(rows.tolist()) & set(removed)


def test_threshold_algorithm_reads_fewer_postings_than_match():
    """Top-10 of a frequent word among 20,000 images stops long before the end of its lists."""
    rng = random.Random(1)
    docs = [[rng.choice(WORDS) for _ in range(rng.randint(2, 12))] for _ in range(20_000)]
    index = KeywordIndex()
    index.add(range(1, len(docs) + 1), docs)
    index.small_query_work = 0  # the threshold algorithm, whatever the size
    scored = []
    original = index._exact
    index._exact = lambda docs_, weights: scored.append(len(docs_)) or original(docs_, weights)  # type: ignore[method-assign]
    rows, _ = index.search("red", 10)
    matching = sum("red" in d for d in docs)
    assert len(rows) == 10 and sum(scored) < matching / 4


def test_terms_that_cannot_matter_are_skipped_and_the_top_stays_exact():
    """A word in most images (idf at its floor) beside rarer ones: its lists stop being read once
    the top is known (MaxScore), and the top-k still equals FTS5's, ties included in the scores."""
    rng = random.Random(2)
    docs = []
    for _ in range(20_000):
        words = ["large"] if rng.random() < 0.8 else []
        words += ["circle"] if rng.random() < 0.6 else []
        words += [rng.choice(["red", "blue", "green", "purple"]) for _ in range(rng.randint(1, 3))]
        words += ["festive"] if rng.random() < 0.05 else []
        docs.append(words + [rng.choice(WORDS) for _ in range(rng.randint(0, 6))])
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE t USING fts5 (keywords, tokenize = 'porter unicode61')")
    db.executemany("INSERT INTO t (rowid, keywords) VALUES (?, ?)", ((i, "\n".join(d)) for i, d in enumerate(docs, 1)))
    index = KeywordIndex()
    index.add(range(1, len(docs) + 1), docs)
    index.small_query_work = 0  # the threshold algorithm, whatever the size
    scored = []
    original = index._exact
    index._exact = lambda docs_, weights: scored.append(len(docs_)) or original(docs_, weights)  # type: ignore[method-assign]
    for text in ["large purple festive", "large circle", "festive large", "large", "purple red large circle"]:
        scored.clear()
        rows, scores = index.search(text, 50)
        np.testing.assert_allclose(scores, fts5_top(db, text, 50), rtol=1e-6, err_msg=text)
        if text == "large purple festive":
            assert sum(scored) < sum("large" in d for d in docs) / 8


def test_small_queries_are_scored_at_once_and_large_ones_by_the_threshold_algorithm():
    """A query with few postings in a small collection skips the threshold algorithm's rounds
    (no exact per-image lookups); one with many postings takes them. Both tops are the same."""
    rng = random.Random(3)
    docs = [[rng.choice(WORDS) for _ in range(rng.randint(1, 8))] for _ in range(4000)]
    index = KeywordIndex()
    index.add(range(1, len(docs) + 1), docs)
    threshold = KeywordIndex()
    threshold.add(range(1, len(docs) + 1), docs)
    threshold.small_query_work = 0
    looked_up = []
    original = index._exact
    index._exact = lambda docs_, weights: looked_up.append(len(docs_)) or original(docs_, weights)  # type: ignore[method-assign]
    for text in QUERIES:
        rows, scores = index.search(text, 100)
        expected_rows, expected_scores = threshold.search(text, 100)
        np.testing.assert_allclose(scores, expected_scores, rtol=1e-6, err_msg=text)
        cut = expected_scores[-1] if len(expected_scores) else 0
        above = expected_scores > cut + 1e-6  # the members tied at the cut may differ, nothing else
        assert set(rows[above].tolist()) == set(expected_rows[above].tolist()), text
    assert not looked_up
    index.small_query_work = 1  # every query is now large for this index
    index.search("red circle", 10)
    assert looked_up


def test_a_count_too_large_for_the_per_image_counts_falls_back_to_the_postings():
    """A common term's per-image counts are uint16: an image repeating it more often than that
    takes the term off them, and its score stays exact."""
    docs = {i: ["red", "circle"] if i % 2 else ["red"] for i in range(1, 2001)}
    index = KeywordIndex()
    index.add(list(docs), list(docs.values()))
    term = index.term_ids["red"]
    assert term in index.dense_counts
    docs[5000] = ["red " * 70_000]
    index.add([5000], [docs[5000]])
    assert term not in index.dense_counts
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE t USING fts5 (keywords, tokenize = 'porter unicode61')")
    db.executemany("INSERT INTO t (rowid, keywords) VALUES (?, ?)", ((i, "\n".join(d)) for i, d in docs.items()))
    rows, scores = index.search("red", 10)  # its count, held exactly, puts it first
    assert rows[0] == 5000
    np.testing.assert_allclose(scores, fts5_top(db, "red", 10), rtol=1e-5)


def test_filter_and_replace():
    index = KeywordIndex()
    index.add([1, 2, 3], [["red circle"], ["red"], ["blue"]])
    assert index.search("red", 10, allowed=np.asarray([2, 3]))[0].tolist() == [2]
    index.add([2], [["green"]])  # row 2 now holds other keywords
    assert index.search("red", 10)[0].tolist() == [1] and index.search("green", 10)[0].tolist() == [2]
    index.remove([1, 2, 3])
    assert len(index) == 0 and index.search("red", 10)[0].tolist() == []


def test_bm25_order_in_one_collection_ignores_another(store):
    """Statistics are per collection: filling collection B leaves A's keyword order as it was."""
    rng = np.random.default_rng(0)
    vectors = unit(rng, 300)
    keyword_sets = [
        [("red", 0.9, 1), ("circle", 0.8, 1), ("photo", 0.5, 1)],
        [("red", 0.9, 1), ("square", 0.8, 1)],
        [("circle", 0.9, 1), ("art", 0.3, 1), ("design", 0.3, 1), ("paper", 0.3, 1)],
        [("red", 0.7, 1), ("circle", 0.6, 1), ("large", 0.6, 1), ("festive", 0.6, 1), ("sale", 0.6, 1)],
    ]
    run(store.upsert("images", [record(i, vectors[i], keywords=k) for i, k in enumerate(keyword_sets)]))
    before = run(store.keyword_search("images", vectors[0], "red circle", 10, Filter()))
    run(store.create_collection("other"))
    flood = [record(100 + i, vectors[10 + i], keywords=[("circle", 0.9, 1)]) for i in range(200)]
    run(store.upsert("other", flood))
    after = run(store.keyword_search("images", vectors[0], "red circle", 10, Filter()))
    assert [h.id for h in before] == [h.id for h in after] == ["img-0", "img-3", "img-1", "img-2"]


def test_candidate_columns_and_their_rescore_request(store):
    rng = np.random.default_rng(1)
    vectors = unit(rng, 3)
    keywords = [("red", 0.9, 1), ("circle", 0.5, 2), ("x" * 65, 0.9, 1), ("", 0.4, 1)]
    run(store.upsert("images", [record(i, vectors[i], keywords=keywords[: i + 2]) for i in range(3)]))
    found = run(store.vector_candidates("images", vectors[2], 3, Filter()))
    assert found.ann_scores[0] == pytest.approx(1.0, abs=1e-5) and found.regions.shape == (3, 36, 128)
    texts = [[found.keyword_texts[j] for j in row if j >= 0] for row in found.keyword_ids]
    assert texts[0] == ["red", "circle"]  # the over-long and empty keywords are never slotted
    request, distinct = columnar_request(vectors[2][None], [found], True, None)
    assert distinct.tolist() == ["circle", "red"] and request.columnar and len(request.ids) == 0
    slots = np.frombuffer(request.keyword_slots.data, "<i4").reshape(3, 32)
    assert slots[0, :3].tolist() == [1, 0, -1] and request.regions.dtype == common_pb2.Tensor.INT8
    about = run(store.describe("images", found.keys[:1]))
    assert about[0].id == "img-2" and about[0].title == "title 2"


def test_schema_3_store_is_migrated_in_place(tmp_path):
    """A store written before the packed slots opens, gains them, and loses nothing."""
    path = tmp_path / "index.sqlite"
    rng = np.random.default_rng(2)
    vectors = unit(rng, 5)

    async def fill():
        index = EmbeddedIndex(path, "images")
        await index.open()
        await index.upsert("images", [record(i, vectors[i]) for i in range(5)])
        await index.close()

    run(fill())
    db = sqlite3.connect(path)  # rewind to schema 3's layout
    db.execute("UPDATE items SET keyword_ids = NULL, keyword_confidences = NULL")
    db.execute("DELETE FROM keyword_dictionary")
    db.execute("CREATE VIRTUAL TABLE item_text USING fts5 (keywords, tokenize = 'porter unicode61')")
    db.execute("UPDATE store_info SET value = '3' WHERE key = 'schema'")
    db.commit()
    db.close()

    async def reopen():
        index = EmbeddedIndex(path, "images")
        await index.open()
        try:
            found = await index.vector_candidates("images", vectors[0], 5, Filter())
            hits = await index.keyword_search("images", vectors[0], "red", 10, Filter())
            return found, hits
        finally:
            await index.close()

    found, hits = run(reopen())
    assert len(found) == 5 and len(hits) == 5
    assert {found.keyword_texts[j] for j in found.keyword_ids[:, 0]} == {"red"}
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM store_info WHERE key = 'schema'").fetchone()[0] == "4"
    assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'item_text'").fetchone()[0] == 0
    assert json.loads(db.execute("SELECT keywords FROM items LIMIT 1").fetchone()[0])[0][0] == "red"


def test_fuse_keys_ranks_like_reciprocal_rank_fusion():
    vector, keyword = np.asarray([1, 2, 3, 4]), np.asarray([3, 5, 1])
    assert fuse_keys(vector, keyword, 3, "rrf").tolist() == [1, 3, 2]
    assert fuse_keys(vector, keyword, 3, "union").tolist() == [1, 2, 3, 4, 5]
    assert fuse_keys(vector, np.asarray([], dtype=np.int64), 2, "rrf").tolist() == [1, 2]
    # a keyword weight scales the keyword ranking's terms: above 160 / 61 its whole list comes first
    assert fuse_keys(np.asarray([1, 2, 3]), np.asarray([4, 5, 6]), 3, "rrf").tolist() == [1, 4, 2]
    assert fuse_keys(np.asarray([1, 2, 3]), np.asarray([4, 5, 6]), 3, "rrf", keyword_weight=3.0).tolist() == [4, 5, 6]


def test_images_without_keywords_count_but_match_nothing():
    index = KeywordIndex()
    index.add([1, 2], [[], ["red"]])
    index.add([3], [[]])
    assert len(index) == 3 and index.search("red", 10)[0].tolist() == [2]


def test_coverage_is_the_known_share_of_the_query():
    """1 when every content word is an indexed term, about 0 when only a word in most images is
    known, in between otherwise; function words count for nothing."""
    index = KeywordIndex()
    index.add(range(1, 101), [["photo", "festive"] if i % 6 == 0 else ["photo", "red"] for i in range(100)])
    assert index.coverage("festive photos") == pytest.approx(1.0)
    assert index.coverage("show me the festive photos") < 1.0  # "show" is unknown, "me" and "the" are not counted
    assert index.coverage("images of the festive photo") == pytest.approx(index.coverage("images festive photo"))
    assert index.coverage("holiday photos") < 0.01  # "photo" is in every image: its idf is the floor
    assert 0.0 < index.coverage("red circle") < 1.0
    assert index.coverage("circle") == 0.0 and index.coverage("") == 0.0
    assert KeywordIndex().coverage("red") == 0.0


def test_keyword_share_coverage_leaves_the_vector_route_the_unknown_part(tmp_path):
    """SEARCH_KEYWORD_SHARE=coverage: the keyword route gives limit x coverage images, full gives limit."""
    rng = np.random.default_rng(2)
    vectors = unit(rng, 40)
    keywords = [[("photo", 0.9, 1), ("red" if i % 8 == 0 else "blue", 0.8, 1)] for i in range(40)]

    async def keys(share: str, text: str) -> list[int]:
        index = EmbeddedIndex(tmp_path / f"{share}.sqlite", "images", keyword_share=share)
        await index.open()
        try:
            await index.upsert("images", [record(i, vectors[i], keywords=keywords[i]) for i in range(40)])
            return (await index.keyword_candidates("images", text, 10, Filter())).tolist()
        finally:
            await index.close()

    assert len(run(keys("full", "red photo"))) == 10
    assert len(run(keys("coverage", "red photo"))) == 10  # both words known
    assert len(run(keys("full", "holiday photo"))) == 10
    assert run(keys("coverage", "holiday photo")) == []  # only the word every image holds is known
    assert 0 < len(run(keys("coverage", "red sofa"))) < 10


def test_named_place_reads_plain_english_positions():
    assert named_place("large red circle top-left") == ("top", "left")
    assert named_place("a red circle in the upper left corner") == ("top", "left")
    assert named_place("circle at the top in the middle") == ("top", "center")
    assert named_place("triangle on the left in the middle") == ("middle", "left")
    assert named_place("in the centre") == ("middle", "center")
    assert named_place("red circle at the top") == ("top", None)
    assert named_place("blue square on the right side") == (None, "right")
    assert named_place("top or bottom, who knows") is None
    assert named_place("festive red circle") is None


def test_placements_put_the_named_place_first():
    """Three images hold a large red circle, one of them at the top-left: a query that names the
    place (in any plain wording) finds it first; one that names a row finds the top-row ones."""
    index = KeywordIndex()
    circle = ["large", "red", "circle"]
    index.add(
        [1, 2, 3, 4],
        [
            circle + [placement_label(a, 4) for a in circle],  # middle-center
            circle + [placement_label(a, 0) for a in circle],  # top-left
            circle + [placement_label(a, 2) for a in circle],  # top-right
            ["blue", "triangle", "photo"],
        ],
    )
    for text in ("large red circle top-left", "a large red circle in the upper left corner", "top left red circles"):
        rows, _ = index.search(text, 4)
        assert rows[0] == 2, text
    rows, _ = index.search("red circle at the top", 4)
    assert set(rows[:2].tolist()) == {2, 3}
    rows, scores = index.search("large red circle", 4)  # no place named: the three tie
    assert rows.tolist() == [1, 2, 3] and len(set(scores.tolist())) == 1


def test_placements_leave_every_other_query_scored_as_before():
    """Placement keywords never count in an image's length: a query that names no place gets the
    same rows and BM25 scores with or without them."""
    rng = random.Random(1)
    attributes = ["red", "blue", "circle", "triangle", "large", "small"]
    docs = [[rng.choice(WORDS) for _ in range(rng.randint(1, 12))] for _ in range(500)]
    placed = [
        d + [placement_label(rng.choice(attributes), rng.randrange(9)) for _ in range(rng.randint(0, 9))] for d in docs
    ]
    plain, with_placements = KeywordIndex(), KeywordIndex()
    plain.add(range(500), docs)
    with_placements.add(range(500), placed)
    for index, texts in ((plain, docs), (with_placements, placed)):  # replaced rows, on both
        index.add(range(0, 500, 7), [texts[i] for i in range(0, 500, 7)])
    for text in ["large blue triangle", "cafe runs", "festive sale photo", "circles", "x"]:
        rows, scores = plain.search(text, 50)
        rows2, scores2 = with_placements.search(text, 50)
        np.testing.assert_allclose(scores2, scores, rtol=1e-6, err_msg=text)
        assert rows2.tolist() == rows.tolist(), text


def test_placements_are_never_rescored():
    keywords = [("red", 0.9, common_pb2.Keyword.AUTO), ("red@top-left", 0.8, common_pb2.Keyword.PLACEMENT)]
    assert usable_keywords(keywords) == [("red", 0.9)]
    assert PLACEMENT == common_pb2.Keyword.PLACEMENT
    assert parse_placement("red@top-left") == ("red", "top", "left")
    assert parse_placement("red@somewhere") is None and parse_placement("red") is None

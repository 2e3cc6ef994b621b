"""The scene corpus: determinism, split hygiene, composed targets, relevance grades, cache."""

import json

import numpy as np
import pytest
from PIL import Image

from models.corpus import (
    CELLS,
    COLORS,
    HELD_OUT_PAIRS,
    KEYWORD_VOCAB,
    SHAPES,
    THEMES,
    Corpus,
    ImageRecord,
    SceneObject,
    apply_modification,
    build_corpus,
    load_or_build_corpus,
    parse_modification,
    scene_key,
    write_image_dir,
)
from models.corpus import build as build_module
from models.corpus.build import SizeConfig
from models.corpus.vocab import NUMBER_WORDS, PLURALS, SIZES
from models.metrics import tfidf_caption_similarity

TINY = SizeConfig(60, 20, 40, 15, 4, 4, 8)


@pytest.fixture()
def tiny(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(build_module.CORPUS_SIZES, "tiny", TINY)
    return "tiny"


@pytest.fixture(scope="module")
def ci() -> Corpus:
    return build_corpus("ci", seed=0)


def _same(a: Corpus, b: Corpus) -> bool:
    return all(
        np.array_equal(x.pixels, y.pixels)
        and x.images == y.images
        and x.text_queries == y.text_queries
        and x.image_queries == y.image_queries
        and x.composed_queries == y.composed_queries
        for x, y in ((a.train, b.train), (a.test, b.test))
    )


def test_same_seed_gives_identical_pixels_and_records(tiny: str) -> None:
    assert _same(build_corpus(tiny, seed=3), build_corpus(tiny, seed=3))
    assert not _same(build_corpus(tiny, seed=3), build_corpus(tiny, seed=4))


def test_cache_round_trip_equals_a_fresh_build(tiny: str, tmp_path) -> None:
    stale = tmp_path / f"{tiny}-1-v0-0123456789"  # an older generator's cache
    stale.mkdir()
    (stale / "records.json").write_text("{}")
    first = load_or_build_corpus(tiny, seed=1, cache_dir=tmp_path)
    assert not stale.exists()
    (cached,) = list(tmp_path.iterdir())
    assert cached.name.startswith(f"{tiny}-1-v{build_module.GENERATOR_VERSION}-")
    assert {p.name for p in cached.iterdir()} == {"pixels.npz", "records.json"}
    second = load_or_build_corpus(tiny, seed=1, cache_dir=tmp_path)
    assert _same(first, second)
    assert _same(second, build_corpus(tiny, seed=1))


def test_unknown_size_is_refused() -> None:
    with pytest.raises(ValueError, match="allowed: ci, demo, full"):
        build_corpus("huge")


def test_images_are_128x128_rgb_with_1_to_5_objects_one_per_cell(ci: Corpus) -> None:
    for split in (ci.train, ci.test):
        assert split.pixels.dtype == np.uint8
        assert split.pixels.shape == (len(split.images), 128, 128, 3)
        for i, r in enumerate(split.images):
            assert split.index_of(r.id) == i
            assert 1 <= len(r.objects) <= 5
            assert len({o.cell for o in r.objects}) == len(r.objects)
            assert r.theme in THEMES
    assert 500 <= len(ci.train.images) <= 700 and 250 <= len(ci.test.images) <= 350


def test_splits_share_no_scene_and_train_lacks_held_out_pairs(ci: Corpus) -> None:
    train_keys = {scene_key(r.objects) for r in ci.train.images}
    test_keys = {scene_key(r.objects) for r in ci.test.images}
    assert not train_keys & test_keys
    assert not {r.label for r in ci.train.images} & {r.label for r in ci.test.images}
    pairs = lambda split: {(o.color, o.shape) for r in split.images for o in r.objects}  # noqa: E731
    assert not pairs(ci.train) & HELD_OUT_PAIRS
    assert pairs(ci.test) >= HELD_OUT_PAIRS


def test_labels_are_shared_exactly_by_identical_scene_graphs(ci: Corpus) -> None:
    for split in (ci.train, ci.test):
        by_key: dict[str, int] = {}
        for r in split.images:
            assert by_key.setdefault(scene_key(r.objects), r.label) == r.label
        assert len(set(by_key.values())) == len(by_key)


def test_composed_targets_are_the_modified_scene(ci: Corpus) -> None:
    for split in (ci.train, ci.test):
        assert len(split.composed_queries) >= 90
        for q in split.composed_queries:
            source = split.images[split.index_of(q.source_id)]
            target = split.images[split.index_of(q.target_id)]
            mod = parse_modification(q.modification)
            assert mod.text == q.modification and mod.kind == q.kind
            assert target.objects == apply_modification(source.objects, mod)
            assert target.label == q.target_label != source.label
    kinds = {q.kind for q in ci.train.composed_queries}
    assert kinds == {"add", "remove", "size", "color", "shape"}


def test_modifications_check_their_preconditions() -> None:
    scene = (SceneObject("circle", "red", "small", 0),)
    with pytest.raises(ValueError):
        apply_modification(scene, parse_modification("remove top-left object"))  # last object
    with pytest.raises(ValueError):
        apply_modification(scene, parse_modification("make top-left object red"))  # no change
    with pytest.raises(ValueError):
        apply_modification(scene, parse_modification("add large blue circle to top-left"))
    grown = apply_modification(scene, parse_modification("make top-left small red circle large"))
    assert grown == (SceneObject("circle", "red", "large", 0),)
    with pytest.raises(ValueError):
        parse_modification("paint everything green")


def test_keywords_follow_the_simulated_tagger(ci: Corpus) -> None:
    images = ci.train.images + ci.test.images
    assert ci.keyword_vocab == list(KEYWORD_VOCAB)
    for r in images:
        words = [k for k, _ in r.noisy_keywords]
        assert len(words) == len(set(words)) <= 32
        assert set(words) <= set(KEYWORD_VOCAB) and not set(words) & set(CELLS)
        assert all(0.0 < c < 1.0 for _, c in r.noisy_keywords)
        assert r.theme in r.true_keywords
    theme_rate = np.mean([r.theme in dict(r.noisy_keywords) for r in images])
    assert 0.74 < theme_rate < 0.86
    assert 0.14 < np.mean([r.corrupted for r in images]) < 0.26


def _attrs(words: list[str]) -> dict[str, str]:
    out = {}
    for w in words:
        for key, values in (("color", COLORS), ("shape", SHAPES), ("size", SIZES)):
            if w in values:
                out[key] = w
    return out


def _best(r: ImageRecord, attrs: dict[str, str]) -> int:
    miss = min(sum(getattr(o, k) != v for k, v in attrs.items()) for o in r.objects)
    return 2 if miss == 0 else 1 if miss == 1 else 0


def _expected_grade(text: str, family: str, r: ImageRecord) -> int:
    """Grades re-derived from the query's words, independent of the generator's specs."""
    words = text.split()
    attrs = _attrs(words)
    theme = next((w for w in words if w in THEMES), None)
    if family == "theme":
        return 2 if r.theme == theme else 0
    if family == "attribute":
        return _best(r, attrs)
    if family == "mixed":
        return int(r.theme == theme) + int(_best(r, attrs) == 2)
    number = next((w for w in words if w in NUMBER_WORDS), None)
    if number is not None:  # count query
        singular = {v: k for k, v in PLURALS.items()}
        key, value = next(
            (k, v)
            for w in words
            for k, v in [("color", w), ("shape", singular.get(w, w))]
            if v in (COLORS if k == "color" else SHAPES)
        )
        count = sum(getattr(o, key) == value for o in r.objects)
        return 2 if count == NUMBER_WORDS.index(number) else 1 if count else 0
    cell = CELLS.index(next(w for w in words if w in CELLS))
    at = [o for o in r.objects if o.cell == cell]
    miss_at = sum(getattr(at[0], k) != v for k, v in attrs.items()) if at else 9
    if miss_at == 0:
        return 2
    return 1 if _best(r, attrs) == 2 or miss_at == 1 else 0


def test_text_query_relevance_matches_the_scene_graph(ci: Corpus) -> None:
    for split in (ci.train, ci.test):
        families = [q.family for q in split.text_queries]
        assert {f: families.count(f) for f in set(families)} == {
            "layout": 25,
            "attribute": 25,
            "theme": 25,
            "mixed": 25,
        }
        for q in split.text_queries:
            assert len(q.candidate_ids) == len(set(q.candidate_ids)) == len(q.relevance) == 50
            assert 2 in q.relevance and 0 in q.relevance
            for cid, rel in zip(q.candidate_ids, q.relevance, strict=True):
                assert rel == _expected_grade(q.text, q.family, split.images[split.index_of(cid)])
        hard = [q for q in split.text_queries if q.family in ("layout", "attribute", "mixed")]
        assert np.mean([1 in q.relevance for q in hard]) > 0.9  # hard negatives are there


def test_image_query_relevance_is_caption_tfidf_cosine(ci: Corpus) -> None:
    split = ci.test
    captions = [r.caption for r in split.images]
    for q in split.image_queries[:20]:
        assert q.image_id not in q.candidate_ids and len(set(q.candidate_ids)) == 50
        cands = [captions[split.index_of(c)] for c in q.candidate_ids]
        query = captions[split.index_of(q.image_id)]
        expected = tfidf_caption_similarity([query], cands, fit_corpus=captions)[0]
        assert np.allclose(q.relevance, expected, atol=1e-6)
        assert max(q.relevance) > 0.5


def test_write_image_dir_writes_pngs_and_metadata(tiny: str, tmp_path) -> None:
    split = build_corpus(tiny).test
    paths = write_image_dir(split, tmp_path / "images")
    assert [p.name for p in paths] == [f"{r.id}.png" for r in split.images]
    assert np.array_equal(np.asarray(Image.open(paths[3])), split.pixels[3])
    lines = [json.loads(x) for x in (tmp_path / "images" / "metadata.jsonl").read_text().splitlines()]
    assert lines[0] == {"id": split.images[0].id, "title": split.images[0].caption, "tags": []}
    assert len(lines) == len(split.images)

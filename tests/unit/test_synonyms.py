"""Query synonyms for the keyword route: the table the export derives from the text model
(models/export/synonyms.py) and the gateway's use of it (search/synonyms.py)."""

from __future__ import annotations

import pytest
from amcsearch.runtime.keywords import PLACE_WORDS
from amcsearch.search.keyword_index import STOPWORDS, KeywordIndex, query_terms, stem
from amcsearch.search.synonyms import expand_query, format_synonyms, parse_synonyms

from models.corpus.build import KEYWORD_VOCAB
from models.export.synonyms import MIN_COSINE, MIN_MARGIN, candidate_words, nearest_vocabulary, select_synonyms

TABLE = {"big": "large", "grey": "gray", "holiday": "festive"}


def test_expansion_keeps_the_query_and_adds_each_synonym_once():
    assert expand_query("big grey disc", TABLE) == "big grey disc large gray"
    assert expand_query("Big BIG circle", TABLE) == "Big BIG circle large"
    assert expand_query("big large circle", TABLE) == "big large circle"  # already asked for
    assert expand_query("red circle", TABLE) == "red circle"
    assert expand_query("big circle", {}) == "big circle"


def test_an_expanded_query_asks_for_the_synonym_at_the_named_place():
    terms = query_terms(expand_query("big red circle in the upper left corner", TABLE))
    assert "larg@top-left" in terms and stem("large") in terms
    assert "big@top-left" in terms  # the query's own word is still asked for


def test_bm25_finds_the_vocabulary_word_through_its_synonym():
    index = KeywordIndex()
    index.add([1, 2, 3], [["large", "red", "circle"], ["small", "red", "circle"], ["festive", "card"]])
    assert index.search("big red circle", 3)[0].tolist()[0] in (1, 2)  # "big" alone: a tie at best
    rows, _ = index.search(expand_query("big red circle", TABLE), 3)
    assert rows.tolist()[0] == 1
    rows, _ = index.search(expand_query("holiday", TABLE), 3)
    assert rows.tolist() == [3]


def test_the_table_text_round_trips_and_skips_malformed_lines():
    text = format_synonyms(TABLE)
    assert text.splitlines()[0] == "big large"
    assert parse_synonyms(text) == TABLE
    assert parse_synonyms("big large\n\nnonsense\na b c\nGrey Gray") == {"big": "large", "grey": "gray"}


VOCABULARY = list(KEYWORD_VOCAB)
"""The keyword tagger's vocabulary, as `make models` exports it."""


def test_candidates_leave_out_vocabulary_stems_stop_words_and_place_words():
    words = candidate_words(VOCABULARY)
    assert len(words) > 10_000  # the text model's whole words
    chosen = set(words)
    assert not chosen & (STOPWORDS | PLACE_WORDS)
    assert not {"circles", "photos", "red", "shapes"} & chosen
    assert {"big", "grey", "crimson"} <= chosen


@pytest.fixture(scope="module")
def text_model():
    from amcsearch.query_encoder.tokenize import Tokenizer

    from models.nets.text_encoder import load_text_encoder

    return load_text_encoder(), Tokenizer.default()


def test_the_text_model_maps_synonyms_and_refuses_other_colours(text_model):
    """The ratio test: "black" is near every colour, "pink" near purple and colorful, so neither
    names one vocabulary word; true synonyms clear both thresholds."""
    words = ["big", "huge", "tiny", "grey", "triangular", "retro", "black", "pink", "crimson", "white"]
    cosines, nearest = nearest_vocabulary(*text_model, VOCABULARY, words)
    table = select_synonyms(words, VOCABULARY, cosines, nearest, MIN_COSINE, MIN_MARGIN)
    assert table == {
        "big": "large",
        "huge": "large",
        "tiny": "small",
        "grey": "gray",
        "triangular": "triangle",
        "retro": "vintage",
    }


def test_the_keyword_route_takes_the_words_as_written_while_the_table_cannot_be_read(caplog):
    """Triton down: no synonyms, a warning and a counted degradation, never a failed Search."""
    import asyncio

    from amcsearch.runtime.errors import Unavailable
    from amcsearch.runtime.metrics import DEGRADATIONS
    from amcsearch.search.pipeline import SearchPipeline

    async def unreadable() -> dict[str, str]:
        raise Unavailable("Triton is not answering")

    async def served() -> dict[str, str]:
        return TABLE

    before = DEGRADATIONS.labels("synonyms")._value.get()
    down = SearchPipeline(None, None, 0.5, synonyms=unreadable)  # type: ignore[arg-type]
    assert asyncio.run(down._synonym_table()) == {}
    assert DEGRADATIONS.labels("synonyms")._value.get() == before + 1
    assert "query synonyms unavailable" in caplog.text
    assert asyncio.run(SearchPipeline(None, None, 0.5, synonyms=served)._synonym_table()) == TABLE  # type: ignore[arg-type]
    assert asyncio.run(SearchPipeline(None, None, 0.5)._synonym_table()) == {}  # type: ignore[arg-type]

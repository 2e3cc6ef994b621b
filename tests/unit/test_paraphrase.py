"""The paraphraser keeps every constraint of a query and is a pure function of (text, seed)."""

import pytest

from models.corpus import load_or_build_corpus
from models.corpus.paraphrase import POSITIONS, SYNONYMS, paraphrase, paraphrased
from models.corpus.vocab import CELLS


@pytest.fixture(scope="module")
def queries():
    return load_or_build_corpus("ci", 0).test.text_queries


def test_same_text_and_seed_give_the_same_paraphrase(queries):
    for q in queries[:50]:
        assert paraphrase(q.text, 3) == paraphrase(q.text, 3)
    assert [paraphrase(q.text, 0) for q in queries] != [paraphrase(q.text, 1) for q in queries]


def test_most_queries_are_reworded(queries):
    changed = sum(paraphrase(q.text, 0) != q.text for q in queries)
    assert changed >= 0.8 * len(queries)


def _words_for(value: str) -> set[str]:
    """The words a paraphrase may use for `value`: itself or one of its synonyms."""
    return {value, *SYNONYMS.get(value, ())}


def test_every_attribute_and_position_survives(queries):
    for q in queries:
        text = paraphrase(q.text, 0)
        for value in q.spec.get("attrs", {}).values():
            assert any(w in text for w in _words_for(value)), (q.text, text)
        if q.spec.get("kind") == "layout":
            spelled = POSITIONS[CELLS[q.spec["cell"]]]
            assert any(s in text for s in spelled), (q.text, text)


def test_paraphrased_queries_keep_candidates_and_relevance(queries):
    for before, after in zip(queries, paraphrased(queries, 0), strict=True):
        assert (after.spec, after.candidate_ids, after.relevance, after.family) == (
            before.spec,
            before.candidate_ids,
            before.relevance,
            before.family,
        )

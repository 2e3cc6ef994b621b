"""Metrics against values computed by hand from METHODS.md's definitions."""

import math

import numpy as np
import pytest

from models.metrics import (
    BM25,
    auc,
    average_precision,
    dcg_at_k,
    ndcg_against_ideal,
    ndcg_at_k,
    pearson,
    precision_at_k,
    r_precision,
    recall_at_k,
    reciprocal_rank,
    tfidf_caption_similarity,
    tokenize,
)


def test_dcg_uses_exponential_gain_and_log2_discount() -> None:
    # (2^2-1)/log2(2) + 0 + (2^1-1)/log2(4) = 3 + 0.5
    assert dcg_at_k([2, 0, 1], 3) == pytest.approx(3.5)


def test_ndcg_normalises_by_the_ideal_ordering() -> None:
    ideal = 3.0 + 1.0 / math.log2(3)
    assert ndcg_at_k([2, 0, 1], 3) == pytest.approx(3.5 / ideal)
    assert ndcg_at_k([2, 1, 0], 3) == pytest.approx(1.0)


def test_ndcg_ideal_comes_from_all_candidates_not_the_top_k() -> None:
    # only the rel-1 item is in the top 1, but a rel-2 item exists further down
    assert ndcg_at_k([1, 0, 2], 1) == pytest.approx(1.0 / 3.0)
    assert ndcg_at_k([0, 0, 2], 1) == 0.0
    assert ndcg_at_k([0, 0, 0], 5) == 0.0


def test_precision_counts_any_positive_relevance() -> None:
    assert precision_at_k([1, 0, 2, 0], 2) == 0.5
    assert precision_at_k([1, 0, 2, 0], 4) == 0.5
    assert precision_at_k([2, 2], 4) == 0.5  # divides by k
    assert r_precision([0, 1, 2, 0]) == 0.5


def test_average_precision_and_reciprocal_rank() -> None:
    assert average_precision([1, 0, 1, 0]) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert average_precision([0, 0]) == 0.0
    assert reciprocal_rank([0, 0, 1]) == pytest.approx(1 / 3)
    assert reciprocal_rank([0, 0]) == 0.0


def test_auc_is_the_fraction_of_correctly_ordered_pairs() -> None:
    assert auc([1, 0, 1, 0]) == pytest.approx(3 / 4)
    assert auc([2, 1, 0, 0]) == 1.0
    assert auc([0, 0, 1]) == 0.0
    assert math.isnan(auc([1, 1]))


def test_recall_at_k_matches_the_label() -> None:
    assert recall_at_k([5, 3, 7], 7, 2) == 0.0
    assert recall_at_k([5, 3, 7], 7, 3) == 1.0
    assert recall_at_k(np.array([7]), 7, 10) == 1.0


def test_pearson() -> None:
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0


def test_bm25_by_hand() -> None:
    docs = [["red", "circle"], ["blue"], ["red", "red", "sale"]]
    scores = BM25(docs).score(["red"])
    idf = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))
    avg = (2 + 1 + 3) / 3
    doc0 = idf * 1 * 2.2 / (1 + 1.2 * (0.25 + 0.75 * 2 / avg))
    doc2 = idf * 2 * 2.2 / (2 + 1.2 * (0.25 + 0.75 * 3 / avg))
    assert scores == pytest.approx([doc0, 0.0, doc2])
    assert BM25(docs).score(["unknown"]).tolist() == [0.0, 0.0, 0.0]
    assert BM25(docs).score(["red"], indices=[2]) == pytest.approx([doc2])


def test_tfidf_caption_similarity_by_hand() -> None:
    assert tokenize("a Red circle at top-left") == ["a", "red", "circle", "at", "top", "left"]
    sims = tfidf_caption_similarity(["a red circle"], ["a red circle", "a red triangle", "a blue square"])
    # fitted on the three documents: idf(red) = ln(4/3)+1, idf(circle) = idf(triangle) = ln(4/2)+1
    r, c = math.log(4 / 3) + 1, math.log(2) + 1
    assert sims.shape == (1, 3)
    assert sims[0, 0] == pytest.approx(1.0)
    assert sims[0, 1] == pytest.approx(r * r / (r * r + c * c))
    assert sims[0, 2] == pytest.approx(0.0)


def test_ndcg_against_ideal_divides_by_the_whole_collection():
    # The returned list holds one grade-2 image of the two the collection has.
    assert ndcg_against_ideal([2, 0], [2, 2, 1], 2) == pytest.approx(3.0 / (3.0 + 3.0 / math.log2(3)))
    assert ndcg_against_ideal([2, 2], [2, 2, 1], 2) == pytest.approx(1.0)
    assert ndcg_against_ideal([1], [0, 0], 5) == 0.0
    # The ideal's order does not matter; a list that is perfect on its own is not.
    assert ndcg_against_ideal([1, 0], [0, 2, 1], 2) < ndcg_at_k([1, 0], 2)

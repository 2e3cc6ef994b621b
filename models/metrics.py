"""Ranking metrics, BM25 and caption tf-idf similarity, as METHODS.md defines them (pure numpy).

Ranked-list metrics take the relevance of the candidates in ranked order (best first), the whole
candidate list, so that the ideal ordering of NDCG is taken over every candidate.

It sits below every other part of models/ and imports none of it: the corpus generator grades
captions with TfIdf, training selects epochs by NDCG, and evaluation reports all of them.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

STOPWORDS: frozenset[str] = frozenset({"a", "an", "the", "and", "at", "of", "in", "on", "to", "with"})


def _rel(relevance: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.asarray(relevance, dtype=np.float64).reshape(-1)


def dcg_at_k(relevance_in_ranked_order: Sequence[float] | np.ndarray, k: int) -> float:
    """DCG@k = sum_{i<=k} (2^rel_i - 1) / log2(i + 1), i from 1."""
    rel = _rel(relevance_in_ranked_order)[:k]
    discounts = np.log2(np.arange(2, rel.size + 2))
    return float(np.sum((np.power(2.0, rel) - 1.0) / discounts))


def ndcg_at_k(relevance_in_ranked_order: Sequence[float] | np.ndarray, k: int) -> float:
    """DCG@k / IDCG@k; IDCG from the ideal ordering of all candidates. 0.0 if nothing is relevant."""
    rel = _rel(relevance_in_ranked_order)
    ideal = dcg_at_k(np.sort(rel)[::-1], k)
    return dcg_at_k(rel, k) / ideal if ideal > 0 else 0.0


def ndcg_against_ideal(
    relevance_in_ranked_order: Sequence[float] | np.ndarray, ideal: Sequence[float] | np.ndarray, k: int
) -> float:
    """NDCG@k of a returned list against `ideal`, the best grades of the whole collection (not of
    the returned list): a Search that misses relevant images scores below 1. 0.0 if none is relevant."""
    best = dcg_at_k(np.sort(_rel(ideal))[::-1], k)
    return dcg_at_k(relevance_in_ranked_order, k) / best if best > 0 else 0.0


def precision_at_k(relevance_in_ranked_order: Sequence[float] | np.ndarray, k: int) -> float:
    """Fraction of the top k with rel > 0 (divides by k, even past the list's end)."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    rel = _rel(relevance_in_ranked_order)[:k]
    return float(np.count_nonzero(rel > 0)) / k


def r_precision(relevance_in_ranked_order: Sequence[float] | np.ndarray) -> float:
    """P@k with k = the number of relevant candidates (rel > 0); 0.0 when there are none."""
    rel = _rel(relevance_in_ranked_order)
    n = int(np.count_nonzero(rel > 0))
    return precision_at_k(rel, n) if n else 0.0


def average_precision(relevance_in_ranked_order: Sequence[float] | np.ndarray) -> float:
    """Mean of P@i over the ranks i of the positives (rel > 0); 0.0 without positives."""
    pos = _rel(relevance_in_ranked_order) > 0
    if not pos.any():
        return 0.0
    hits = np.cumsum(pos)
    ranks = np.arange(1, pos.size + 1)
    return float(np.mean(hits[pos] / ranks[pos]))


def reciprocal_rank(relevance_in_ranked_order: Sequence[float] | np.ndarray) -> float:
    """1 / rank of the first positive (rel > 0); 0.0 without positives."""
    pos = np.flatnonzero(_rel(relevance_in_ranked_order) > 0)
    return 1.0 / (pos[0] + 1) if pos.size else 0.0


def auc(relevance_in_ranked_order: Sequence[float] | np.ndarray) -> float:
    """Fraction of (positive, negative) pairs ranked in the right order, rel > 0 positive.
    NaN when the list has no positive or no negative (average such lists with np.nanmean)."""
    pos = _rel(relevance_in_ranked_order) > 0
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    negatives_below = n_neg - np.cumsum(~pos)  # negatives ranked after each position
    return float(negatives_below[pos].sum()) / (n_pos * n_neg)


def recall_at_k(ranked_labels: Sequence[int] | np.ndarray, target_label: int, k: int) -> float:
    """1.0 when any of the top k results has the target's label (CSS protocol), else 0.0."""
    top = np.asarray(ranked_labels).reshape(-1)[:k]
    return float(np.any(top == target_label))


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Pearson correlation; 0.0 when either side is constant."""
    a, b = _rel(x), _rel(y)
    if a.size != b.size:
        raise ValueError(f"lengths differ: {a.size} vs {b.size}")
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / denom if denom > 0 else 0.0


def tokenize(text: str) -> list[str]:
    """Lower-case alphanumeric runs ('top-left' -> 'top', 'left')."""
    return re.findall(r"[a-z0-9]+", text.lower())


class BM25:
    """Okapi BM25 over keyword lists (k1=1.2, b=0.75, idf = ln(1 + (N - n + 0.5) / (n + 0.5)))."""

    def __init__(self, documents: Sequence[Sequence[str]], k1: float = 1.2, b: float = 0.75):
        self.k1, self.b = k1, b
        self.tfs = [Counter(doc) for doc in documents]
        self.lengths = np.array([len(doc) for doc in documents], dtype=np.float64)
        self.avg_length = float(self.lengths.mean()) if len(documents) else 0.0
        df: Counter[str] = Counter()
        for tf in self.tfs:
            df.update(tf.keys())
        n = len(documents)
        self.idf = {t: math.log(1.0 + (n - c + 0.5) / (c + 0.5)) for t, c in df.items()}

    def score(self, query_tokens: Sequence[str], indices: Sequence[int] | None = None) -> np.ndarray:
        """float64 [len(indices)] (all documents by default); unknown terms add nothing."""
        ids = range(len(self.tfs)) if indices is None else indices
        out = np.zeros(len(ids), dtype=np.float64)
        norm = self.k1 * (1 - self.b + self.b * self.lengths / max(self.avg_length, 1e-9))
        for j, i in enumerate(ids):
            tf = self.tfs[i]
            for t in query_tokens:
                f = tf.get(t, 0)
                if f:
                    out[j] += self.idf[t] * f * (self.k1 + 1) / (f + norm[i])
        return out


class TfIdf:
    """Caption tf-idf: raw term counts x smooth idf ln((1 + N) / (1 + df)) + 1, L2-normalised
    rows; stop words dropped. Cosine of two captions = dot product of their rows."""

    def __init__(self, corpus: Sequence[str]):
        docs = [self._terms(t) for t in corpus]
        vocab = sorted({w for d in docs for w in d})
        self.index = {w: i for i, w in enumerate(vocab)}
        df = np.zeros(len(vocab))
        for d in docs:
            for w in set(d):
                df[self.index[w]] += 1
        self.idf = np.log((1.0 + len(docs)) / (1.0 + df)) + 1.0

    @staticmethod
    def _terms(text: str) -> list[str]:
        return [w for w in tokenize(text) if w not in STOPWORDS]

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        m = np.zeros((len(texts), len(self.index)), dtype=np.float64)
        for r, text in enumerate(texts):
            for w in self._terms(text):
                if w in self.index:
                    m[r, self.index[w]] += 1.0
        m *= self.idf
        norms = np.linalg.norm(m, axis=1, keepdims=True)
        return m / np.where(norms > 0, norms, 1.0)


def tfidf_caption_similarity(
    queries: Sequence[str], documents: Sequence[str], fit_corpus: Sequence[str] | None = None
) -> np.ndarray:
    """float64 [Q, D]: tf-idf cosine of each query caption with each document caption
    (Gordo & Larlus' semantic proxy); idf fitted on `fit_corpus` (default: the documents)."""
    model = TfIdf(documents if fit_corpus is None else fit_corpus)
    return model.transform(queries) @ model.transform(documents).T

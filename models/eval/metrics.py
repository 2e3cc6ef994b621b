"""The metrics under their earlier name: they live in models/metrics.py now, below the corpus
and training code that use them too (neither may import models.eval). Kept for the code written
against models.eval.metrics (models/eval/whole_index.py, benchmarks/served_quality.py); new code
imports models.metrics, and this module goes once nothing imports it."""

from models.metrics import (
    BM25,
    STOPWORDS,
    TfIdf,
    auc,
    average_precision,
    dcg_at_k,
    ndcg_at_k,
    pearson,
    precision_at_k,
    r_precision,
    recall_at_k,
    reciprocal_rank,
    tfidf_caption_similarity,
    tokenize,
)

__all__ = [
    "BM25",
    "STOPWORDS",
    "TfIdf",
    "auc",
    "average_precision",
    "dcg_at_k",
    "ndcg_at_k",
    "pearson",
    "precision_at_k",
    "r_precision",
    "recall_at_k",
    "reciprocal_rank",
    "tfidf_caption_similarity",
    "tokenize",
]

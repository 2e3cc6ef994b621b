"""The query synonym table (services/amcsearch/search/synonyms.py) from the text model alone.

Candidates are the text model's own whole-word tokens (lower-case letters, two or more: about
21,500 words of its WordPiece vocabulary), never the benchmark paraphraser's list. Each candidate
is embedded as a one-word query with the served text model, and maps to the keyword vocabulary's
word nearest to it when two conditions hold:
- its cosine to that word is at least MIN_COSINE;
- it beats the second-nearest vocabulary word by at least MIN_MARGIN: a ratio test in the manner
  of Lowe's SIFT matching. Colour names are close to every other colour ("black" is 0.72 from
  "gray" and 0.69 from "blue"; "pink" 0.74 from "purple" and 0.72 from "colorful"), and a
  synonym must name one vocabulary word, not a neighbourhood of them.

Never mapped: words whose Porter stem is a vocabulary stem ("circles", "sports": BM25's stemming
already finds them), stop words, and words that name a place (the keyword route reads those).
Both thresholds were chosen on validation (held-out TRAIN queries, paraphrase seed 7;
benchmarks/LAYOUT.md's synonym table), never on TEST.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

import torch
from amcsearch.runtime.keywords import PLACE_WORDS
from amcsearch.search.keyword_index import STOPWORDS, stem
from torch import nn

from models.nets.text_encoder import embed_texts, model_dir

log = logging.getLogger(__name__)

MIN_COSINE = 0.55
MIN_MARGIN = 0.10
_CANDIDATE = re.compile(r"[a-z]{2,}")


def candidate_words(vocabulary: list[str]) -> list[str]:
    """The text model's whole-word tokens that could map onto the vocabulary."""
    tokens = json.loads((model_dir() / "tokenizer.json").read_text())["model"]["vocab"]
    known = {stem(word) for entry in vocabulary for word in entry.split()}
    return [
        t
        for t in sorted(tokens)
        if _CANDIDATE.fullmatch(t) and t not in STOPWORDS and t not in PLACE_WORDS and stem(t) not in known
    ]


@torch.no_grad()
def nearest_vocabulary(
    text_encoder: nn.Module, tokenizer: Any, vocabulary: list[str], words: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cosines of the two nearest vocabulary entries [N, 2], index of the nearest [N])."""
    words_emb = embed_texts(text_encoder, words, tokenizer=tokenizer)
    vocabulary_emb = embed_texts(text_encoder, list(vocabulary), tokenizer=tokenizer)
    top = torch.topk(words_emb @ vocabulary_emb.T, 2, dim=1)
    return top.values, top.indices[:, 0]


def select_synonyms(
    words: list[str],
    vocabulary: list[str],
    cosines: torch.Tensor,
    nearest: torch.Tensor,
    min_cosine: float = MIN_COSINE,
    min_margin: float = MIN_MARGIN,
) -> dict[str, str]:
    """word -> vocabulary word where both thresholds hold (multi-word vocabulary entries are
    never targets: a synonym is one word)."""
    keep = (cosines[:, 0] >= min_cosine) & (cosines[:, 0] - cosines[:, 1] >= min_margin)
    table = {}
    for i in torch.nonzero(keep).flatten().tolist():
        target = vocabulary[int(nearest[i])]
        if " " not in target:
            table[words[i]] = target
    return table


def build_synonyms(
    text_encoder: nn.Module,
    tokenizer: Any,
    vocabulary: list[str],
    min_cosine: float = MIN_COSINE,
    min_margin: float = MIN_MARGIN,
) -> dict[str, str]:
    """The table the export writes into the text_encoder's config."""
    started = time.perf_counter()
    words = candidate_words(vocabulary)
    cosines, nearest = nearest_vocabulary(text_encoder, tokenizer, vocabulary, words)
    table = select_synonyms(words, vocabulary, cosines, nearest, min_cosine, min_margin)
    log.info("query synonyms: %d of %d candidate words in %.1fs", len(table), len(words), time.perf_counter() - started)
    return table

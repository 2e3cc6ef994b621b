"""Keyword retrieval for the embedded engine: BM25 over each image's keyword texts, one index per
collection, top-k without scoring every matching image.

Why not SQLite FTS5 any more (docs/decisions/0009-keyword-engine.md has the measurements): its
`bm25()` scores every row that holds any query word before it can sort, so the keyword route grew
with the corpus (120 ms of a 158 ms Search at 100k images), and one FTS5 table per store shared
BM25's statistics between collections.

How: derived state like the vector index, rebuilt from the store at start and kept in step with
every write, all in numpy arrays:
- a forward index (each image's distinct terms and their counts) for exact scores;
- per term and per term count, its postings sorted by image length (shortest first). BM25's term
  weight rises with the count and falls with the length whatever the mean length is, so each
  such list is in descending weight order, and a threshold algorithm (Fagin's TA) can stop as
  soon as the k-th best exact score reaches the best any unseen image could still get.

Scores are those of FTS5's bm25() (k1 = 1.2, b = 0.75, idf = ln((N - n + 0.5) / (n + 0.5)),
floored at 1e-6; the query's words OR'ed, each counted once per distinct word), with N, n and the
mean length counted within the collection.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

import numpy as np
import snowballstemmer

from amcsearch.runtime.keywords import PLACE_WORDS, PLACEMENT_SEPARATOR, named_place, parse_placement

K1 = 1.2
B = 0.75
MIN_IDF = 1e-6
FIRST_BLOCK = 64
"""Postings read per list in the first round of the threshold algorithm (doubling each round)."""
DENSE_SHARE = 0.15
"""When the threshold algorithm has read this share of the query's postings without stopping,
scoring every matching image at once is cheaper (a few array passes over all the postings)."""
_STOPWORD_TEXT = (
    "a about above after again against all am an and any are as at be because been before being below"
    " between both but by can could did do does doing down during each few for from further had has have"
    " having he her here hers herself him himself his how i if in into is it its itself just me more most"
    " my myself no nor not now of off on once only or other our ours ourselves out over own same she"
    " should so some such than that the their theirs them themselves then there these they this those"
    " through to too under until up very was we were what when where which while who whom why will with"
    " would you your yours yourself"
)
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
"""English function words (Snowball's English stop list), left out of KeywordIndex.coverage only: BM25
itself still scores them as FTS5 does."""
_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)
_NOT_PLACED = STOPWORDS | PLACE_WORDS
"""Query words never asked for at the place the query names."""
_STEMMER = snowballstemmer.stemmer("porter")


@lru_cache(maxsize=65536)
def stem(token: str) -> str:
    """Lower-cased, diacritics removed, Porter-stemmed (as FTS5's 'porter unicode61')."""
    folded = "".join(ch for ch in unicodedata.normalize("NFKD", token) if not unicodedata.combining(ch))
    return _STEMMER.stemWord(folded)


@lru_cache(maxsize=65536)
def _text_terms(text: str) -> tuple[str, ...]:
    placement = parse_placement(text)
    if placement is not None:
        attribute, row, column = placement
        return placement_terms(stem(attribute), row, column)
    return tuple(stem(t) for t in _TOKEN.findall(text.lower()))


def placement_terms(attribute: str, row: str | None, column: str | None) -> tuple[str, ...]:
    """The terms of a stemmed attribute at a place: a placement keyword ("red@top-left") is
    indexed under its cell, its row and its column ("red@top-left", "red@top", "red@left"); a
    query asks for the most precise of them that it names."""
    if row is not None and column is not None:
        return (
            f"{attribute}{PLACEMENT_SEPARATOR}{row}-{column}",
            f"{attribute}{PLACEMENT_SEPARATOR}{row}",
            f"{attribute}{PLACEMENT_SEPARATOR}{column}",
        )
    side = row if row is not None else column
    return () if side is None else (f"{attribute}{PLACEMENT_SEPARATOR}{side}",)


def is_placement_term(term: str) -> bool:
    """Placement terms never count in an image's length: BM25 over the other keywords scores
    exactly as it would without them."""
    return PLACEMENT_SEPARATOR in term


def document_terms(texts: Iterable[str]) -> list[str]:
    """Every token of an image's keyword texts, stemmed (repeats kept: they are its length)."""
    return [t for text in texts for t in _text_terms(text)]


def query_terms(text: str) -> list[str]:
    """The query's distinct words longer than one character, stemmed; two words with one stem
    count twice, as two OR'ed FTS5 phrases do. A query that names a place (runtime.keywords
    named_place) also asks for each of its other content words at that place."""
    words = sorted({w for w in _TOKEN.findall(text.lower()) if len(w) > 1})
    terms = [stem(w) for w in words]
    place = named_place(text)
    if place is not None:
        row, column = place
        for word in words:
            if word not in _NOT_PLACED:
                terms.append(placement_terms(stem(word), row, column)[0])
    return terms


class _Column:
    """A growable 1-d array (amortised appends)."""

    def __init__(self, dtype) -> None:
        self.data = np.zeros(16, dtype=dtype)
        self.size = 0

    def extend(self, values: np.ndarray) -> None:
        need = self.size + len(values)
        if need > len(self.data):
            grown = np.zeros(max(need, 2 * len(self.data)), dtype=self.data.dtype)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : need] = values
        self.size = need

    @property
    def view(self) -> np.ndarray:
        return self.data[: self.size]


class _Postings:
    """One term's images with one term count, sorted by image length once read (appends go to
    an unsorted tail merged in at the next query)."""

    def __init__(self) -> None:
        self.docs = _Column(np.int32)
        self.sorted_upto = 0

    def ordered(self, doc_length: np.ndarray) -> np.ndarray:
        if self.sorted_upto != self.docs.size:
            docs = self.docs.view
            order = np.argsort(doc_length[docs], kind="stable")
            self.docs.data[: self.docs.size] = docs[order]
            self.sorted_upto = self.docs.size
        return self.docs.view


class KeywordIndex:
    """BM25 keyword retrieval over one collection's images, keyed by their store row."""

    def __init__(self) -> None:
        self.term_ids: dict[str, int] = {}
        self.postings: dict[tuple[int, int], _Postings] = {}
        """(term id, count in the image) -> postings."""
        self.counts_of_term: dict[int, list[int]] = {}
        """Per term id, the counts it has postings for, in the order they were first seen: a
        query reads its own terms' lists without walking every list of the index."""
        self.doc_row = _Column(np.int64)
        self.doc_length = _Column(np.int32)
        self.doc_alive = _Column(np.bool_)
        self.doc_start = _Column(np.int64)
        self.doc_terms = _Column(np.int32)
        """Per image, how many distinct terms it has in the forward arrays below."""
        self.forward_term = _Column(np.int32)
        self.forward_count = _Column(np.int32)
        self.term_docs: dict[int, _Column] = {}
        """Per term, its images in index order (appends keep it sorted) and their term counts:
        the random access of the threshold algorithm's exact scores."""
        self.term_counts: dict[int, _Column] = {}
        self.doc_of_row: dict[int, int] = {}
        self.df = np.zeros(0, dtype=np.int64)
        self.counts_in_length = np.zeros(0, dtype=np.int64)
        """Per term id: 1 when its occurrences count in an image's length, 0 for placements."""
        self.alive = 0
        self.total_length = 0

    def __len__(self) -> int:
        return self.alive

    # --- writes ----------------------------------------------------------------------------------

    def add(self, rows: Iterable[int], keyword_texts: Iterable[Iterable[str]]) -> None:
        """Index each row's keyword texts (a row already present is replaced). Array work per
        batch; Python only tokenises each distinct keyword text once (cached)."""
        rows = [int(r) for r in rows]
        self.remove(rows)
        terms = [[self._term_id(t) for text in texts for t in _text_terms(text)] for texts in keyword_texts]
        self._add_term_ids(rows, terms)

    def _add_term_ids(self, rows: list[int], terms: list[list[int]]) -> None:
        if not rows:
            return
        first = self.doc_row.size
        sizes = np.asarray([len(t) for t in terms], dtype=np.int64)
        docs = np.repeat(np.arange(first, first + len(rows), dtype=np.int64), sizes)
        flat = np.fromiter((t for ts in terms for t in ts), dtype=np.int64, count=int(sizes.sum()))
        lengths = np.bincount(docs - first, weights=self.counts_in_length[flat], minlength=len(rows)).astype(np.int64)
        width = max(len(self.term_ids), 1)
        pairs, counts = np.unique(docs * width + flat, return_counts=True)  # sorted by doc, then term
        pair_doc, pair_term = pairs // width, (pairs % width).astype(np.int32)
        distinct = np.bincount(pair_doc - first, minlength=len(rows))
        self.doc_row.extend(np.asarray(rows, dtype=np.int64))
        self.doc_length.extend(lengths.astype(np.int32))
        self.doc_alive.extend(np.ones(len(rows), dtype=np.bool_))
        self.doc_start.extend(self.forward_term.size + np.concatenate([[0], np.cumsum(distinct)[:-1]]))
        self.doc_terms.extend(distinct.astype(np.int32))
        self.forward_term.extend(pair_term)
        self.forward_count.extend(counts.astype(np.int32))
        self.doc_of_row.update(zip(rows, range(first, first + len(rows)), strict=True))
        self.alive += len(rows)
        self.total_length += int(lengths.sum())
        if not len(pairs):
            return  # images without keywords: counted, in no postings
        order = np.lexsort((pair_doc, counts, pair_term))
        keys = np.stack([pair_term[order], counts[order]], axis=1)
        bounds = np.flatnonzero(np.any(np.diff(keys, axis=0) != 0, axis=1)) + 1
        for part in np.split(order, bounds):
            key = (int(pair_term[part[0]]), int(counts[part[0]]))
            if key not in self.postings:
                self.postings[key] = _Postings()
                self.counts_of_term.setdefault(key[0], []).append(key[1])
            self.postings[key].docs.extend(pair_doc[part].astype(np.int32))
        by_term = np.lexsort((pair_doc, pair_term))
        edges = np.flatnonzero(np.diff(pair_term[by_term]) != 0) + 1
        for part in np.split(by_term, edges):
            term = int(pair_term[part[0]])
            self.term_docs.setdefault(term, _Column(np.int64)).extend(pair_doc[part])
            self.term_counts.setdefault(term, _Column(np.int32)).extend(counts[part])
        np.add.at(self.df, pair_term, 1)

    def remove(self, rows: Iterable[int]) -> None:
        for row in rows:
            doc = self.doc_of_row.pop(int(row), None)
            if doc is None:
                continue
            self.doc_alive.data[doc] = False
            start, count = int(self.doc_start.data[doc]), int(self.doc_terms.data[doc])
            self.df[self.forward_term.data[start : start + count]] -= 1
            self.alive -= 1
            self.total_length -= int(self.doc_length.data[doc])
        if self.doc_row.size > 1024 and self.alive < self.doc_row.size // 2:
            self._compact()

    def _term_id(self, term: str) -> int:
        term_id = self.term_ids.get(term)
        if term_id is None:
            term_id = self.term_ids[term] = len(self.term_ids)
            if term_id >= len(self.df):
                grow = max(16, len(self.df))
                self.df = np.concatenate([self.df, np.zeros(grow, dtype=np.int64)])
                self.counts_in_length = np.concatenate([self.counts_in_length, np.ones(grow, dtype=np.int64)])
            self.counts_in_length[term_id] = 0 if is_placement_term(term) else 1
        return term_id

    def _compact(self) -> None:
        """Rebuild without the removed images (postings and forward arrays keep them until then)."""
        live = np.flatnonzero(self.doc_alive.view)
        rows = self.doc_row.view[live].tolist()
        terms = []
        for doc in live.tolist():
            start, count = int(self.doc_start.data[doc]), int(self.doc_terms.data[doc])
            ids = self.forward_term.data[start : start + count]
            terms.append(np.repeat(ids, self.forward_count.data[start : start + count]).tolist())
        term_ids, counts_in_length = self.term_ids, self.counts_in_length
        self.__init__()  # type: ignore[misc]
        self.term_ids, self.counts_in_length = term_ids, counts_in_length
        self.df = np.zeros(len(counts_in_length), dtype=np.int64)
        self._add_term_ids(rows, terms)

    # --- reads -----------------------------------------------------------------------------------

    def search(self, text: str, limit: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(rows, BM25 scores) of the best `limit` images for `text`, best first (ties by row);
        `allowed`: the rows a filter lets through (None: every row)."""
        empty = (np.zeros(0, np.int64), np.zeros(0, np.float32))
        weights = self._query_weights(query_terms(text))
        if weights is None or limit <= 0:
            return empty
        return self._threshold_top(weights, limit, self._allowed_mask(allowed))

    def coverage(self, text: str) -> float:
        """How much of the query this collection's keywords know, 0..1: the idf mass of its
        content words that are indexed terms, over that mass plus, for each word never indexed,
        the idf an unseen term would have. A query worded in the keywords' own words gets 1;
        "holiday photos" against keywords that know "photo" (in most images) but not "holiday"
        gets about 0, as BM25 can only answer it with noise."""
        if self.alive == 0:
            return 0.0
        words = {w for w in _TOKEN.findall(text.lower()) if len(w) > 1 and w not in STOPWORDS}
        unseen = float(np.log((self.alive + 0.5) / 0.5))
        known = unknown = 0.0
        for word in words:
            term_id = self.term_ids.get(stem(word))
            if term_id is None or self.df[term_id] <= 0:
                unknown += unseen
                continue
            n = float(self.df[term_id])
            known += max(float(np.log((self.alive - n + 0.5) / (n + 0.5))), MIN_IDF)
        return known / (known + unknown) if known > 0 else 0.0

    def _query_weights(self, terms: list[str]) -> np.ndarray | None:
        """Per term id, idf x the number of the query's words with that stem (0 elsewhere)."""
        if self.alive == 0:
            return None
        weights = np.zeros(len(self.df), dtype=np.float64)
        found = False
        for term in terms:
            term_id = self.term_ids.get(term)
            if term_id is None or self.df[term_id] <= 0:
                continue
            n = float(self.df[term_id])
            idf = np.log((self.alive - n + 0.5) / (n + 0.5))
            weights[term_id] += idf if idf > 0 else MIN_IDF
            found = True
        return weights if found else None

    def _allowed_mask(self, allowed: np.ndarray | None) -> np.ndarray:
        mask = self.doc_alive.view.copy()
        if allowed is not None:
            mask &= np.isin(self.doc_row.view, np.asarray(allowed, dtype=np.int64))
        return mask

    def warm(self) -> None:
        """Sort every postings list now (after a bulk load), not at the next queries."""
        for postings in self.postings.values():
            postings.ordered(self.doc_length.view)

    def _term_weight(self, counts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        mean = self.total_length / self.alive
        return counts * (K1 + 1) / (counts + K1 * (1 - B + B * lengths / mean))

    def _threshold_top(self, weights: np.ndarray, limit: int, eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lengths = self.doc_length.view
        lists = [
            (term, float(weights[term]), count, listed.ordered(lengths))
            for term in np.flatnonzero(weights > 0).tolist()
            for count in self.counts_of_term.get(term, ())
            if (listed := self.postings[(term, count)]).docs.size
        ]
        seen = np.zeros(len(eligible), dtype=np.bool_)
        best_docs = np.zeros(0, np.int64)
        best_scores = np.zeros(0, np.float64)
        depth, block, read = 0, max(FIRST_BLOCK, limit), 0
        postings = sum(len(docs) for _, _, _, docs in lists)
        while True:
            fresh = [docs[depth : depth + block] for _, _, _, docs in lists]
            depth += block
            block *= 2
            new = np.unique(np.concatenate(fresh)) if fresh else np.zeros(0, np.int64)
            new = new[~seen[new]]
            read += len(new)
            if read > postings * DENSE_SHARE:
                return self._dense_top(lists, limit, eligible)  # the threshold would not come soon
            seen[new] = True
            new = new[eligible[new]]
            if len(new):
                scores = self._exact(new, weights)
                best_docs = np.concatenate([best_docs, new])
                best_scores = np.concatenate([best_scores, scores])
                if len(best_docs) > limit:
                    keep = np.argpartition(-best_scores, limit - 1)[:limit]
                    best_docs, best_scores = best_docs[keep], best_scores[keep]
            bound = self._unseen_bound(lists, depth, lengths)
            done = all(depth >= len(docs) for _, _, _, docs in lists)
            if done or (len(best_docs) >= limit and best_scores.min() >= bound):
                break
        rows = self.doc_row.view[best_docs]
        order = np.lexsort((rows, -best_scores))
        return rows[order], best_scores[order].astype(np.float32)

    def _dense_top(self, lists, limit: int, eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every matching image scored at once (np.add.at over the query's postings): the
        threshold algorithm's fallback when the query's words are all common."""
        lengths = self.doc_length.view
        total = np.zeros(len(eligible), dtype=np.float64)
        for _, weight, count, docs in lists:
            total[docs] += weight * self._term_weight(np.asarray(count), lengths[docs])
        candidates = np.flatnonzero((total > 0) & eligible)
        if len(candidates) > limit:
            candidates = candidates[np.argpartition(-total[candidates], limit - 1)[:limit]]
        rows = self.doc_row.view[candidates]
        order = np.lexsort((rows, -total[candidates]))
        return rows[order], total[candidates][order].astype(np.float32)

    def _unseen_bound(self, lists, depth: int, lengths: np.ndarray) -> float:
        """The best score an image not yet read from any list could have: per term, the weight
        of the next image of its best list."""
        heads: dict[int, float] = {}
        for term, weight, count, docs in lists:
            if depth < len(docs):
                w = weight * float(self._term_weight(np.asarray(count), np.asarray(lengths[docs[depth]])))
                heads[term] = max(heads.get(term, 0.0), w)
        return float(sum(heads.values()))

    def _exact(self, docs: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """BM25 of each doc: per query term, its count in the doc by binary search of the
        term's doc-ordered postings."""
        scores = np.zeros(len(docs), dtype=np.float64)
        lengths = self.doc_length.view[docs]
        for term in np.flatnonzero(weights > 0).tolist():
            term_docs = self.term_docs[term].view
            at = np.minimum(np.searchsorted(term_docs, docs), len(term_docs) - 1)
            found = term_docs[at] == docs
            counts = self.term_counts[term].view[at]
            scores += np.where(found, weights[term] * self._term_weight(counts, lengths), 0.0)
        return scores

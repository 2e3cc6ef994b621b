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
  soon as the k-th best exact score reaches the best any unseen image could still get;
- a query with few postings in a small collection is scored densely at once instead (every
  matching image, a few array passes): below SMALL_QUERY_WORK that is the cheaper of the two.

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
DENSE_TERM_SHARE = 1 / 8
"""A term held by at least this share of a collection's images (and by DENSE_TERM_MIN_DOCS) also
gets a count per image (uint16): the threshold algorithm's exact scores look its count up instead
of binary-searching its long postings. On the bench's 100k index (200 of its queries, in process)
the route went from p50 1.3 / mean 2.0 / p90 4.7 ms to 0.9 / 1.3 / 2.8 ms; 107 terms were that
common, 21 MB (214 bytes per image, against ~1 KB per image of postings). No more than
1 / DENSE_TERM_SHARE times an image's distinct terms can be, so the cost is bounded: at most 16
bytes per distinct term of an image. (A share of 1/16 made 182 terms dense for 0.1 ms more.)"""
DENSE_TERM_MIN_DOCS = 1024
SMALL_QUERY_WORK = 24_000
"""A query whose postings plus an eighth of the collection's image slots come to at most this is
scored densely at once (every matching image, a few array passes) instead of by the threshold
algorithm: there the rounds' fixed Python costs outweigh the postings they skip. The dense pass
costs about 23 ns per posting and 3 ns per image slot (its score array) on a 2-core AMD EPYC, and
the threshold algorithm 0.6-1.3 ms whatever the size. Measured in process, the whole route,
on the bench's indexes and their 300 queries (top-100, AMD EPYC Zen 3, two runs): p50 at 1k
images 0.51-0.58 -> 0.37-0.39 ms, at 10k 1.21-1.36 -> 0.73-0.80 ms; with the 10k documents 3 and
10 times over (30k and 100k images, where most queries keep the threshold algorithm) 1.72-1.80 ->
1.53-1.59 ms and 1.93-2.08 -> 1.75-1.86 ms."""
EXACT_AFTER_DENSE = 4
"""After the dense pass over the terms that matter, the images within reach of the top are scored
exactly when they are at most this many times the limit (beyond, ties made them many: adding the
other terms' lists at once is cheaper)."""
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

    small_query_work = SMALL_QUERY_WORK
    """Queries up to this much work are scored densely (SMALL_QUERY_WORK; 0: never)."""

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
        self.dense_counts: dict[int, _Column] = {}
        """Per common term (DENSE_TERM_SHARE), its count in every image by image index (0: absent;
        removed images keep theirs until the next compaction, and are never scored)."""
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
        self._update_dense(pair_doc, pair_term, counts)

    def _update_dense(self, pair_doc: np.ndarray, pair_term: np.ndarray, counts: np.ndarray) -> None:
        """Keep the common terms' per-image counts in step with an add: every column grows to
        the new images, the batch's (image, term, count) of those terms are written, and terms
        that became common get their column from their postings."""
        size = self.doc_row.size
        limit = np.iinfo(np.uint16).max
        for term, column in list(self.dense_counts.items()):
            mine = pair_term == term
            if mine.any() and counts[mine].max() > limit:
                del self.dense_counts[term]  # a count uint16 cannot hold: its postings answer again
                continue
            column.extend(np.zeros(size - column.size, np.uint16))
            column.data[pair_doc[mine]] = counts[mine]
        if size < DENSE_TERM_MIN_DOCS:
            return
        common = np.flatnonzero(self.df >= max(DENSE_TERM_MIN_DOCS, size * DENSE_TERM_SHARE))
        for term in common.tolist():
            if term in self.dense_counts or self.term_counts[term].view.max() > limit:
                continue
            column = _Column(np.uint16)
            column.extend(np.zeros(size, np.uint16))
            column.data[self.term_docs[term].view] = self.term_counts[term].view
            self.dense_counts[term] = column

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
        lists, eligible = _QueryLists(self, weights), self._allowed_mask(allowed)
        if lists.postings + len(eligible) / 8 <= self.small_query_work:
            return self._dense_top(lists, weights, limit, eligible, 0.0)
        return self._threshold_top(lists, weights, limit, eligible)

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

    def _threshold_top(
        self, lists: _QueryLists, weights: np.ndarray, limit: int, eligible: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fagin's threshold algorithm over the query's postings lists, which skips the lists of
        terms that can no longer matter (MaxScore's non-essential terms): once `limit` images
        are scored, a set of terms whose best contributions together stay below the k-th best
        score cannot bring a new image into the top on their own, so their lists are no longer
        read. The images read from the other lists are still scored exactly, every query term
        included. Common words (idf at its floor, or low) fall out after the first round."""
        seen = np.zeros(len(eligible), dtype=np.bool_)
        best_docs = np.zeros(0, np.int64)
        best_scores = np.zeros(0, np.float64)
        block, read = max(FIRST_BLOCK, limit), 0
        kth, active = 0.0, lists.essential(0.0)  # kth: the k-th best score once k are scored
        while True:
            fresh = lists.advance(active, block)
            block *= 2
            new = np.unique(np.concatenate(fresh)) if fresh else np.zeros(0, np.int64)
            new = new[~seen[new]]
            read += len(new)
            if read > lists.postings * DENSE_SHARE:
                return self._dense_top(lists, weights, limit, eligible, kth)  # the threshold would not come soon
            seen[new] = True
            new = new[eligible[new]]
            if len(new):
                scores = self._exact(new, weights)
                best_docs = np.concatenate([best_docs, new])
                best_scores = np.concatenate([best_scores, scores])
                if len(best_docs) > limit:
                    keep = np.argpartition(-best_scores, limit - 1)[:limit]
                    best_docs, best_scores = best_docs[keep], best_scores[keep]
            full = len(best_docs) >= limit
            kth = float(best_scores.min()) if full else 0.0
            active = lists.essential(kth)
            if lists.exhausted(active):
                break  # every image a term that still matters holds is scored
            if full and kth >= lists.unseen_bound():
                break
        rows = self.doc_row.view[best_docs]
        order = np.lexsort((rows, -best_scores))
        return rows[order], best_scores[order].astype(np.float32)

    def _dense_top(
        self, lists: _QueryLists, weights: np.ndarray, limit: int, eligible: np.ndarray, kth: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every matching image scored at once: the threshold algorithm's fallback when the
        query's words are all common. First over the lists that still matter (given the k-th
        best score `kth` found so far); the images that could still reach the top with the
        skipped terms' best contributions are then scored exactly, unless ties make them many
        (then the skipped lists are added at once too)."""
        lengths = self.doc_length.view
        total = np.zeros(len(eligible), dtype=np.float64)

        def add(part: list[int]) -> None:
            for i in part:
                docs = lists.docs[i]
                total[docs] += lists.weights[i] * self._term_weight(np.asarray(lists.counts[i]), lengths[docs])

        active = lists.essential(kth)
        add(active)
        candidates = np.flatnonzero((total > 0) & eligible)
        skipped = lists.skipped_bound(active)
        if skipped > 0:
            if len(candidates) > limit:
                partial = total[candidates]
                cut = np.partition(partial, len(partial) - limit)[len(partial) - limit]
                candidates = candidates[partial >= cut - skipped]
            if len(candidates) <= EXACT_AFTER_DENSE * limit:
                scores = self._exact(candidates, weights)
            else:
                kept = set(active)
                add([i for i in range(len(lists.docs)) if i not in kept])
                candidates = np.flatnonzero((total > 0) & eligible)
                scores = total[candidates]
        else:
            scores = total[candidates]
        if len(candidates) > limit:
            keep = np.argpartition(-scores, limit - 1)[:limit]
            candidates, scores = candidates[keep], scores[keep]
        rows = self.doc_row.view[candidates]
        order = np.lexsort((rows, -scores))
        return rows[order], scores[order].astype(np.float32)

    def _exact(self, docs: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """BM25 of each doc: per query term, its count in the doc, looked up in the term's
        per-image counts when it is common, else by binary search of its doc-ordered postings."""
        scores = np.zeros(len(docs), dtype=np.float64)
        lengths = self.doc_length.view[docs]
        for term in np.flatnonzero(weights > 0).tolist():
            dense = self.dense_counts.get(term)
            if dense is not None:
                counts = dense.data[docs]
                found = counts > 0
            else:
                term_docs = self.term_docs[term].view
                at = np.minimum(np.searchsorted(term_docs, docs), len(term_docs) - 1)
                found = term_docs[at] == docs
                counts = self.term_counts[term].view[at]
            scores += np.where(found, weights[term] * self._term_weight(counts, lengths), 0.0)
        return scores


class _QueryLists:
    """The postings lists of one query's terms (one per term and count, each in descending
    weight order), with how far the threshold algorithm has read each."""

    def __init__(self, index: KeywordIndex, weights: np.ndarray) -> None:
        self.index = index
        self.lengths = index.doc_length.view
        self.terms: list[int] = []
        self.weights: list[float] = []
        self.counts: list[int] = []
        self.docs: list[np.ndarray] = []
        for term in np.flatnonzero(weights > 0).tolist():
            for count in index.counts_of_term.get(term, ()):
                listed = index.postings[(term, count)]
                if listed.docs.size:
                    self.terms.append(term)
                    self.weights.append(float(weights[term]))
                    self.counts.append(count)
                    self.docs.append(listed.ordered(self.lengths))
        self.depth = [0] * len(self.docs)
        self.postings = sum(len(docs) for docs in self.docs)
        best: dict[int, float] = {}
        for i, term in enumerate(self.terms):
            best[term] = max(best.get(term, 0.0), self.head(i, 0))
        self.term_best = best
        """Per term, the most it adds to any image's score."""
        self.by_best = sorted(best, key=best.__getitem__)

    def head(self, i: int, at: int) -> float:
        """The weight of list i's image at position `at` (0 past its end)."""
        docs = self.docs[i]
        if at >= len(docs):
            return 0.0
        length = np.asarray(self.lengths[docs[at]])
        return self.weights[i] * float(self.index._term_weight(np.asarray(self.counts[i]), length))

    def essential(self, kth: float) -> list[int]:
        """The lists of the terms that can still bring an image into the top: leave out the
        largest set of least-weighted terms whose best contributions sum below `kth`."""
        skipped: set[int] = set()
        total = 0.0
        for term in self.by_best:
            total += self.term_best[term]
            if total >= kth:
                break
            skipped.add(term)
        return [i for i, term in enumerate(self.terms) if term not in skipped]

    def skipped_bound(self, active: list[int]) -> float:
        """The most the terms without a list in `active` add to any image's score."""
        kept = {self.terms[i] for i in active}
        return float(sum(best for term, best in self.term_best.items() if term not in kept))

    def advance(self, active: list[int], block: int) -> list[np.ndarray]:
        """The next `block` images of each active list."""
        fresh = []
        for i in active:
            fresh.append(self.docs[i][self.depth[i] : self.depth[i] + block])
            self.depth[i] += block
        return fresh

    def exhausted(self, active: list[int]) -> bool:
        return all(self.depth[i] >= len(self.docs[i]) for i in active)

    def unseen_bound(self) -> float:
        """The best score an image not yet read from any list could have: per term, the weight
        of the next image of its best list (each list at its own depth)."""
        heads: dict[int, float] = {}
        for i, term in enumerate(self.terms):
            heads[term] = max(heads.get(term, 0.0), self.head(i, self.depth[i]))
        return float(sum(heads.values()))

"""Keyword engines side by side: BM25 top-100 over synthetic keyword documents at 10k, 100k and 1M.

    python -m benchmarks.keyword_engines [--sizes 10k,100k,1m] [--out benchmarks/KEYWORD_ENGINES.md]

Documents are drawn like the corpus's images (models/corpus/vocab.py): 1-3 objects (size, colour,
shape, grid cell), 0-2 themes and 3-10 distractor words; queries like its text queries. Every
engine answers the same 200 queries with a top-100 (what a hybrid Search asks of the keyword
route); p50 / p99 per query, build time, and whether its top-100 scores agree with FTS5's bm25()
(today's engine, the reference). Engines:
- fts5: SQLite FTS5 'porter unicode61', ORDER BY bm25() LIMIT 100, with a collection filter as
  the store runs it;
- tantivy: tantivy-py, RAM index, en_stem tokenizer (block-max WAND top-k);
- bm25s: bm25s with its numpy backend (a static sparse matrix: no incremental updates);
- numpy-dense: the keyword index's own arrays, every matching image scored;
- amcsearch: services/amcsearch/search/keyword_index.py (threshold algorithm, MaxScore, per-image
  counts of common terms).

tantivy and bm25s are not dependencies of the project: `pip install tantivy bm25s` into the venv
to compare them; without them their rows say so and the other engines still run.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import time
from pathlib import Path

import numpy as np
from amcsearch.search.keyword_index import KeywordIndex, query_terms

from models.corpus.vocab import CELLS, COLORS, DISTRACTORS, SHAPES, SIZES, THEMES

LIMIT = 100
QUERIES = 200


def documents(count: int, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    docs = []
    for _ in range(count):
        words: list[str] = []
        for _ in range(rng.randint(1, 3)):
            words += [rng.choice(SIZES), rng.choice(COLORS), rng.choice(SHAPES), rng.choice(CELLS)]
        words += rng.sample(THEMES, rng.randint(0, 2)) + rng.sample(DISTRACTORS, rng.randint(3, 10))
        docs.append(list(dict.fromkeys(words)))
    return docs


def queries(count: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    forms = [
        lambda: f"{rng.choice(COLORS)} {rng.choice(SHAPES)}",
        lambda: f"{rng.choice(SIZES)} {rng.choice(COLORS)} {rng.choice(SHAPES)} {rng.choice(CELLS)}",
        lambda: f"{rng.choice(THEMES)} {rng.choice(COLORS)} {rng.choice(SHAPES)}",
        lambda: f"{rng.choice(SHAPES)} at the {rng.choice(CELLS)}",
    ]
    return [rng.choice(forms)() for _ in range(count)]


def timed(function, items) -> tuple[list[float], list]:
    latencies, answers = [], []
    for item in items:
        start = time.perf_counter()
        answers.append(function(item))
        latencies.append(time.perf_counter() - start)
    return latencies, answers


class Fts5:
    name = "fts5"

    def __init__(self, docs: list[list[str]]) -> None:
        self.db = sqlite3.connect(":memory:")
        self.db.executescript(
            "CREATE TABLE items (row INTEGER PRIMARY KEY, collection TEXT);"
            "CREATE VIRTUAL TABLE item_text USING fts5 (keywords, tokenize = 'porter unicode61');"
        )
        with self.db:
            self.db.executemany("INSERT INTO items VALUES (?, 'c')", ((i,) for i in range(1, len(docs) + 1)))
            self.db.executemany(
                "INSERT INTO item_text (rowid, keywords) VALUES (?, ?)",
                ((i, "\n".join(d)) for i, d in enumerate(docs, 1)),
            )

    def search(self, text: str) -> np.ndarray:
        words = sorted({w for w in text.lower().replace("-", " ").split() if len(w) > 1})
        match = " OR ".join(f'"{w}"' for w in words)
        rows = self.db.execute(
            "SELECT -bm25(item_text) FROM item_text WHERE item_text MATCH ? AND +rowid IN "
            "(SELECT row FROM items WHERE collection = 'c') ORDER BY bm25(item_text) LIMIT ?",
            (match, LIMIT),
        ).fetchall()
        return np.asarray([r[0] for r in rows])


class Tantivy:
    name = "tantivy"

    def __init__(self, docs: list[list[str]]) -> None:
        import tantivy

        builder = tantivy.SchemaBuilder()
        builder.add_text_field("keywords", stored=False, tokenizer_name="en_stem")
        builder.add_integer_field("row", stored=True, indexed=True, fast=True)
        self.schema = builder.build()
        self.index = tantivy.Index(self.schema)
        writer = self.index.writer(heap_size=200_000_000, num_threads=1)
        for i, d in enumerate(docs, 1):
            writer.add_document(tantivy.Document(keywords="\n".join(d), row=i))
        writer.commit()
        writer.wait_merging_threads()
        self.index.reload()
        self.searcher = self.index.searcher()

    def search(self, text: str) -> np.ndarray:
        words = sorted({w for w in text.lower().replace("-", " ").split() if len(w) > 1})
        query = self.index.parse_query(" OR ".join(words), ["keywords"])
        hits = self.searcher.search(query, LIMIT).hits
        return np.asarray([score for score, _ in hits])


class Bm25s:
    name = "bm25s"

    def __init__(self, docs: list[list[str]]) -> None:
        import bm25s

        self.retriever = bm25s.BM25(k1=1.2, b=0.75, method="lucene", backend="numpy")
        tokens = bm25s.tokenize(["\n".join(d) for d in docs], stopwords=None, show_progress=False)
        self.retriever.index(tokens, show_progress=False)
        self.vocab = tokens.vocab

    def search(self, text: str) -> np.ndarray:
        import bm25s

        tokens = bm25s.tokenize([text], stopwords=None, show_progress=False, return_ids=False)
        _, scores = self.retriever.retrieve(tokens, k=LIMIT, show_progress=False, n_threads=1)
        return scores[0]


class Ours:
    name = "amcsearch"

    def __init__(self, docs: list[list[str]]) -> None:
        self.index = KeywordIndex()
        self.index.add(range(1, len(docs) + 1), docs)
        self.index.warm()

    def search(self, text: str) -> np.ndarray:
        return self.index.search(text, LIMIT)[1]


class Dense(Ours):
    """The same arrays, every matching image scored (np.bincount over the postings)."""

    name = "numpy-dense"

    def search(self, text: str) -> np.ndarray:
        index = self.index
        weights = index._query_weights(query_terms(text))
        if weights is None:
            return np.zeros(0)
        lengths = index.doc_length.view
        total = np.zeros(index.doc_row.size)
        for (term, count), postings in index.postings.items():
            if weights[term] > 0:
                docs = postings.docs.view
                total[docs] += weights[term] * index._term_weight(np.asarray(count), lengths[docs])
        total[~index.doc_alive.view] = 0
        top = np.argpartition(-total, LIMIT)[:LIMIT]
        return np.sort(total[top])[::-1]


ENGINES = (Fts5, Tantivy, Bm25s, Dense, Ours)


def parse_size(text: str) -> int:
    text = text.strip().lower()
    factor = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("km")) * factor)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10k,100k,1m")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("KEYWORD_ENGINES.md"))
    parser.add_argument("--queries", type=int, default=QUERIES)
    args = parser.parse_args(argv)
    import os

    lines = [
        "# Keyword engines side by side",
        "",
        f"`python -m benchmarks.keyword_engines --sizes {args.sizes}`; load average at the start: "
        + ", ".join(f"{x:.2f}" for x in os.getloadavg())
        + f"; {args.queries} queries, top-{LIMIT} each, one thread. 'agrees' = the engine's top-{LIMIT} "
        "scores equal FTS5 bm25()'s to 1e-4 (tantivy and bm25s tokenise and weigh a little differently).",
        "",
        "| documents | engine | build | p50 | p99 | agrees with FTS5 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    texts = queries(args.queries)
    for size in (parse_size(s) for s in args.sizes.split(",")):
        docs = documents(size)
        reference = None
        for engine_class in ENGINES:
            start = time.perf_counter()
            try:
                engine = engine_class(docs)
            except ModuleNotFoundError as missing:  # tantivy and bm25s are for this comparison only
                line = f"| {size:,} | {engine_class.name} | not installed (`pip install {missing.name}`) | | | |"
                print(line, flush=True)
                lines.append(line)
                continue
            build = time.perf_counter() - start
            engine.search(texts[0])
            latencies, answers = timed(engine.search, texts)
            if engine_class is Fts5:
                reference = answers
            agree = all(
                len(a) == len(r) and np.allclose(np.sort(a), np.sort(r), rtol=1e-4)
                for a, r in zip(answers, reference or answers, strict=True)
            )
            p50 = statistics.median(latencies) * 1000
            p99 = float(np.percentile(latencies, 99)) * 1000
            line = f"| {size:,} | {engine.name} | {build:.1f} s | {p50:.2f} ms | {p99:.2f} ms | {'yes' if agree else 'no'} |"
            print(line, flush=True)
            lines.append(line)
            del engine
    args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`make check-index`: verify an embedded index against itself and report.

    python -m amcsearch.search.check_index --uri var/index.sqlite [--accept-loss]

Read-only (it may run beside a gateway serving the same file), except with --accept-loss, which
records the store's own generation as the acknowledged one, so that a store that lost writes can
be served as it is. Checks:
- SQLite's own integrity check of every page;
- the store's write generation against the one recorded beside it (lost acknowledged writes);
- every item's feature blobs have their sizes, its keyword and metadata rows match its record;
- no keyword or metadata row belongs to no item; every item's collection exists;
- every derived file beside it (the HNSW snapshots) names this store, its collection and a
  generation not ahead of it, and has the bytes its checksum says (derived.py); for each one
  that does, the recall@10 of its graph (patched to the store's rows, as the gateway would)
  against exact search, sampled over stored vectors: a figure, not a verdict (it depends on
  the data; a rebuilt graph would score the same).
A file that is not an SQLite store, or whose pages are damaged, is reported as such.
Exit status 0 when everything holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from amcsearch.runtime import contract as c
from amcsearch.search import derived
from amcsearch.search.embedded_index import GENERATION_SUFFIX, SHOP_SNAPSHOT, read_generation, write_generation
from amcsearch.search.records import Shop
from amcsearch.search.vector_index import VectorIndex

EMBEDDING_BYTES = 4 * c.EMBEDDING_DIM
REGION_BYTES = c.REGION_COUNT * c.REGION_DIM
SCALE_BYTES = 4 * c.REGION_COUNT
RECALL_SAMPLES = 100


def check(path: Path) -> tuple[list[str], list[str]]:
    """(findings that are problems, facts), for the store at `path`."""
    problems: list[str] = []
    facts: list[str] = []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as error:
        return [f"the store cannot be opened: {error}"], facts
    try:
        _check_store(path, db, problems, facts)
        _check_derived(path, db, problems, facts)
    except sqlite3.DatabaseError as error:
        problems.append(f"the store cannot be read ({error}): it is damaged or not an amcsearch index")
    finally:
        db.close()
    return problems, facts


def _check_store(path: Path, db: sqlite3.Connection, problems: list[str], facts: list[str]) -> None:
    integrity = [line for row in db.execute("PRAGMA integrity_check") for line in str(row[0]).splitlines()]
    if integrity != ["ok"]:
        problems.extend(f"sqlite integrity: {line}" for line in integrity[:20])
        if len(integrity) > 20:
            problems.append(f"sqlite integrity: {len(integrity) - 20} more findings")
    generation = store_generation(db)
    recorded = read_generation(path.with_name(path.name + GENERATION_SUFFIX))
    facts.append(f"write generation {generation}, acknowledged {recorded}")
    if recorded is not None and recorded > generation:
        problems.append(f"{recorded - generation} acknowledged writes are missing from the store")
    collections = {row[0] for row in db.execute("SELECT name FROM collections")}
    for name, count in db.execute("SELECT collection, count(*) FROM items GROUP BY collection"):
        facts.append(f"collection {name}: {count} items")
        if name not in collections:
            problems.append(f"{count} items belong to collection {name}, which does not exist")
    problems.extend(_item_problems(db))
    for table in ("item_keywords", "item_metadata"):
        orphans = db.execute(f"SELECT count(*) FROM {table} WHERE row NOT IN (SELECT row FROM items)").fetchone()[0]
        if orphans:
            problems.append(f"{orphans} rows of {table} belong to no item")


def _check_derived(path: Path, db: sqlite3.Connection, problems: list[str], facts: list[str]) -> None:
    """Each HNSW snapshot beside the store: its record against the store, then its recall."""
    info = dict(db.execute("SELECT key, value FROM store_info").fetchall())
    generation = int(info.get("generation", 0))
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchone()
    max_row = int(row[0]) if row else 0
    for name in sorted(r[0] for r in db.execute("SELECT name FROM collections")):
        for snapshot, load in (
            (path.with_name(f"{path.name}.{name}.hnsw"), _embeddings),
            (path.with_name(f"{path.name}.{name}.{SHOP_SNAPSHOT}"), _shop_vectors),
        ):
            if not snapshot.exists():
                continue
            source, why = derived.verify(snapshot, info.get("store_id", ""), name, generation, max_row)
            if source is None:
                problems.append(f"{snapshot.name} disagrees with the store: {why} (the gateway rebuilds it at start)")
                continue
            index = load(db, name)
            if not index.restore_graph(snapshot, source.rows):
                problems.append(f"{snapshot.name} matches its record but its graph is not the store's")
                continue
            recall = index.graph_recall(samples=RECALL_SAMPLES)
            facts.append(
                f"{snapshot.name}: {index.count} vectors, recall@10 against exact search "
                f"{recall if recall is None else round(recall, 3)} over {min(RECALL_SAMPLES, index.count)} "
                f"sampled queries (snapshot at write {source.generation}, store at {generation})"
            )


def _embeddings(db: sqlite3.Connection, collection: str) -> VectorIndex:
    query = "SELECT row, embedding FROM items WHERE collection = ? ORDER BY row"
    return _vectors(db, query, collection, c.EMBEDDING_DIM, lambda blob: np.frombuffer(blob, dtype="<f4"))


def _shop_vectors(db: sqlite3.Connection, collection: str) -> VectorIndex:
    query = (
        "SELECT s.row, s.features FROM item_shop s JOIN items i ON i.row = s.row WHERE i.collection = ? ORDER BY s.row"
    )
    return _vectors(db, query, collection, c.YNET_DIM, lambda blob: Shop.unpack(blob).embedding)


def _vectors(
    db: sqlite3.Connection, query: str, collection: str, dim: int, vector_of: Callable[[bytes], np.ndarray]
) -> VectorIndex:
    index = VectorIndex(dim, hnsw_min_rows=0, ef_search=256)
    rows = db.execute(query, (collection,)).fetchall()
    if rows:
        index.add(np.asarray([r[0] for r in rows]), np.stack([vector_of(r[1]) for r in rows]), build_graph=False)
    return index


def store_generation(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT value FROM store_info WHERE key = 'generation'").fetchone()
    return int(row[0]) if row else 0  # a store from before generations were counted


def _item_problems(db: sqlite3.Connection) -> list[str]:
    problems = []
    keyword_rows: dict[int, set[str]] = {}
    for row, text in db.execute("SELECT row, text FROM item_keywords"):
        keyword_rows.setdefault(row, set()).add(text)
    metadata_rows: dict[int, dict[str, str]] = {}
    for row, key, value in db.execute("SELECT row, key, value FROM item_metadata"):
        metadata_rows.setdefault(row, {})[key] = value
    query = (
        "SELECT row, collection, id, length(embedding), length(regions), length(region_scales), keywords, metadata "
        "FROM items"
    )
    for row, collection, image_id, embedding, regions, scales, keywords, metadata in db.execute(query):
        where = f"item {image_id!r} of {collection}"
        if (embedding, regions, scales) != (EMBEDDING_BYTES, REGION_BYTES, SCALE_BYTES):
            problems.append(
                f"{where}: feature blobs of {embedding}/{regions}/{scales} bytes, "
                f"expected {EMBEDDING_BYTES}/{REGION_BYTES}/{SCALE_BYTES}"
            )
        try:
            texts = {k[0] for k in json.loads(keywords)}
            pairs = json.loads(metadata)
        except (ValueError, TypeError, IndexError):
            problems.append(f"{where}: keywords or metadata are not the JSON the engine writes")
            continue
        if texts != keyword_rows.get(row, set()):
            problems.append(f"{where}: its keyword filter rows do not match its keywords")
        if pairs != metadata_rows.get(row, {}):
            problems.append(f"{where}: its metadata filter rows do not match its metadata")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", type=Path, default=Path("var/index.sqlite"), help="the embedded index file")
    parser.add_argument(
        "--accept-loss",
        action="store_true",
        help="record the store's own generation as acknowledged (serve it as it is)",
    )
    args = parser.parse_args(argv)
    if not args.uri.exists():
        print(f"no index at {args.uri}", file=sys.stderr)
        return 1
    problems, facts = check(args.uri)
    for fact in facts:
        print(f"  {fact}")
    for problem in problems:
        print(f"PROBLEM {problem}")
    if args.accept_loss:
        if any(p.startswith("the store cannot be") for p in problems):
            print(f"{len(problems)} problems: a store that cannot be read cannot be accepted")
            return 1
        db = sqlite3.connect(f"file:{args.uri}?mode=ro", uri=True)
        generation = store_generation(db)
        db.close()
        write_generation(args.uri.with_name(args.uri.name + GENERATION_SUFFIX), generation)
        print(f"accepted: generation {generation} recorded as acknowledged")
        problems = [p for p in problems if "acknowledged writes are missing" not in p]
    print("index OK" if not problems else f"{len(problems)} problems")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())

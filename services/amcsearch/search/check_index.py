"""`make check-index`: verify an embedded index against itself and report.

    python -m amcsearch.search.check_index --uri var/index.sqlite [--accept-loss]

Read-only (it may run beside a gateway serving the same file), except with --accept-loss, which
records the store's own generation as the acknowledged one, so that a store that lost writes can
be served as it is. Checks:
- SQLite's own integrity check of every page;
- the store's write generation against the one recorded beside it (lost acknowledged writes);
- every item's feature blobs have their sizes, its keyword and metadata rows match its record;
- no keyword or metadata row belongs to no item; every item's collection exists.
Exit status 0 when everything holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path

from amcsearch.runtime import contract as c
from amcsearch.search.embedded_index import GENERATION_SUFFIX, read_generation, write_generation

EMBEDDING_BYTES = 4 * c.EMBEDDING_DIM
REGION_BYTES = c.REGION_COUNT * c.REGION_DIM
SCALE_BYTES = 4 * c.REGION_COUNT


def check(path: Path) -> tuple[list[str], list[str]]:
    """(findings that are problems, facts), for the store at `path`."""
    problems: list[str] = []
    facts: list[str] = []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        integrity = [row[0] for row in db.execute("PRAGMA integrity_check")]
        if integrity != ["ok"]:
            problems.extend(f"sqlite integrity: {line}" for line in integrity[:20])
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
    finally:
        db.close()
    return problems, facts


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

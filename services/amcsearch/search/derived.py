"""Files derived from the store of record (HNSW graph snapshots today): verified, never trusted.

Each derived file has a sidecar, `<file>.source`, that says what it was derived from (the
store's identity, the collection, the store's write generation and highest row id at the time)
and the sha256 of its bytes. A reader checks both against the store as it is now before using
the file; any disagreement means "rebuild from the store", with the reason logged.

Why: a snapshot is only ever a shortcut. A damaged one (bytes overwritten, a torn copy) or one
left beside a different store (the store deleted and created again: row ids start over and
collide) gives wrong answers without an error, which is worse than the minutes a rebuild costs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

SIDECAR_SUFFIX = ".source"
FORMAT = 1


@dataclass(frozen=True)
class Source:
    """What a derived file was derived from."""

    store_id: str
    """The store's identity (store_info 'store_id', a UUID written when the store was created)."""
    collection: str
    generation: int
    """The store's write generation when the file was written."""
    max_row: int
    """The highest row id the store had issued then (row ids are never reused within a store)."""
    rows: int
    """How many rows the file holds."""


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def save(path: Path, write: Callable[[Path], None], source: Source) -> None:
    """`write(temporary path)`, then the file and its sidecar put in place durably (fsynced,
    renamed). A crash between the two renames leaves a sidecar whose checksum disagrees."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    digest, size = checksum(tmp)
    _fsync(tmp)
    os.replace(tmp, path)
    record = {"format": FORMAT, **asdict(source), "bytes": size, "sha256": digest}
    side = sidecar_path(path)
    side_tmp = side.with_name(side.name + ".tmp")
    side_tmp.write_text(json.dumps(record, sort_keys=True) + "\n")
    _fsync(side_tmp)
    os.replace(side_tmp, side)


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    sidecar_path(path).unlink(missing_ok=True)


def verify(path: Path, store_id: str, collection: str, generation: int, max_row: int) -> tuple[Source | None, str]:
    """(the file's Source, "") when `path` may be used with the store as it is now (the same
    store and collection, not ahead of it, its bytes as written); else (None, why not)."""
    try:
        record = json.loads(sidecar_path(path).read_text())
        source = Source(**{name: record[name] for name in Source.__dataclass_fields__})
        expected = (int(record["bytes"]), str(record["sha256"]))
    except FileNotFoundError:
        return None, "it has no record of what it was derived from"
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None, "the record of what it was derived from is unreadable"
    if source.store_id != store_id:
        return None, f"it was derived from another store ({source.store_id}, this store is {store_id})"
    if source.collection != collection:
        return None, f"it was derived from collection {source.collection!r}, not {collection!r}"
    if source.generation > generation:
        return None, f"it reflects write {source.generation}, the store is at write {generation}"
    if source.max_row > max_row:
        return None, f"it holds row ids up to {source.max_row}, the store has issued only {max_row}"
    try:
        actual = checksum(path)
    except OSError as error:
        return None, f"it cannot be read ({error.strerror})"
    if (actual[1], actual[0]) != expected:
        return None, "its bytes do not match their checksum (the file is damaged)"
    return source, ""


def checksum(path: Path) -> tuple[str, int]:
    """(sha256 hex digest, size in bytes) of a file."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _fsync(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())

"""The one text normaliser: keywords, tags, keyword filters and query texts all pass through it,
so that what is stored, filtered, cached and embedded agrees."""

from __future__ import annotations

import re


def normalize_keyword(text: str) -> str:
    """Trim, collapse every run of whitespace to one space, lower-case ("Red  Circle" -> "red circle").

    The text model is uncased (its BertNormalizer lowercases), so this never changes an embedding.
    """
    return " ".join(text.split()).lower()


# --- placements: what the tagger saw where ---------------------------------------------------------
#
# Besides its keywords, the keyword tagger says where things are: for each cell of a 3 x 3 grid,
# which colours, shapes and sizes it sees there. Each such placement is stored as a keyword of
# source PLACEMENT whose text is "<attribute>@<row>-<column>" ("red@top-left"). The keyword route
# indexes it under three terms (the cell, its row and its column), and a query that names a place
# ("red circle top left", "a red circle in the upper left corner") asks for those terms, so the
# images with the right object in the right place come first among the keyword candidates. Only
# the keyword route reads placements: the rescorer's keyword slots leave them out.

PLACEMENT_SEPARATOR = "@"
ROWS: tuple[str, ...] = ("top", "middle", "bottom")
COLUMNS: tuple[str, ...] = ("left", "center", "right")
CELL_NAMES: tuple[str, ...] = tuple(f"{row}-{column}" for row in ROWS for column in COLUMNS)
"""The 3 x 3 grid's cells, row-major: the tagger's placement order (placements.txt)."""

_ROW_WORDS = {"top": "top", "upper": "top", "above": "top", "bottom": "bottom", "lower": "bottom", "below": "bottom"}
_COLUMN_WORDS = {"left": "left", "leftmost": "left", "right": "right", "rightmost": "right"}
_MIDDLE_WORDS = frozenset({"middle", "center", "centre", "central", "centered", "centred", "mid"})
WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
"""A word of a query as the place reader and the query synonyms see it: letters only."""


def placement_label(attribute: str, cell: int) -> str:
    """'red@top-left' for attribute 'red' in cell 0 (row-major 3 x 3)."""
    return f"{attribute}{PLACEMENT_SEPARATOR}{CELL_NAMES[cell]}"


def parse_placement(text: str) -> tuple[str, str, str] | None:
    """(attribute, row, column) of a placement text, None for any other keyword."""
    attribute, separator, cell = text.partition(PLACEMENT_SEPARATOR)
    row, dash, column = cell.partition("-")
    if not separator or not dash or not attribute or row not in ROWS or column not in COLUMNS:
        return None
    return attribute, row, column


def named_place(query: str) -> tuple[str | None, str | None] | None:
    """The place a query names, as (row, column) with None for a side it leaves open, or None
    when it names none or contradicts itself ("top ... bottom").

    Plain English, not the benchmark's wording: top/upper/above and bottom/lower/below name a row,
    left/right a column, middle/center/centre the middle of whichever side is not named
    ("at the top in the middle" is top-center, "on the left in the middle" middle-left, "in the
    center" alone middle-center); "at the top" alone is the whole top row.
    """
    words = [w.lower() for w in WORD.findall(query)]
    rows = {_ROW_WORDS[w] for w in words if w in _ROW_WORDS}
    columns = {_COLUMN_WORDS[w] for w in words if w in _COLUMN_WORDS}
    middle = any(w in _MIDDLE_WORDS for w in words)
    if len(rows) > 1 or len(columns) > 1:
        return None
    row = next(iter(rows), None)
    column = next(iter(columns), None)
    if row is None and column is None:
        return ("middle", "center") if middle else None
    if middle:
        row = row or "middle"
        column = column or "center"
    return row, column


PLACE_WORDS: frozenset[str] = frozenset(_ROW_WORDS) | frozenset(_COLUMN_WORDS) | _MIDDLE_WORDS
"""Every word that names a place (left out when the query's other words are paired with it)."""

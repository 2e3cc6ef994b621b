"""The one text normaliser: keywords, tags, keyword filters and query texts all pass through it,
so that what is stored, filtered, cached and embedded agrees."""

from __future__ import annotations


def normalize_keyword(text: str) -> str:
    """Trim, collapse every run of whitespace to one space, lower-case ("Red  Circle" -> "red circle").

    The text model is uncased (its BertNormalizer lowercases), so this never changes an embedding.
    """
    return " ".join(text.split()).lower()

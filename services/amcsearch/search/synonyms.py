"""Query synonyms for the keyword route: a query's words that the keyword vocabulary does not use
("big", "grey", "holiday") also ask for the vocabulary word they mean ("large", "gray", "festive").

Why: BM25 matches words, not meanings, so a query worded in other words than the tagger's lost
most of its keyword candidates (QUALITY.md's paraphrase table: the keyword route dropped 0.063
NDCG@5 under paraphrase, the vector route 0.013). The vector route and the rescorer read the
query's embedding, which already carries the meaning.

The table comes with the models: `make models` derives it from the text model's own embeddings
(models/export/synonyms.py; docs/decisions/0013-query-synonyms.md) and the export writes it into
the text_encoder's config as the parameter QUERY_SYNONYMS_PARAMETER, one "word vocabulary-word"
pair per line; the gateway reads it from Triton. A word only ever gains its synonym: the query's
own words stay, so a collection that indexes "big" itself still finds it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from amcsearch.runtime.contract import TEXT_ENCODER
from amcsearch.runtime.keywords import WORD

if TYPE_CHECKING:
    from amcsearch.runtime.triton import TritonModels

log = logging.getLogger(__name__)

QUERY_SYNONYMS_PARAMETER = "query_synonyms"
"""The text_encoder config parameter that holds the table."""


def format_synonyms(table: Mapping[str, str]) -> str:
    """The parameter's text: "word synonym" lines, sorted."""
    return "\n".join(f"{word} {synonym}" for word, synonym in sorted(table.items()))


def parse_synonyms(text: str) -> dict[str, str]:
    """The table of a parameter's text (blank and malformed lines are skipped)."""
    table = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            table[parts[0].lower()] = parts[1].lower()
    return table


def expand_query(text: str, table: Mapping[str, str]) -> str:
    """The query text for the keyword route: the text as given, followed by the synonym of each
    of its words that has one and is not already in the text ("big red disc" -> "big red disc
    large"). Place words have no synonyms, so the place a query names stays what it was."""
    if not table:
        return text
    words = [w.lower() for w in WORD.findall(text)]
    present = set(words)
    added: list[str] = []
    for word in words:
        synonym = table.get(word)
        if synonym is not None and synonym not in present:
            present.add(synonym)
            added.append(synonym)
    return f"{text} {' '.join(added)}" if added else text


class ServedSynonyms:
    """The served text_encoder's table, read from its config through Triton (which the client
    caches) and parsed once per config."""

    def __init__(self, triton: TritonModels) -> None:
        self.triton = triton
        self._parsed: tuple[dict, dict[str, str]] | None = None

    async def table(self) -> dict[str, str]:
        config = await self.triton.config(TEXT_ENCODER)
        if self._parsed is None or self._parsed[0] is not config:
            parameter = config.get("parameters", {}).get(QUERY_SYNONYMS_PARAMETER, {})
            self._parsed = (config, parse_synonyms(parameter.get("string_value", "")))
            log.info("query synonyms: %d entries from the %s config", len(self._parsed[1]), TEXT_ENCODER)
        return self._parsed[1]

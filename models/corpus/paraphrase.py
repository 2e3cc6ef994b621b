"""Queries worded as users word them: the same constraints, other words.

A seeded, deterministic rewrite of a benchmark query text (same seed and text, same paraphrase)
that keeps its meaning, so the corpus's grade of every image is unchanged:
- synonyms ("large" -> "big", "rectangle" -> "box", "gray" -> "grey", "festive" -> "holiday");
- spelled-out positions ("top-left" -> "in the upper left corner", "middle-center" -> "in the
  center");
- filler ("show me", "photos of", "i am looking for", "please");
- plurals and articles ("circles", "a");
- word order (an attribute phrase moved after its position).

Used only to evaluate (QUALITY.md's paraphrase table) and, if needed, to augment TRAIN queries;
never fitted to the test split.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np

SYNONYMS: dict[str, tuple[str, ...]] = {
    "large": ("big", "large", "huge"),
    "small": ("little", "small", "tiny"),
    "rectangle": ("box", "rectangle", "oblong"),
    "circle": ("disc", "circle", "round shape"),
    "triangle": ("triangle", "triangular shape"),
    "gray": ("grey", "gray"),
    "festive": ("holiday", "festive", "christmas"),
    "vintage": ("retro", "vintage", "old-fashioned"),
    "sale": ("discount", "sale"),
    "wedding": ("wedding", "bridal"),
    "travel": ("travel", "vacation"),
    "sport": ("sports", "sport"),
    "picture": ("picture", "photo", "image"),
    "pictures": ("pictures", "photos", "images"),
    "images": ("images", "pictures", "photos"),
    "image": ("image", "picture", "photo"),
    "photo": ("photo", "picture", "shot"),
}
POSITIONS: dict[str, tuple[str, ...]] = {
    "top-left": ("in the upper left corner", "top left", "at the top on the left"),
    "top-center": ("at the top in the middle", "top center", "at the top"),
    "top-right": ("in the upper right corner", "top right", "at the top on the right"),
    "middle-left": ("on the left side", "middle left", "on the left in the middle"),
    "middle-center": ("in the center", "in the middle", "middle center"),
    "middle-right": ("on the right side", "middle right", "on the right in the middle"),
    "bottom-left": ("in the lower left corner", "bottom left", "at the bottom on the left"),
    "bottom-center": ("at the bottom in the middle", "bottom center", "at the bottom"),
    "bottom-right": ("in the lower right corner", "bottom right", "at the bottom on the right"),
}
FILLERS = ("show me ", "photos of ", "i am looking for ", "find ", "please show ", "")
PLURALS = {"circle": "circles", "rectangle": "rectangles", "triangle": "triangles"}
POSITION_PATTERN = re.compile(r"(?:(?:at|in) the )?(" + "|".join(POSITIONS) + r")(?: cell)?")
"""A position with the benchmark's own prepositions ("at the top-left", "in the top-left cell")."""


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _spell_positions(text: str, rng: np.random.Generator) -> tuple[str, str]:
    """(text without its position, the position spelled out), or (text, "") without one."""
    match = POSITION_PATTERN.search(text)
    if match is None:
        return text, ""
    rest = (text[: match.start()] + " " + text[match.end() :]).strip()
    return " ".join(rest.split()), _pick(rng, POSITIONS[match.group(1)])


def paraphrase(text: str, seed: int) -> str:
    """A meaning-preserving rewording of `text`, the same for the same (text, seed)."""
    rng = np.random.default_rng([seed, *text.encode("utf-8")])
    text, position = _spell_positions(text.lower(), rng)
    words = []
    for word in text.split():
        if word in PLURALS and rng.random() < 0.25 and not position:
            word = PLURALS[word]  # "images with a red circle" -> "... red circles": still a match
        words.append(_pick(rng, SYNONYMS[word]) if word in SYNONYMS and rng.random() < 0.7 else word)
    body = " ".join(words)
    if position:
        body = f"{position} {body}" if rng.random() < 0.4 else f"{body} {position}"
    return (_pick(rng, FILLERS) + body).strip()


def paraphrased(queries: list, seed: int) -> list:
    """The queries with paraphrased texts (constraints, candidates and relevance unchanged)."""
    return [replace(q, text=paraphrase(q.text, seed)) for q in queries]

"""Vocabulary of the scene corpus: attributes, grid cells, themes and tagger keywords.

Colours, shapes, sizes and the 3x3 grid follow TIRG's CSS dataset (datasets.py). Themes are
non-visual metadata that only the keywords carry; distractors are the uninformative tokens a real
auto-tagger emits (AMC's Clickture keywords are noisy in the same way).
"""

from __future__ import annotations

from dataclasses import dataclass

from amcsearch.runtime.keywords import CELL_NAMES, placement_label

COLORS: tuple[str, ...] = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
SHAPES: tuple[str, ...] = ("rectangle", "circle", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
CELLS: tuple[str, ...] = CELL_NAMES
"""The 3 x 3 grid, row-major ("top-left" ... "bottom-right"): the serving code's own names, so
that the tagger's placements ("red@top-left") and a query's named place agree with the corpus."""
THEMES: tuple[str, ...] = ("festive", "vintage", "sale", "wedding", "travel", "sport")

COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "red": (215, 30, 35),
    "blue": (35, 65, 215),
    "green": (40, 165, 55),
    "brown": (130, 75, 30),
    "purple": (135, 45, 175),
    "cyan": (40, 200, 215),
    "yellow": (240, 205, 35),
}

# The simulated tagger confuses these colours with each other (symmetric pairs).
COLOR_CONFUSIONS: dict[str, str] = {
    "blue": "cyan",
    "cyan": "blue",
    "red": "brown",
    "brown": "red",
    "gray": "purple",
    "purple": "gray",
}

# Colour-shape pairs that never appear in the train split (CSS's unseen combinations).
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("purple", "triangle"), ("cyan", "circle"), ("yellow", "rectangle")}
)

DISTRACTORS: tuple[str, ...] = (
    "photo",
    "image",
    "picture",
    "art",
    "design",
    "background",
    "abstract",
    "pattern",
    "graphic",
    "illustration",
    "texture",
    "shape",
    "colorful",
    "bright",
    "simple",
    "modern",
    "geometric",
    "minimal",
    "clipart",
    "icon",
    "wallpaper",
    "flat",
    "vector",
    "drawing",
    "paper",
    "poster",
    "card",
    "print",
    "banner",
    "symbol",
    "object",
    "composition",
    "element",
    "decoration",
    "template",
    "sticker",
    "logo",
    "sign",
    "layout",
    "stock",
)

KEYWORD_VOCAB: tuple[str, ...] = COLORS + SHAPES + SIZES + THEMES + DISTRACTORS
PLACEMENT_ATTRIBUTES: tuple[str, ...] = COLORS + SHAPES + SIZES
"""What the tagger says of each cell's object (models/nets/keyword_tagger.py PlacementHead)."""
PLACEMENT_LABELS: tuple[str, ...] = tuple(
    placement_label(attribute, cell) for cell in range(len(CELLS)) for attribute in PLACEMENT_ATTRIBUTES
)
"""The tagger's placement outputs in order, cell-major (placements.txt)."""

PLURALS: dict[str, str] = {"rectangle": "rectangles", "circle": "circles", "triangle": "triangles"}
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five")


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene graph; `cell` is 0..8, row-major on the 3x3 grid."""

    shape: str
    color: str
    size: str
    cell: int

    def describe(self) -> str:
        """'large red circle'."""
        return f"{self.size} {self.color} {self.shape}"


Scene = tuple[SceneObject, ...]


def canonical(objects: list[SceneObject] | Scene) -> Scene:
    """Scene graphs are compared as tuples sorted by cell (one object per cell)."""
    return tuple(sorted(objects, key=lambda o: o.cell))


def scene_key(objects: Scene) -> str:
    """A string that is equal for identical scene graphs (the label's identity)."""
    return "|".join(f"{o.cell}:{o.size}:{o.color}:{o.shape}" for o in canonical(objects))


def caption(objects: Scene) -> str:
    """'a large red circle at top-left and a small blue triangle at bottom-center'."""
    parts = [f"a {o.describe()} at {CELLS[o.cell]}" for o in canonical(objects)]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]

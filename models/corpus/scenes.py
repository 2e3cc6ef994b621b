"""Scene graphs: sampling, the simulated tagger's keywords, and CSS-style modifications."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from models.corpus.vocab import (
    CELLS,
    COLOR_CONFUSIONS,
    COLORS,
    DISTRACTORS,
    HELD_OUT_PAIRS,
    SHAPES,
    SIZES,
    THEMES,
    Scene,
    SceneObject,
    canonical,
)

OBJECT_COUNT_P = (0.12, 0.25, 0.28, 0.2, 0.15)  # 1..5 objects
MAX_KEYWORDS = 32  # AMC rescorer's keyword slots


def allowed_pairs(hold_out: bool) -> list[tuple[str, str]]:
    return [(c, s) for c in COLORS for s in SHAPES if not (hold_out and (c, s) in HELD_OUT_PAIRS)]


def sample_scene(rng: np.random.Generator, hold_out: bool) -> Scene:
    """1-5 objects in distinct cells; `hold_out` excludes the held-out colour-shape pairs."""
    pairs = allowed_pairs(hold_out)
    n = int(rng.choice(5, p=OBJECT_COUNT_P)) + 1
    cells = rng.choice(9, size=n, replace=False)
    objects = []
    for cell in cells:
        color, shape = pairs[int(rng.integers(len(pairs)))]
        size = SIZES[int(rng.integers(2))]
        objects.append(SceneObject(shape, color, size, int(cell)))
    return canonical(objects)


def true_keywords(objects: Scene, theme: str) -> list[str]:
    """Colours, shapes and sizes present, and the theme; never positions."""
    words: list[str] = []
    for o in canonical(objects):
        for w in (o.color, o.shape, o.size):
            if w not in words:
                words.append(w)
    words.append(theme)
    return words


def noisy_keywords(objects: Scene, theme: str, rng: np.random.Generator) -> list[tuple[str, float]]:
    """A simulated auto-tagger (METHODS.md): per object colour p=.85 (a fifth of those emitted
    as the confused colour), shape p=.6, size p=.3, position never; the theme p=.8, a wrong theme
    p=.1; 5-15 distractors with lower confidences. Sorted by confidence, at most 32."""
    conf: dict[str, float] = {}

    def emit(word: str, lo: float, hi: float) -> None:
        c = round(float(rng.uniform(lo, hi)), 4)
        conf[word] = max(conf.get(word, 0.0), c)

    for o in canonical(objects):
        if rng.random() < 0.85:
            if o.color in COLOR_CONFUSIONS and rng.random() < 0.2:
                emit(COLOR_CONFUSIONS[o.color], 0.35, 0.8)
            else:
                emit(o.color, 0.5, 0.98)
        if rng.random() < 0.6:
            emit(o.shape, 0.4, 0.95)
        if rng.random() < 0.3:
            emit(o.size, 0.3, 0.8)
    if rng.random() < 0.8:
        emit(theme, 0.5, 0.98)
    if rng.random() < 0.1:
        others = [t for t in THEMES if t != theme]
        emit(others[int(rng.integers(len(others)))], 0.2, 0.6)
    n_distractors = int(rng.integers(5, 16))
    for i in rng.choice(len(DISTRACTORS), size=n_distractors, replace=False):
        emit(DISTRACTORS[int(i)], 0.05, 0.5)
    ranked = sorted(conf.items(), key=lambda kv: (-kv[1], kv[0]))
    return ranked[:MAX_KEYWORDS]


@dataclass(frozen=True)
class Modification:
    """One CSS-style edit. `kind` in add/remove/size/color/shape; `obj` is the object added
    (add) or the exact object that must be at `cell` (size); `value` the new attribute."""

    kind: str
    cell: int
    obj: SceneObject | None = None
    value: str = ""

    @property
    def text(self) -> str:
        cell = CELLS[self.cell]
        if self.kind == "add":
            assert self.obj is not None
            return f"add {self.obj.describe()} to {cell}"
        if self.kind == "remove":
            return f"remove {cell} object"
        if self.kind == "size":
            assert self.obj is not None
            return f"make {cell} {self.obj.describe()} {self.value}"
        if self.kind == "color":
            return f"make {cell} object {self.value}"
        if self.kind == "shape":
            return f"make {cell} object a {self.value}"
        raise ValueError(f"unknown modification kind {self.kind!r}")


MODIFICATION_KINDS: tuple[str, ...] = ("add", "remove", "size", "color", "shape")


def _at(objects: Scene, cell: int) -> SceneObject | None:
    for o in objects:
        if o.cell == cell:
            return o
    return None


def is_compatible(objects: Scene, mod: Modification) -> bool:
    """CSS preconditions: the cell is empty for add, occupied otherwise; the new attribute
    differs; a scene keeps 1-5 objects; a size edit names the exact object at the cell."""
    o = _at(objects, mod.cell)
    if mod.kind == "add":
        return o is None and len(objects) < 5
    if o is None:
        return False
    if mod.kind == "remove":
        return len(objects) >= 2
    if mod.kind == "size":
        return mod.obj == o and mod.value != o.size
    if mod.kind == "color":
        return mod.value != o.color
    if mod.kind == "shape":
        return mod.value != o.shape
    return False


def apply_modification(objects: Scene, mod: Modification) -> Scene:
    """The modified scene graph; raises ValueError when the preconditions do not hold."""
    if not is_compatible(objects, mod):
        raise ValueError(f"{mod.text!r} does not apply to this scene")
    o = _at(objects, mod.cell)
    rest = [x for x in objects if x.cell != mod.cell]
    if mod.kind == "add":
        assert mod.obj is not None
        return canonical(rest + [replace(mod.obj, cell=mod.cell)])
    assert o is not None
    if mod.kind == "remove":
        return canonical(rest)
    if mod.kind == "size":
        return canonical(rest + [replace(o, size=mod.value)])
    if mod.kind == "color":
        return canonical(rest + [replace(o, color=mod.value)])
    return canonical(rest + [replace(o, shape=mod.value)])


def sample_modification(objects: Scene, rng: np.random.Generator, hold_out: bool) -> Modification | None:
    """A random modification compatible with `objects` (None if the drawn kind cannot apply)."""
    kind = MODIFICATION_KINDS[int(rng.integers(len(MODIFICATION_KINDS)))]
    occupied = [o.cell for o in objects]
    empty = [c for c in range(9) if c not in occupied]
    if kind == "add":
        if not empty or len(objects) >= 5:
            return None
        color, shape = allowed_pairs(hold_out)[int(rng.integers(len(allowed_pairs(hold_out))))]
        cell = empty[int(rng.integers(len(empty)))]
        obj = SceneObject(shape, color, SIZES[int(rng.integers(2))], cell)
        return Modification("add", cell, obj=obj)
    o = objects[int(rng.integers(len(objects)))]
    if kind == "remove":
        return Modification("remove", o.cell) if len(objects) >= 2 else None
    if kind == "size":
        return Modification("size", o.cell, obj=o, value="small" if o.size == "large" else "large")
    if kind == "color":
        choices = [c for c in COLORS if c != o.color]
        return Modification("color", o.cell, value=choices[int(rng.integers(len(choices)))])
    choices = [s for s in SHAPES if s != o.shape]
    return Modification("shape", o.cell, value=choices[int(rng.integers(len(choices)))])


def parse_modification(text: str) -> Modification:
    """The inverse of Modification.text; raises ValueError on any other wording."""
    words = text.split()
    try:
        if words[0] == "add" and len(words) == 6 and words[4] == "to":
            size, color, shape, cell = words[1], words[2], words[3], CELLS.index(words[5])
            if size in SIZES and color in COLORS and shape in SHAPES:
                return Modification("add", cell, obj=SceneObject(shape, color, size, cell))
        elif words[0] == "remove" and len(words) == 3 and words[2] == "object":
            return Modification("remove", CELLS.index(words[1]))
        elif words[0] == "make" and len(words) == 6:
            cell = CELLS.index(words[1])
            size, color, shape, new = words[2:]
            if size in SIZES and color in COLORS and shape in SHAPES and new in SIZES:
                return Modification("size", cell, obj=SceneObject(shape, color, size, cell), value=new)
        elif words[0] == "make" and len(words) == 4 and words[2] == "object" and words[3] in COLORS:
            return Modification("color", CELLS.index(words[1]), value=words[3])
        elif words[0] == "make" and len(words) == 5 and words[2:4] == ["object", "a"] and words[4] in SHAPES:
            return Modification("shape", CELLS.index(words[1]), value=words[4])
    except (IndexError, ValueError):
        pass
    raise ValueError(f"not a scene modification: {text!r}")


def respects_hold_out(objects: Scene) -> bool:
    return all((o.color, o.shape) not in HELD_OUT_PAIRS for o in objects)

"""Text queries with graded relevance, and query-by-image with the caption tf-idf proxy.

Every text query is drawn from one image of the split (so at least one candidate meets all its
constraints) and graded on the scene graph and theme of each candidate: 2 when the image meets
every constraint, 1 when it meets some (the hard negatives), 0 when it meets none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from models.corpus.records import ImageQuery, ImageRecord, TextQuery
from models.corpus.vocab import CELLS, NUMBER_WORDS, PLURALS, SceneObject
from models.metrics import TfIdf

FAMILIES: tuple[str, ...] = ("layout", "attribute", "theme", "mixed")
N_CANDIDATES = 50
Grader = Callable[[ImageRecord], int]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _mismatches(o: SceneObject, attrs: dict[str, str]) -> int:
    return sum(getattr(o, k) != v for k, v in attrs.items())


def _phrase(attrs: dict[str, str]) -> str:
    return " ".join(attrs[k] for k in ("size", "color", "shape") if k in attrs)


def _best_object_grade(objects: Sequence[SceneObject], attrs: dict[str, str]) -> int:
    """2 if some object has every attribute, 1 if some object misses exactly one, else 0."""
    best = min((_mismatches(o, attrs) for o in objects), default=len(attrs))
    return 2 if best == 0 else 1 if best == 1 else 0


def _layout(src: ImageRecord, rng: np.random.Generator) -> tuple[str, dict]:
    o = src.objects[int(rng.integers(len(src.objects)))]
    if rng.random() < 0.25:  # count query: "two red objects", "three circles"
        key = "color" if rng.random() < 0.5 else "shape"
        value = getattr(o, key)
        n = sum(getattr(x, key) == value for x in src.objects)
        if key == "color":
            noun = f"{value} object" if n == 1 else f"{value} objects"
        else:
            noun = value if n == 1 else PLURALS[value]
        text = _pick(rng, ("{n} {noun}", "exactly {n} {noun}", "image with {n} {noun}"))
        text = text.format(n=NUMBER_WORDS[n], noun=noun)
        return text, {"kind": "count", "key": key, "value": value, "n": n}
    attrs = {"color": o.color, "shape": o.shape}
    if rng.random() < 0.7:
        attrs["size"] = o.size
    cell = CELLS[o.cell]
    text = _pick(rng, ("{p} {c}", "{p} at the {c}", "{p} in the {c} cell", "{c} {p}"))
    text = text.format(p=_phrase(attrs), c=cell)
    return text, {"kind": "layout", "attrs": attrs, "cell": o.cell}


def _attribute(src: ImageRecord, rng: np.random.Generator) -> tuple[str, dict]:
    o = src.objects[int(rng.integers(len(src.objects)))]
    u = rng.random()
    if u < 0.6:
        attrs = {"color": o.color, "shape": o.shape}
    elif u < 0.85:
        attrs = {"size": o.size, "color": o.color, "shape": o.shape}
    else:
        attrs = {"size": o.size, "shape": o.shape}
    text = _pick(rng, ("{p}", "a {p}", "images with a {p}", "picture of a {p}")).format(p=_phrase(attrs))
    return text, {"kind": "attribute", "attrs": attrs}


def _theme(src: ImageRecord, rng: np.random.Generator) -> tuple[str, dict]:
    theme = src.theme
    text = _pick(rng, ("{t} images", "{t} pictures", "a {t} photo", "{t}")).format(t=theme)
    return text, {"kind": "theme", "theme": theme}


def _mixed(src: ImageRecord, rng: np.random.Generator) -> tuple[str, dict]:
    o = src.objects[int(rng.integers(len(src.objects)))]
    attrs = {"color": o.color, "shape": o.shape}
    if rng.random() < 0.3:
        attrs["size"] = o.size
    theme = src.theme
    text = _pick(rng, ("{t} picture with a {p}", "{p} in a {t} image", "{t} {p}")).format(t=theme, p=_phrase(attrs))
    return text, {"kind": "mixed", "attrs": attrs, "theme": theme}


def grade(spec: dict, r: ImageRecord) -> int:
    """The graded relevance (2 every constraint met, 1 some, 0 none) of any image to the query
    whose constraints `spec` holds: the same rule for its 50 candidates and the whole index."""
    kind = spec["kind"]
    if kind == "count":
        c = sum(getattr(x, spec["key"]) == spec["value"] for x in r.objects)
        return 2 if c == spec["n"] else 1 if c > 0 else 0
    if kind == "layout":
        attrs = spec["attrs"]
        at = [x for x in r.objects if x.cell == spec["cell"]]
        if at and _mismatches(at[0], attrs) == 0:
            return 2
        if any(_mismatches(x, attrs) == 0 for x in r.objects):
            return 1  # right object, wrong place
        if at and _mismatches(at[0], attrs) == 1:
            return 1  # right place, one attribute off
        return 0
    if kind == "attribute":
        return _best_object_grade(r.objects, spec["attrs"])
    if kind == "theme":
        return 2 if r.theme == spec["theme"] else 0
    if kind == "mixed":
        return int((r.theme == spec["theme"]) + (_best_object_grade(r.objects, spec["attrs"]) == 2))
    raise ValueError(f"unknown query kind {kind!r}")


_MAKERS = {"layout": _layout, "attribute": _attribute, "theme": _theme, "mixed": _mixed}


def _candidates(
    src_index: int, grader: Grader, images: Sequence[ImageRecord], rng: np.random.Generator
) -> tuple[list[str], list[int]]:
    """The source, 3-10 more fully relevant, 10-20 partial (hard negatives), the rest drawn at
    random from a pool of the split; returned in random order."""
    pool_size = min(len(images), 250)
    pool = [i for i in rng.choice(len(images), size=pool_size, replace=False) if i != src_index]
    grades = {int(i): grader(images[i]) for i in pool}
    by_grade = {g: [i for i in grades if grades[i] == g] for g in (2, 1, 0)}
    chosen = [src_index]
    chosen += by_grade[2][: int(rng.integers(3, 11))]
    chosen += by_grade[1][: int(rng.integers(10, 21))]
    taken = set(chosen)
    rest = [i for i in by_grade[0] + by_grade[1] + by_grade[2] if i not in taken]
    chosen += rest[: N_CANDIDATES - len(chosen)]
    order = rng.permutation(len(chosen))
    ids = [images[chosen[j]].id for j in order]
    rel = [grader(images[chosen[j]]) for j in order]
    return ids, rel


def make_text_queries(
    images: Sequence[ImageRecord], n_per_family: int, rng: np.random.Generator, prefix: str
) -> list[TextQuery]:
    """`n_per_family` queries of each family over `images`, ids '<prefix>-text-<n>'."""
    out: list[TextQuery] = []
    for family in FAMILIES:
        for _ in range(n_per_family):
            src = int(rng.integers(len(images)))
            text, spec = _MAKERS[family](images[src], rng)
            ids, rel = _candidates(src, lambda r, spec=spec: grade(spec, r), images, rng)
            out.append(TextQuery(f"{prefix}-text-{len(out):05d}", text, family, ids, rel, spec))
    return out


def make_image_queries(
    images: Sequence[ImageRecord], n: int, rng: np.random.Generator, prefix: str
) -> list[ImageQuery]:
    """Query image + 50 candidates: its 15 nearest captions by tf-idf cosine (itself excluded)
    and 35 random images; relevance = tf-idf cosine, idf fitted on the split's captions."""
    captions = [r.caption for r in images]
    vectors = TfIdf(captions).transform(captions)
    out: list[ImageQuery] = []
    for q in rng.choice(len(images), size=min(n, len(images)), replace=False):
        q = int(q)
        sims = vectors @ vectors[q]
        sims[q] = -1.0
        near = [int(i) for i in np.argsort(-sims, kind="stable")[:15]]
        taken = set(near) | {q}
        others = [int(i) for i in rng.permutation(len(images)) if int(i) not in taken]
        chosen = near + others[: N_CANDIDATES - len(near)]
        chosen = [chosen[j] for j in rng.permutation(len(chosen))]
        out.append(
            ImageQuery(
                id=f"{prefix}-image-{len(out):05d}",
                image_id=images[q].id,
                candidate_ids=[images[i].id for i in chosen],
                relevance=[round(float(sims[i]), 6) for i in chosen],
            )
        )
    return out

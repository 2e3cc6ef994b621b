"""The "street vs shop" corpus for cross-domain retrieval (TagYNet, CtxYNet).

A product is a scene graph of 2-5 objects with a theme; its tags are scenes.true_keywords of its
objects (colours, shapes, sizes) and theme. Its shop image is a clean render (render.render_scene,
no corruption) of the product displayed with at most one accessory, other objects in its empty cells
that the tags do not list (the way a shop photo shows a dress with a bag). Its street shots show
the product's objects alone through a shift that a shop photo never has: another scale, position,
rotation and viewing angle, distractor objects and background clutter, a colour cast and another
exposure, blur, noise and sometimes an occluder. A street shot's one correct item is its
product's shop image.

The test products are drawn first; the train products then reject every test scene graph, so no
test product is ever trained on. Every image records how much of each of the 36 regions (the
image encoder's 6 x 6 grid) the product's objects cover, and how much the other objects (shop
accessories, street distractors) cover: the attention diagnostics score against these.

Cached like the scene corpus (models/corpus/build.py): build/corpus/street_shop-<size>-<seed>-
<fingerprint>/, the fingerprint hashing this generator's sources and the domain settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from models.corpus import render, scenes, vocab
from models.corpus.build import load_or_build_cached
from models.corpus.render import _draw_object
from models.corpus.vocab import (
    COLOR_RGB,
    COLORS,
    KEYWORD_VOCAB,
    SHAPES,
    SIZES,
    THEMES,
    Scene,
    SceneObject,
    canonical,
    scene_key,
)

log = logging.getLogger(__name__)

STREET_SHOP_VERSION = 1
GRID = 6  # the image encoder's region grid
_SIDE = render.IMAGE_SIZE * 2  # street shots are drawn at 2x then downsampled, like render.py
_SPLIT_CODE = {"train": 1, "test": 2}
_SHOP, _STREET = 1, 2  # random-stream codes


@dataclass(frozen=True)
class StreetShopSize:
    train_products: int
    test_products: int
    train_shots: int  # street shots per train product
    test_shots: int  # street shots per test product: the test queries


STREET_SHOP_SIZES: dict[str, StreetShopSize] = {
    "ci": StreetShopSize(300, 200, 3, 1),
    "demo": StreetShopSize(1200, 500, 16, 2),
    "full": StreetShopSize(4000, 1500, 16, 2),
}


@dataclass(frozen=True)
class DomainGap:
    """What separates the two domains; each image draws every setting uniformly from its range."""

    shop_accessories: tuple[int, int] = (0, 1)  # untagged objects in a shop image's empty cells
    scale: tuple[float, float] = (0.65, 0.9)  # street: the product's side over the frame's
    offset: float = 0.08  # street: the product's centre moves this share of the frame either way
    rotation: float = 12.0  # degrees either way
    perspective: float = 0.06  # corner jitter, a share of the product's side
    distractors: tuple[int, int] = (1, 2)  # other objects in the shot
    background: tuple[float, float] = (150.0, 245.0)  # the gradient's top colour, per channel
    clutter: tuple[int, int] = (2, 5)  # background lines and translucent blobs
    occlusion: float = 0.3  # probability of an occluder over the product
    occluder_side: tuple[float, float] = (0.2, 0.35)  # a share of the product's side
    color_cast: float = 0.1  # per-channel gain 1 +- this
    exposure: float = 0.15  # overall gain 1 +- this
    blur: tuple[float, float] = (0.3, 1.0)  # Gaussian radius, output pixels
    noise: tuple[float, float] = (3.0, 10.0)  # pixel noise sigma


DEFAULT_GAP = DomainGap()


@dataclass(frozen=True)
class Product:
    id: str
    objects: Scene
    theme: str
    tags: list[str]  # scenes.true_keywords of the objects and theme: what the shop lists
    accessories: Scene = ()  # shown beside the product in its shop image, never tagged


@dataclass
class StreetShopSplit:
    name: str
    products: list[Product]
    shop_pixels: np.ndarray  # uint8 [P, 128, 128, 3], row i = products[i]
    shop_product_coverage: np.ndarray  # float32 [P, 36]: share of each region the product covers
    shop_accessory_coverage: np.ndarray  # float32 [P, 36]: the same for the accessories
    street_pixels: np.ndarray  # uint8 [S, 128, 128, 3]
    street_product: np.ndarray  # int64 [S]: the row in products of each shot's product
    street_product_coverage: np.ndarray  # float32 [S, 36]: the product's objects (after occlusion)
    street_distractor_coverage: np.ndarray  # float32 [S, 36]: the distractor objects


@dataclass
class StreetShopCorpus:
    size: str
    seed: int
    train: StreetShopSplit
    test: StreetShopSplit
    keyword_vocab: list[str]


def tag_matrix(products: list[Product], keyword_vocab: list[str]) -> np.ndarray:
    """float32 [P, V]: multi-hot of each product's tags over the keyword vocabulary."""
    position = {word: i for i, word in enumerate(keyword_vocab)}
    tags = np.zeros((len(products), len(keyword_vocab)), dtype=np.float32)
    for row, product in enumerate(products):
        for word in product.tags:
            if word in position:
                tags[row, position[word]] = 1.0
    return tags


def region_coverage(alpha: np.ndarray) -> np.ndarray:
    """float32 [36]: the mean of alpha [H, W] (0..1) over each cell of the 6 x 6 grid, with
    torch's adaptive-average-pooling bins (the image encoder's regions)."""
    n = alpha.shape[0]
    out = np.empty((GRID, GRID), dtype=np.float32)
    for r in range(GRID):
        r0, r1 = (r * n) // GRID, -(-(r + 1) * n // GRID)
        for c in range(GRID):
            c0, c1 = (c * n) // GRID, -(-(c + 1) * n // GRID)
            out[r, c] = alpha[r0:r1, c0:c1].mean()
    return out.reshape(-1)


def _object_layer(objects: Scene, rng: np.random.Generator | None) -> Image.Image:
    """RGBA at 2x: the objects at their cell centres over transparency. With rng, the positions,
    radii and colours are jittered like render_scene's; without, they are nominal."""
    layer = Image.new("RGBA", (_SIDE, _SIDE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    cell = render.IMAGE_SIZE / 3
    for o in objects:
        row, col = divmod(o.cell, 3)
        cx, cy, r = (col + 0.5) * cell, (row + 0.5) * cell, render._RADIUS[o.size]
        rgb = np.array(COLOR_RGB[o.color], dtype=np.float64)
        if rng is not None:
            cx, cy = cx + rng.uniform(-4, 4), cy + rng.uniform(-4, 4)
            r *= rng.uniform(0.92, 1.08)
            rgb = np.clip(rgb + rng.uniform(-12, 12, size=3), 0, 255)
        _draw_object(draw, o.shape, tuple(int(v) for v in rgb), cx, cy, r)  # type: ignore[arg-type]
    return layer


def _alpha(layer: Image.Image) -> np.ndarray:
    """float32 [128, 128] in 0..1: the layer's opacity at output resolution."""
    small = layer.getchannel("A").resize((render.IMAGE_SIZE, render.IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def shop_image(product: Product, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uint8 [128, 128, 3] clean render of the product and its accessories, float32 [36]
    coverage of the product's nominal shapes, the same for the accessories)."""
    pixels = render.render_scene(canonical(product.objects + product.accessories), rng)
    return (
        pixels,
        region_coverage(_alpha(_object_layer(product.objects, None))),
        region_coverage(_alpha(_object_layer(product.accessories, None))),
    )


def _perspective_coefficients(source: np.ndarray, target: np.ndarray) -> tuple[float, ...]:
    """PIL's PERSPECTIVE data, which maps output pixels back to input pixels: target [4, 2]
    (output corners) -> source [4, 2] (input corners)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(target, source, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs.extend([u, v])
    return tuple(float(c) for c in _solve(np.array(rows, dtype=np.float64), np.array(rhs, dtype=np.float64)))


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x with a @ x = b by Gauss-Jordan elimination with partial pivoting. For an 8 x 8 system
    this is far cheaper than numpy's LAPACK call, whose thread pool dominates on a busy machine."""
    m = np.concatenate([a, b[:, None]], axis=1)
    n = len(b)
    for col in range(n):
        pivot = col + int(np.argmax(np.abs(m[col:, col])))
        m[[col, pivot]] = m[[pivot, col]]
        m[col] /= m[col, col]
        for row in range(n):
            if row != col:
                m[row] -= m[row, col] * m[col]
    return m[:, n]


def _product_quad(gap: DomainGap, rng: np.random.Generator) -> np.ndarray:
    """float [4, 2]: where the product's square lands in the 2x frame (clockwise from top-left)."""
    side = rng.uniform(*gap.scale) * _SIDE
    half = side / 2
    centre = _SIDE / 2 + rng.uniform(-gap.offset, gap.offset, size=2) * _SIDE
    angle = math.radians(rng.uniform(-gap.rotation, gap.rotation))
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    corners = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
    corners = corners + rng.uniform(-1, 1, size=(4, 2)) * gap.perspective * side
    return centre + corners @ rotation.T


def _street_background(gap: DomainGap, rng: np.random.Generator) -> Image.Image:
    """RGB at 2x: a darker, more varied gradient than the shop's, with lines and translucent blobs."""
    top = rng.uniform(*gap.background, size=3)
    bottom = np.clip(top + rng.uniform(-60, 40, size=3), 40, 255)
    t = np.linspace(0.0, 1.0, _SIDE)[:, None, None]
    column = ((1 - t) * top + t * bottom).astype(np.uint8)
    image = Image.fromarray(column, "RGB").resize((_SIDE, _SIDE), Image.Resampling.NEAREST).convert("RGBA")
    clutter = Image.new("RGBA", (_SIDE, _SIDE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(clutter)
    for _ in range(int(rng.integers(gap.clutter[0], gap.clutter[1] + 1))):
        rgb = tuple(int(v) for v in rng.uniform(30, 230, size=3))
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, _SIDE, size=4))
        if rng.random() < 0.6:
            draw.line([x0, y0, x1, y1], fill=(*rgb, 255), width=int(rng.integers(2, 7)))
        else:
            box = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
            draw.ellipse(box, fill=(*rgb, int(rng.integers(50, 110))))
    return Image.alpha_composite(image, clutter)


def _distractor_layer(gap: DomainGap, scale: float, product_alpha: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """RGBA at 2x: 1-3 objects of any kind, at the product's scale, off the product's objects."""
    layer = Image.new("RGBA", (_SIDE, _SIDE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    n = int(rng.integers(gap.distractors[0], gap.distractors[1] + 1))
    placed, attempts = 0, 0
    while placed < n and attempts < 40:
        attempts += 1
        r = render._RADIUS[SIZES[int(rng.integers(2))]] * scale * rng.uniform(0.9, 1.1)
        cx, cy = (float(v) for v in rng.uniform(r, render.IMAGE_SIZE - r, size=2))
        y0, y1 = int(max(0, cy - r - 2)), int(min(render.IMAGE_SIZE, cy + r + 2))
        x0, x1 = int(max(0, cx - r - 2)), int(min(render.IMAGE_SIZE, cx + r + 2))
        if product_alpha[y0:y1, x0:x1].max(initial=0.0) > 0.05:
            continue
        color = COLOR_RGB[COLORS[int(rng.integers(len(COLORS)))]]
        rgb = tuple(int(v) for v in np.clip(np.array(color) + rng.uniform(-12, 12, size=3), 0, 255))
        _draw_object(draw, SHAPES[int(rng.integers(len(SHAPES)))], rgb, cx, cy, r)  # type: ignore[arg-type]
        placed += 1
    return layer


def _occluder(gap: DomainGap, quad: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """RGBA at 2x: with probability gap.occlusion, a dull rectangle over part of the product."""
    layer = Image.new("RGBA", (_SIDE, _SIDE), (0, 0, 0, 0))
    if rng.random() >= gap.occlusion:
        return layer
    lo, hi = quad.min(axis=0), quad.max(axis=0)
    side = rng.uniform(*gap.occluder_side) * float(np.mean(hi - lo))
    cx, cy = (float(v) for v in rng.uniform(lo, hi))
    w, h = side * rng.uniform(0.6, 1.4), side * rng.uniform(0.6, 1.4)
    grey = rng.uniform(40, 200)
    rgb = tuple(int(v) for v in np.clip(grey + rng.uniform(-25, 25, size=3), 0, 255))
    ImageDraw.Draw(layer).rectangle([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], fill=(*rgb, 255))
    return layer


def _photometric(pixels: np.ndarray, gap: DomainGap, rng: np.random.Generator) -> np.ndarray:
    """Colour cast, exposure, blur and noise on uint8 [128, 128, 3]."""
    blurred = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(float(rng.uniform(*gap.blur))))
    arr = np.asarray(blurred, dtype=np.float32)
    gain = (1.0 + rng.uniform(-gap.color_cast, gap.color_cast, size=3)) * (
        1.0 + rng.uniform(-gap.exposure, gap.exposure)
    )
    arr = arr * gain.astype(np.float32)
    arr = arr + float(rng.uniform(*gap.noise)) * rng.standard_normal(size=arr.shape, dtype=np.float32)
    return np.clip(arr, 0, 255).astype(np.uint8)


def street_image(objects: Scene, gap: DomainGap, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uint8 [128, 128, 3] street shot, float32 [36] product coverage, float32 [36] distractor
    coverage). The product's objects are drawn over transparency, warped as one picture (scale,
    position, rotation, perspective) and laid over a cluttered background with distractors."""
    quad = _product_quad(gap, rng)
    square = np.array([[0, 0], [_SIDE, 0], [_SIDE, _SIDE], [0, _SIDE]], dtype=np.float64)
    coefficients = _perspective_coefficients(square, quad)
    product = _object_layer(objects, rng).transform(
        (_SIDE, _SIDE), Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BILINEAR
    )
    scale = float(np.linalg.norm(quad[1] - quad[0]) + np.linalg.norm(quad[2] - quad[1])) / (2 * _SIDE)
    product_alpha = _alpha(product)
    distractors = _distractor_layer(gap, scale, product_alpha, rng)
    occluder = _occluder(gap, quad, rng)
    image = _street_background(gap, rng)
    for layer in (distractors, product, occluder):
        image = Image.alpha_composite(image, layer)
    image = image.convert("RGB").resize((render.IMAGE_SIZE, render.IMAGE_SIZE), Image.Resampling.BOX)
    visible = 1.0 - _alpha(occluder)
    pixels = _photometric(np.asarray(image, dtype=np.uint8), gap, rng)
    return pixels, region_coverage(product_alpha * visible), region_coverage(_alpha(distractors) * visible)


def _accessories(objects: Scene, gap: DomainGap, rng: np.random.Generator) -> Scene:
    """Random objects in some of the product's empty cells (as many as the range and room allow)."""
    empty = [c for c in range(9) if c not in {o.cell for o in objects}]
    n = min(len(empty), int(rng.integers(gap.shop_accessories[0], gap.shop_accessories[1] + 1)))
    cells = rng.choice(empty, size=n, replace=False) if n else []
    return canonical(
        [
            SceneObject(
                SHAPES[int(rng.integers(len(SHAPES)))],
                COLORS[int(rng.integers(len(COLORS)))],
                SIZES[int(rng.integers(len(SIZES)))],
                int(c),
            )
            for c in cells
        ]
    )


def _sample_products(name: str, n: int, seed: int, forbidden: set[str], gap: DomainGap) -> list[Product]:
    """n distinct scene graphs of 2-5 objects, none in `forbidden`, each with a theme and the
    accessories of its shop image."""
    rng = np.random.default_rng([seed, _SPLIT_CODE[name], 0, 17])
    products: list[Product] = []
    seen: set[str] = set()
    while len(products) < n:
        objects = scenes.sample_scene(rng, hold_out=False)
        key = scene_key(objects)
        if len(objects) < 2 or key in seen or key in forbidden:
            continue
        seen.add(key)
        theme = THEMES[int(rng.integers(len(THEMES)))]
        products.append(
            Product(
                f"{name}-product-{len(products):05d}",
                objects,
                theme,
                scenes.true_keywords(objects, theme),
                _accessories(objects, gap, rng),
            )
        )
    return products


def _render_products(
    name: str, products: list[Product], first: int, shots: int, seed: int, gap: DomainGap
) -> tuple[np.ndarray, ...]:
    """The shop image and street shots of products[i] as product row first + i, with their
    coverages: (shop pixels, shop product coverage, accessory coverage, street pixels, street
    product coverage, distractor coverage)."""
    code = _SPLIT_CODE[name]
    shops, streets = [], []
    for i, product in enumerate(products):
        shops.append(shop_image(product, np.random.default_rng([seed, code, _SHOP, first + i])))
        for shot in range(shots):
            rng = np.random.default_rng([seed, code, _STREET, first + i, shot])
            streets.append(street_image(product.objects, gap, rng))
    return tuple(np.stack(column) for column in (*zip(*shops, strict=True), *zip(*streets, strict=True)))


def _build_split(name: str, products: list[Product], shots: int, seed: int, gap: DomainGap) -> StreetShopSplit:
    """One shop image and `shots` street shots per product, each from its own random stream, so
    the products render in parallel (one forked process per core, up to 4; the workers touch
    only numpy and PIL, never the caller's torch) to the same pixels as one process would."""
    workers = max(1, min(4, os.cpu_count() or 1, len(products) // 50))
    bounds = np.linspace(0, len(products), workers + 1).astype(int)
    chunks = [(name, products[a:b], int(a), shots, seed, gap) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    if workers == 1:
        parts = [_render_products(*chunk) for chunk in chunks]
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            parts = list(pool.map(_render_products, *zip(*chunks, strict=True)))
    shop, shop_product, shop_accessory, street, street_product, street_distractor = (
        np.concatenate(arrays) for arrays in zip(*parts, strict=True)
    )
    return StreetShopSplit(
        name=name,
        products=products,
        shop_pixels=shop,
        shop_product_coverage=shop_product,
        shop_accessory_coverage=shop_accessory,
        street_pixels=street,
        street_product=np.repeat(np.arange(len(products), dtype=np.int64), shots),
        street_product_coverage=street_product,
        street_distractor_coverage=street_distractor,
    )


def build_street_shop(size: str = "ci", seed: int = 0, gap: DomainGap = DEFAULT_GAP) -> StreetShopCorpus:
    """Generate the corpus in memory (deterministic in size, seed and gap)."""
    if size not in STREET_SHOP_SIZES:
        raise ValueError(f"unknown street/shop size {size!r}; allowed: {', '.join(STREET_SHOP_SIZES)}")
    cfg = STREET_SHOP_SIZES[size]
    test_products = _sample_products("test", cfg.test_products, seed, set(), gap)
    forbidden = {scene_key(p.objects) for p in test_products}
    train_products = _sample_products("train", cfg.train_products, seed, forbidden, gap)
    return StreetShopCorpus(
        size=size,
        seed=seed,
        train=_build_split("train", train_products, cfg.train_shots, seed, gap),
        test=_build_split("test", test_products, cfg.test_shots, seed, gap),
        keyword_vocab=list(KEYWORD_VOCAB),
    )


def fingerprint(gap: DomainGap = DEFAULT_GAP) -> str:
    """STREET_SHOP_VERSION plus a hash of the generator's sources and the domain settings."""
    h = hashlib.sha256()
    for module in sorted([render, scenes, vocab], key=lambda m: m.__name__):
        h.update(Path(module.__file__).read_bytes())
    h.update(Path(__file__).read_bytes())
    h.update(json.dumps(asdict(gap), sort_keys=True).encode())
    return f"v{STREET_SHOP_VERSION}-{h.hexdigest()[:10]}"


def street_shop_cache_path(
    size: str, seed: int, cache_dir: str | Path = "build/corpus", gap: DomainGap = DEFAULT_GAP
) -> Path:
    return Path(cache_dir) / f"street_shop-{size}-{seed}-{fingerprint(gap)}"


_ARRAYS = (
    "shop_pixels",
    "shop_product_coverage",
    "shop_accessory_coverage",
    "street_pixels",
    "street_product",
    "street_product_coverage",
    "street_distractor_coverage",
)


def _product_to_json(p: Product) -> dict[str, object]:
    return {
        "id": p.id,
        "objects": _scene_to_json(p.objects),
        "theme": p.theme,
        "tags": p.tags,
        "accessories": _scene_to_json(p.accessories),
    }


def _scene_to_json(objects: Scene) -> list[list[object]]:
    return [[o.shape, o.color, o.size, o.cell] for o in objects]


def _scene_from_json(rows: list[list[object]]) -> Scene:
    return tuple(SceneObject(str(s), str(c), str(z), int(cell)) for s, c, z, cell in rows)  # type: ignore[call-overload]


def _product_from_json(d: dict[str, object]) -> Product:
    return Product(
        str(d["id"]),
        _scene_from_json(d["objects"]),
        str(d["theme"]),
        list(d["tags"]),  # type: ignore[arg-type]
        _scene_from_json(d["accessories"]),
    )  # type: ignore[arg-type]


def save_street_shop(corpus: StreetShopCorpus, directory: Path) -> None:
    """records.json + arrays.npz, written to a temporary folder then renamed into place."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=directory.name + ".", dir=directory.parent))
    try:
        arrays = {f"{s.name}_{a}": getattr(s, a) for s in (corpus.train, corpus.test) for a in _ARRAYS}
        np.savez(tmp / "arrays.npz", **arrays)
        meta = {
            "size": corpus.size,
            "seed": corpus.seed,
            "keyword_vocab": corpus.keyword_vocab,
            "products": {s.name: [_product_to_json(p) for p in s.products] for s in (corpus.train, corpus.test)},
        }
        (tmp / "records.json").write_text(json.dumps(meta))
        os.replace(tmp, directory)
    except OSError:
        if not directory.exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_street_shop(directory: Path) -> StreetShopCorpus:
    meta = json.loads((directory / "records.json").read_text())
    splits = {}
    with np.load(directory / "arrays.npz") as arrays:
        for name in ("train", "test"):
            products = [_product_from_json(d) for d in meta["products"][name]]
            splits[name] = StreetShopSplit(name, products, **{a: arrays[f"{name}_{a}"] for a in _ARRAYS})
    return StreetShopCorpus(
        meta["size"], int(meta["seed"]), splits["train"], splits["test"], list(meta["keyword_vocab"])
    )


def load_or_build_street_shop(size: str, seed: int = 0, cache_dir: str | Path = "build/corpus") -> StreetShopCorpus:
    """The cached corpus under <cache_dir>/street_shop-<size>-<seed>-<fingerprint>/, built on a miss."""
    return load_or_build_cached(
        street_shop_cache_path(size, seed, cache_dir),
        f"street_shop-{size}-{seed}-v*",
        lambda: build_street_shop(size, seed),
        save_street_shop,
        load_street_shop,
    )

"""Drawing a scene graph to a 128x128 RGB image, and the visual corruptions."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from models.corpus.vocab import COLOR_RGB, Scene

IMAGE_SIZE = 128
_SCALE = 2  # drawn at 2x then downsampled: smooth edges at no real cost
_RADIUS = {"small": 9.0, "large": 17.0}  # half extent in output pixels; a cell is ~42.7 px
CORRUPTIONS: tuple[str, ...] = ("blur", "noise", "contrast")


def _background(rng: np.random.Generator) -> Image.Image:
    """A light tinted vertical gradient (drawn at 2x)."""
    side = IMAGE_SIZE * _SCALE
    top = rng.uniform(195, 250, size=3)
    bottom = np.clip(top + rng.uniform(-30, 15, size=3), 170, 255)
    t = np.linspace(0.0, 1.0, side)[:, None, None]
    column = ((1 - t) * top + t * bottom).astype(np.uint8)  # [side, 1, 3]
    return Image.fromarray(column, "RGB").resize((side, side), Image.Resampling.NEAREST)


def _draw_object(
    draw: ImageDraw.ImageDraw, shape: str, rgb: tuple[int, int, int], cx: float, cy: float, r: float
) -> None:
    s = _SCALE
    cx, cy, r = cx * s, cy * s, r * s
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
    elif shape == "rectangle":
        h = r * 0.85
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=rgb)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r)], fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render_scene(objects: Scene, rng: np.random.Generator) -> np.ndarray:
    """uint8 [128, 128, 3]: objects at their cell centres (jittered a few pixels, colour jitter
    of +-12 per channel) over a gradient background, with uniform +-10 pixel noise everywhere."""
    img = _background(rng)
    draw = ImageDraw.Draw(img)
    cell = IMAGE_SIZE / 3
    for o in objects:
        row, col = divmod(o.cell, 3)
        cx = (col + 0.5) * cell + rng.uniform(-4, 4)
        cy = (row + 0.5) * cell + rng.uniform(-4, 4)
        r = _RADIUS[o.size] * rng.uniform(0.92, 1.08)
        base = np.array(COLOR_RGB[o.color], dtype=np.float64)
        rgb = tuple(int(v) for v in np.clip(base + rng.uniform(-12, 12, size=3), 0, 255))
        _draw_object(draw, o.shape, rgb, cx, cy, r)  # type: ignore[arg-type]
    img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    arr = np.asarray(img, dtype=np.int16)
    arr = arr + rng.integers(-10, 11, size=arr.shape, dtype=np.int16)  # uniform, sd ~6
    return np.clip(arr, 0, 255).astype(np.uint8)


def corrupt(pixels: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Blur (Gaussian, radius 1.6-2.6), heavy noise (sigma 25-40) or low contrast (blend to the
    mean grey, keeping 25-40% of the contrast)."""
    if kind == "blur":
        img = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(float(rng.uniform(1.6, 2.6))))
        return np.asarray(img, dtype=np.uint8).copy()
    arr = pixels.astype(np.float32)
    if kind == "noise":
        sigma = float(rng.uniform(25, 40))
        arr = arr + sigma * rng.standard_normal(size=arr.shape, dtype=np.float32)
    elif kind == "contrast":
        keep = float(rng.uniform(0.25, 0.4))
        arr = arr.mean() + keep * (arr - arr.mean())
    else:
        raise ValueError(f"unknown corruption {kind!r}")
    return np.clip(arr, 0, 255).astype(np.uint8)

"""Building the corpus: splits, composed queries, the on-disk cache and image folders.

The test split is built first; the train split then rejects every scene graph the test split
holds (base scenes and composed targets alike) and every held-out colour-shape pair, so that the
two splits share no scene and the test split has combinations train never shows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from models import metrics
from models.corpus import queries, records, render, scenes, vocab
from models.corpus.records import ComposedQuery, Corpus, ImageRecord, Split
from models.corpus.vocab import KEYWORD_VOCAB, THEMES, Scene, caption, scene_key

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
CORRUPTION_RATE = 0.2
_SPLIT_CODE = {"train": 1, "test": 2}


@dataclass(frozen=True)
class SizeConfig:
    train_base: int  # base scenes (one image each)
    train_composed: int  # composed queries = rendered targets
    test_base: int
    test_composed: int
    train_text_per_family: int
    test_text_per_family: int
    image_queries: int  # per split


CORPUS_SIZES: dict[str, SizeConfig] = {
    "ci": SizeConfig(450, 150, 200, 100, 25, 25, 100),
    "demo": SizeConfig(2000, 1000, 700, 300, 250, 100, 300),
    "full": SizeConfig(8000, 4000, 2000, 1000, 1000, 250, 1000),
}


def _image(
    split: str, index: int, objects: Scene, theme: str | None, labels: dict[str, int], seed: int
) -> tuple[ImageRecord, np.ndarray]:
    """Render one image; every random draw comes from its own (seed, split, index) stream."""
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
    if theme is None:
        theme = THEMES[int(rng.integers(len(THEMES)))]
    pixels = render.render_scene(objects, rng)
    corruption = ""
    if rng.random() < CORRUPTION_RATE:
        corruption = render.CORRUPTIONS[int(rng.integers(len(render.CORRUPTIONS)))]
        pixels = render.corrupt(pixels, corruption, rng)
    key = scene_key(objects)
    labels.setdefault(key, len(labels))
    record = ImageRecord(
        id=f"{split}-{index:05d}",
        objects=objects,
        theme=theme,
        caption=caption(objects),
        true_keywords=scenes.true_keywords(objects, theme),
        noisy_keywords=scenes.noisy_keywords(objects, theme, rng),
        label=labels[key],
        corrupted=bool(corruption),
        corruption=corruption,
    )
    return record, pixels


def _build_split(name: str, cfg: SizeConfig, seed: int, labels: dict[str, int], forbidden: set[str]) -> Split:
    hold_out = name == "train"
    n_base = cfg.train_base if hold_out else cfg.test_base
    n_composed = cfg.train_composed if hold_out else cfg.test_composed
    rng = np.random.default_rng([seed, _SPLIT_CODE[name], 0, 7])

    base: list[Scene] = []
    seen: set[str] = set()
    while len(base) < n_base:
        s = scenes.sample_scene(rng, hold_out)
        k = scene_key(s)
        if k not in seen and k not in forbidden:
            seen.add(k)
            base.append(s)

    pixels = np.empty((n_base + n_composed, render.IMAGE_SIZE, render.IMAGE_SIZE, 3), dtype=np.uint8)
    images: list[ImageRecord] = []
    for i, s in enumerate(base):
        rec, pixels[i] = _image(name, i, s, None, labels, seed)
        images.append(rec)
    composed: list[ComposedQuery] = []
    attempts = 0
    while len(composed) < n_composed and attempts < 50 * n_composed:
        attempts += 1
        first = int(rng.integers(n_base))
        mod = scenes.sample_modification(base[first], rng, hold_out)
        if mod is None:
            continue
        # the same modification text applied to a few (1-3) compatible sources
        probe = rng.choice(n_base, size=min(n_base, 400), replace=False)
        others = [int(i) for i in probe if i != first and scenes.is_compatible(base[i], mod)]
        sources = [first] + others[: int(rng.integers(0, 3))]
        for src in sources:
            target = scenes.apply_modification(base[src], mod)
            if scene_key(target) in forbidden or (hold_out and not scenes.respects_hold_out(target)):
                continue
            if len(composed) >= n_composed:
                break
            source_record = images[src]
            rec, pixels[len(images)] = _image(name, len(images), target, source_record.theme, labels, seed)
            images.append(rec)
            composed.append(
                ComposedQuery(
                    id=f"{name}-composed-{len(composed):05d}",
                    source_id=source_record.id,
                    modification=mod.text,
                    target_id=rec.id,
                    target_label=rec.label,
                    kind=mod.kind,
                )
            )

    pixels = pixels[: len(images)]
    n_text = cfg.train_text_per_family if hold_out else cfg.test_text_per_family
    q_rng = np.random.default_rng([seed, _SPLIT_CODE[name], 0, 11])
    return Split(
        name=name,
        images=images,
        pixels=pixels,
        text_queries=queries.make_text_queries(images, n_text, q_rng, name),
        image_queries=queries.make_image_queries(images, cfg.image_queries, q_rng, name),
        composed_queries=composed,
    )


def build_corpus(size: str = "ci", seed: int = 0) -> Corpus:
    """Generate the corpus in memory (deterministic in `size` and `seed`)."""
    if size not in CORPUS_SIZES:
        raise ValueError(f"unknown corpus size {size!r}; allowed: {', '.join(CORPUS_SIZES)}")
    cfg = CORPUS_SIZES[size]
    labels: dict[str, int] = {}
    test = _build_split("test", cfg, seed, labels, forbidden=set())
    test_keys = {scene_key(r.objects) for r in test.images}
    train = _build_split("train", cfg, seed, labels, forbidden=test_keys)
    return Corpus(size=size, seed=seed, train=train, test=test, keyword_vocab=list(KEYWORD_VOCAB))


def generator_fingerprint() -> str:
    """GENERATOR_VERSION plus a hash of the generator's source (with models/metrics.py, whose
    TfIdf picks and grades the image queries' candidates): any code change is a new cache."""
    h = hashlib.sha256()
    sources = [metrics, queries, records, render, scenes, vocab]
    files = [Path(m.__file__) for m in sources] + [Path(__file__)]
    for f in sorted(files):
        h.update(f.read_bytes())
    return f"v{GENERATOR_VERSION}-{h.hexdigest()[:10]}"


def cache_path(size: str, seed: int, cache_dir: str | Path = "build/corpus") -> Path:
    return Path(cache_dir) / f"{size}-{seed}-{generator_fingerprint()}"


def save_corpus(corpus: Corpus, directory: Path) -> None:
    """records.json + pixels.npz, written to a temporary folder then renamed into place."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=directory.name + ".", dir=directory.parent))
    try:
        np.savez(tmp / "pixels.npz", train=corpus.train.pixels, test=corpus.test.pixels)
        meta = {
            "size": corpus.size,
            "seed": corpus.seed,
            "keyword_vocab": corpus.keyword_vocab,
            "train": records.split_to_json(corpus.train),
            "test": records.split_to_json(corpus.test),
        }
        (tmp / "records.json").write_text(json.dumps(meta))
        os.replace(tmp, directory)
    except OSError:
        if not directory.exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_corpus(directory: Path) -> Corpus:
    meta = json.loads((directory / "records.json").read_text())
    with np.load(directory / "pixels.npz") as px:
        train_px, test_px = px["train"], px["test"]
    return Corpus(
        size=meta["size"],
        seed=int(meta["seed"]),
        train=records.split_from_json(meta["train"], train_px),
        test=records.split_from_json(meta["test"], test_px),
        keyword_vocab=list(meta["keyword_vocab"]),
    )


def load_or_build_corpus(size: str, seed: int = 0, cache_dir: str | Path = "build/corpus") -> Corpus:
    """The cached corpus under <cache_dir>/<size>-<seed>-<fingerprint>/, built on a miss."""
    return load_or_build_cached(
        cache_path(size, seed, cache_dir),
        f"{size}-{seed}-v*",
        lambda: build_corpus(size, seed),
        save_corpus,
        load_corpus,
    )


def load_or_build_cached(directory: Path, stale_pattern: str, build, save, load):
    """`load(directory)` when a finished cache is there; else `build()`, `save(it, directory)`,
    and remove the caches beside it that match `stale_pattern` (older fingerprints)."""
    if (directory / "records.json").exists():
        return load(directory)
    log.info("building %s", directory)
    built = build()
    save(built, directory)
    for stale in directory.parent.glob(stale_pattern):
        if stale != directory and stale.is_dir() and (stale / "records.json").exists():
            log.info("removing the stale cache %s", stale)
            shutil.rmtree(stale, ignore_errors=True)
    return built


def write_image_dir(split: Split, directory: str | Path, tags: str = "none") -> list[Path]:
    """Write <id>.png per image and metadata.jsonl (id, title = caption, tags) for
    `amcsearch index DIR`. `tags`: "none" (empty lists), "true" or "noisy" keywords."""
    if tags not in ("none", "true", "noisy"):
        raise ValueError(f"tags must be 'none', 'true' or 'noisy', got {tags!r}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    with (out / "metadata.jsonl").open("w") as meta:
        for record, pixels in zip(split.images, split.pixels, strict=True):
            path = out / f"{record.id}.png"
            Image.fromarray(pixels).save(path)
            paths.append(path)
            words = {
                "none": [],
                "true": record.true_keywords,
                "noisy": [k for k, _ in record.noisy_keywords],
            }[tags]
            meta.write(json.dumps({"id": record.id, "title": record.caption, "tags": words}) + "\n")
    return paths

"""Scale corpora for the serving benchmark: N rendered scenes, stored once as PNG bytes.

`load_or_build_scale_corpus(n, seed, directory)` renders N test-split-like scenes (the same
generator as the model corpus, its own seed stream) and text queries with their constraints, and
keeps them under <directory>/scale-<n>-<seed>-<fingerprint>/ so that a rerun does not redo them:

    images.bin     every image's PNG bytes, concatenated
    offsets.npy    int64 [N + 1]: image i is images.bin[offsets[i]:offsets[i + 1]]
    records.json   image records (caption, theme, objects, noisy keywords) and text queries

The images are PNG because that is what callers send to Index; the benchmark then spends no CPU
encoding them while it measures.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from models.corpus import queries, records, scenes
from models.corpus.build import _image, generator_fingerprint
from models.corpus.records import ImageRecord, TextQuery
from models.corpus.vocab import scene_key

log = logging.getLogger(__name__)

QUERIES_PER_FAMILY = 50


@dataclass
class ScaleCorpus:
    images: list[ImageRecord]
    text_queries: list[TextQuery]
    directory: Path

    def pngs(self, start: int, stop: int) -> list[bytes]:
        offsets = np.load(self.directory / "offsets.npy", mmap_mode="r")
        with open(self.directory / "images.bin", "rb") as data:
            data.seek(int(offsets[start]))
            blob = data.read(int(offsets[stop] - offsets[start]))
        base = int(offsets[start])
        return [blob[int(offsets[i]) - base : int(offsets[i + 1]) - base] for i in range(start, stop)]


def scale_path(n: int, seed: int, directory: str | Path) -> Path:
    """The corpus generator's fingerprint plus this file's: either changing is a new corpus."""
    own = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:6]
    return Path(directory) / f"scale-{n}-{seed}-{generator_fingerprint()}-{own}"


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def build_scale_corpus(n: int, seed: int, target: Path) -> None:
    rng = np.random.default_rng([seed, 3, n])
    labels: dict[str, int] = {}
    images: list[ImageRecord] = []
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    offsets = [0]
    try:
        with open(tmp / "images.bin", "wb") as data:
            for i in range(n):
                scene = scenes.sample_scene(rng, hold_out=False)
                record, pixels = _image("test", i, scene, None, labels, seed + 1000)
                images.append(record)
                blob = _png(pixels)
                data.write(blob)
                offsets.append(offsets[-1] + len(blob))
                if (i + 1) % 10000 == 0:
                    log.info("scale corpus %d: %d images rendered", n, i + 1)
        np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
        q_rng = np.random.default_rng([seed, 3, n, 11])
        text = queries.make_text_queries(images, QUERIES_PER_FAMILY, q_rng, f"scale{n}")
        meta = {
            "images": [records.image_to_json(r) for r in images],
            "text_queries": [asdict(q) for q in text],
            "distinct_scenes": len({scene_key(r.objects) for r in images}),
        }
        (tmp / "records.json").write_text(json.dumps(meta))
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_or_build_scale_corpus(n: int, seed: int = 0, directory: str | Path = "build/scale") -> ScaleCorpus:
    target = scale_path(n, seed, directory)
    if not (target / "records.json").exists():
        log.info("rendering the scale corpus of %d images into %s", n, target)
        build_scale_corpus(n, seed, target)
    meta = json.loads((target / "records.json").read_text())
    return ScaleCorpus(
        [records.image_from_json(d) for d in meta["images"]], [TextQuery(**q) for q in meta["text_queries"]], target
    )

"""The synthetic scene corpus ("scenes"): CSS-like 2D scenes with AMC-style noisy keywords."""

from models.corpus.build import (
    CORPUS_SIZES,
    GENERATOR_VERSION,
    build_corpus,
    cache_path,
    load_or_build_corpus,
    write_image_dir,
)
from models.corpus.records import (
    ComposedQuery,
    Corpus,
    ImageQuery,
    ImageRecord,
    Split,
    TextQuery,
)
from models.corpus.scenes import (
    Modification,
    apply_modification,
    is_compatible,
    parse_modification,
)
from models.corpus.vocab import (
    CELLS,
    COLORS,
    HELD_OUT_PAIRS,
    KEYWORD_VOCAB,
    SHAPES,
    THEMES,
    SceneObject,
    caption,
    scene_key,
)

__all__ = [
    "CELLS",
    "COLORS",
    "GENERATOR_VERSION",
    "HELD_OUT_PAIRS",
    "KEYWORD_VOCAB",
    "SHAPES",
    "CORPUS_SIZES",
    "THEMES",
    "ComposedQuery",
    "Corpus",
    "ImageQuery",
    "ImageRecord",
    "Modification",
    "SceneObject",
    "Split",
    "TextQuery",
    "apply_modification",
    "build_corpus",
    "cache_path",
    "caption",
    "is_compatible",
    "load_or_build_corpus",
    "parse_modification",
    "scene_key",
    "write_image_dir",
]

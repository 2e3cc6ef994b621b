"""KeywordTagger settings: KEYWORD_TAGGER_* plus the shared TRITON_*."""

from __future__ import annotations

from dataclasses import dataclass

from amcsearch.runtime.settings import ImageLimits, ServerSettings, SettingsError, TritonSettings, from_env, nested

PREFIX = "KEYWORD_TAGGER"


@dataclass(frozen=True)
class KeywordTaggerSettings:
    server: ServerSettings = nested(ServerSettings)
    triton: TritonSettings = nested(TritonSettings)
    images: ImageLimits = nested(ImageLimits)
    max_batch: int = 64
    """Images per Tag request."""
    default_threshold: float = 0.5
    """Keywords below this probability are dropped unless the request says otherwise."""
    default_top_k: int = 10
    max_top_k: int = 64
    placement_threshold: float = 0.5
    """Placements ("red@top-left") below this probability are dropped."""
    max_placements: int = 27
    """Placements kept per image: a colour, a shape and a size in each of the 9 cells."""

    def validate(self) -> None:
        if not 0 < self.default_threshold <= 1:
            raise SettingsError("KEYWORD_TAGGER_DEFAULT_THRESHOLD must be in (0, 1]")
        if not 0 < self.placement_threshold <= 1:
            raise SettingsError("KEYWORD_TAGGER_PLACEMENT_THRESHOLD must be in (0, 1]")
        if self.max_placements < 0:
            raise SettingsError("KEYWORD_TAGGER_MAX_PLACEMENTS must be >= 0")


def load_settings() -> KeywordTaggerSettings:
    return from_env(KeywordTaggerSettings, PREFIX)

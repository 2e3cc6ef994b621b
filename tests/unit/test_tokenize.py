"""The query encoder's tokenizer: padded to the batch's longest (multiple of 8, at most 32),
truncation reported, case and spacing normalised."""

import numpy as np
import pytest
from amcsearch.query_encoder.tokenize import SEQ_LEN, Tokenizer, normalize_text


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.default()


def test_normalize_text_trims_collapses_and_lowercases() -> None:
    assert normalize_text("  Red \t Circle\n ") == "red circle"
    assert normalize_text("Red Circle") == normalize_text("red   circle")


def test_encode_pads_to_the_longest_in_multiples_of_8_with_int64(tok: Tokenizer) -> None:
    ids, mask, truncated = tok.encode(["red circle", ""])
    assert ids.shape == (2, 8) and mask.shape == (2, 8)
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids[0, :4].tolist() == [101, 2417, 4418, 102]  # [CLS] red circle [SEP]
    assert mask[0].tolist() == [1] * 4 + [0] * 4
    nine_words = " ".join(["red"] * 9)  # 11 tokens with [CLS] and [SEP]
    assert tok.encode([nine_words, "red"])[0].shape == (2, 16)
    assert ids[1, :2].tolist() == [101, 102] and mask[1].sum() == 2
    assert (ids[mask == 0] == 0).all()
    assert truncated == [False, False]


def test_case_and_spacing_give_identical_tokens(tok: Tokenizer) -> None:
    ids, _, _ = tok.encode(["Make the  RED circle blue", "make the red circle blue"])
    assert (ids[0] == ids[1]).all()


def test_truncation_is_reported_only_past_30_word_pieces(tok: Tokenizer) -> None:
    fits = " ".join(["red"] * (SEQ_LEN - 2))
    too_long = " ".join(["red"] * (SEQ_LEN - 1))
    ids, mask, truncated = tok.encode([fits, too_long])
    assert truncated == [False, True]
    assert mask.sum(1).tolist() == [SEQ_LEN, SEQ_LEN]
    assert ids[1, -1] == 102  # [SEP] kept at the end of a truncated text


def test_empty_batch(tok: Tokenizer) -> None:
    ids, mask, truncated = tok.encode([])
    assert ids.shape[0] == 0 and mask.shape[0] == 0 and truncated == []


def test_from_file_equals_default(tok: Tokenizer) -> None:
    from amcsearch.query_encoder.tokenize import default_tokenizer_path

    other = Tokenizer.from_file(default_tokenizer_path())
    a, _, _ = tok.encode(["add large red circle to top-left"])
    b, _, _ = other.encode(["add large red circle to top-left"])
    assert (a == b).all()

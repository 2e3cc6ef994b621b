"""The plain-torch MiniLM matches sentence-transformers' all-MiniLM-L6-v2, eager and scripted."""

import io
import os

import pytest
import torch
from amcsearch.query_encoder.tokenize import Tokenizer

from models.nets.text_encoder import TextEncoder, embed_texts, encode_texts, load_text_encoder, model_dir

SENTENCES = [
    "make the red circle blue",
    "A large green triangle in the top-left corner",
    "holiday sale vintage",
    "remove top-right object",
    "x",
]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    torch.set_num_threads(1)
    return load_text_encoder()


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.default()


@pytest.fixture(scope="module")
def reference() -> torch.Tensor:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir()), device="cpu")
    return st.encode(SENTENCES, convert_to_tensor=True).float()


def _run(module: torch.nn.Module, tok: Tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask, _ = tok.encode(SENTENCES)
    with torch.no_grad():
        return module(torch.from_numpy(ids), torch.from_numpy(mask))


def test_eager_matches_sentence_transformers(encoder, tok, reference) -> None:
    emb, tokens = _run(encoder, tok)
    longest = max(int(m.sum()) for m in tok.encode(SENTENCES)[1])
    assert emb.shape == (len(SENTENCES), 384) and tokens.shape == (len(SENTENCES), -(-longest // 8) * 8, 384)
    cos = torch.nn.functional.cosine_similarity(emb, reference, dim=1)
    assert cos.min().item() >= 0.999
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(SENTENCES)), atol=1e-5)


def test_scripted_and_reloaded_matches_sentence_transformers(encoder, tok, reference) -> None:
    scripted = torch.jit.script(encoder)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    emb, tokens = _run(loaded, tok)
    eager_emb, eager_tokens = _run(encoder, tok)
    cos = torch.nn.functional.cosine_similarity(emb, reference, dim=1)
    assert cos.min().item() >= 0.999
    assert torch.allclose(tokens, eager_tokens, atol=1e-5)


def test_padding_does_not_change_the_embedding(encoder, tok) -> None:
    ids, mask, _ = tok.encode(["red circle"])
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.no_grad():
        full, _ = encoder(ids_t, mask_t)
        short, _ = encoder(ids_t[:, :4], mask_t[:, :4])
    assert torch.allclose(full, short, atol=1e-5)


def test_embed_texts_accepts_both_spellings_and_dedups(encoder, tok, reference) -> None:
    a = embed_texts(encoder, SENTENCES)
    b = embed_texts(encoder, tok, SENTENCES + SENTENCES[:2], batch_size=2)
    assert a.shape == (len(SENTENCES), 384) and b.shape == (len(SENTENCES) + 2, 384)
    assert torch.allclose(a, b[: len(SENTENCES)], atol=1e-5)
    assert torch.equal(b[-2:], b[:2])
    assert torch.nn.functional.cosine_similarity(a, reference, dim=1).min() >= 0.999


def test_encode_texts_zeroes_padded_token_states(encoder, tok) -> None:
    emb, tokens = encode_texts(encoder, ["red circle"], tokenizer=tok)
    assert tokens is not None and tokens.shape == (1, 32, 384)
    assert tokens[0, 4:].abs().sum() == 0 and tokens[0, :4].abs().sum() > 0


def test_weights_are_frozen(encoder) -> None:
    assert not any(p.requires_grad for p in encoder.parameters())

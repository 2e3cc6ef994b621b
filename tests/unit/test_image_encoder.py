"""ImageEncoder, KeywordTagger and the query-by-image evaluation: tensor contract, uint8 input,
scriptability, determinism, ranking metrics on a hand-made split."""

import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from models.eval.image_search import evaluate_image_search, score_embeddings
from models.nets.image_encoder import ImageEncoder, cells_from_regions, regions_from_map
from models.nets.keyword_tagger import KeywordTagger


def _images(batch: int = 3, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, size=(batch, 128, 128, 3), dtype=np.uint8))


def _encoder(seed: int = 0) -> ImageEncoder:
    torch.manual_seed(seed)
    return ImageEncoder().eval()


def test_encoder_outputs_follow_the_tensor_contract() -> None:
    embedding, regions = _encoder()(_images(3))
    assert embedding.shape == (3, 384) and embedding.dtype == torch.float32
    assert regions.shape == (3, 36, 128) and regions.dtype == torch.float32
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(3))


def test_encoder_casts_inside_so_uint8_and_float_pixels_agree() -> None:
    images = _images(2)
    encoder = _encoder()
    from_uint8 = encoder(images)[0]
    from_float = encoder(images.to(torch.float32))[0]
    torch.testing.assert_close(from_uint8, from_float)


def test_scripted_encoder_matches_eager_and_survives_save_load() -> None:
    encoder = _encoder()
    images = _images(2)
    scripted = torch.jit.script(encoder)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    for got, want in zip(loaded(images), encoder(images), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_same_seed_gives_same_weights_and_outputs() -> None:
    images = _images(2)
    a, b = _encoder(7)(images), _encoder(7)(images)
    torch.testing.assert_close(a[0], b[0], atol=0.0, rtol=0.0)
    c = _encoder(8)(images)
    assert not torch.allclose(a[0], c[0])


def test_batch_items_are_independent_in_eval_mode() -> None:
    encoder = _encoder()
    images = _images(4)
    alone = encoder(images[1:2])[0]
    together = encoder(images)[0][1:2]
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=1e-5)


def test_regions_are_row_major_and_cells_average_2x2_blocks() -> None:
    fmap = torch.zeros(1, 2, 12, 12)
    fmap[0, 0, 0:2, 10:12] = 1.0  # top-right 2x2 pixels -> region (0, 5)
    regions = regions_from_map(fmap)
    assert regions.shape == (1, 36, 2)
    assert int(regions[0, :, 0].argmax()) == 5
    cells = cells_from_regions(torch.arange(36, dtype=torch.float32).view(1, 36, 1))
    # cell 0 = regions 0, 1, 6, 7; cell 8 = regions 28, 29, 34, 35
    assert cells[0, 0, 0].item() == pytest.approx((0 + 1 + 6 + 7) / 4)
    assert cells[0, 8, 0].item() == pytest.approx((28 + 29 + 34 + 35) / 4)


def test_region_features_are_local() -> None:
    """Changing only the top-left scene cell changes the top-left regions far more than the rest."""
    encoder = _encoder()
    base = torch.full((1, 128, 128, 3), 90, dtype=torch.uint8)
    edited = base.clone()
    edited[0, 5:35, 5:35] = 250
    delta = (encoder(edited)[1] - encoder(base)[1]).abs().sum(dim=2).view(6, 6)
    assert delta[:2, :2].mean() > 5 * delta[4:, 4:].mean()


def test_keyword_tagger_gives_probabilities_and_scripts() -> None:
    tagger = KeywordTagger(_encoder(), vocab_size=17, placement_attributes=13).eval()
    probabilities, placements = torch.jit.script(tagger)(_images(2))
    assert probabilities.shape == (2, 17)
    assert placements.shape == (2, 9 * 13)
    for p in (probabilities, placements):
        assert bool(((p >= 0) & (p <= 1)).all())


def _tiny_split() -> SimpleNamespace:
    ids = ["a", "b", "c", "d"]
    query = SimpleNamespace(image_id="a", candidate_ids=["b", "c", "d"], relevance=[0.9, 0.5, 0.0])
    return SimpleNamespace(
        image_queries=[query],
        index_of=ids.index,
        pixels=np.random.default_rng(0).integers(0, 256, (4, 128, 128, 3), dtype=np.uint8),
    )


def test_score_embeddings_rewards_the_proxy_order() -> None:
    split = _tiny_split()
    good = torch.tensor([[1.0, 0.0], [0.95, 0.3], [0.5, 0.8], [-1.0, 0.1]])
    bad = torch.tensor([[1.0, 0.0], [-1.0, 0.1], [0.5, 0.8], [0.95, 0.3]])
    good_scores, bad_scores = score_embeddings(split, good), score_embeddings(split, bad)
    assert good_scores["NDCG@5"] == pytest.approx(1.0)
    assert bad_scores["NDCG@5"] < good_scores["NDCG@5"]
    assert good_scores["Pearson"] > 0.9 > bad_scores["Pearson"]


def test_evaluate_image_search_returns_one_row_per_model() -> None:
    torch.manual_seed(0)
    rows = evaluate_image_search(_tiny_split(), ImageEncoder(), ImageEncoder())
    assert [r["model"] for r in rows] == ["pixels (no learning)", "image encoder, untrained", "image encoder, trained"]
    assert all({"NDCG@5", "NDCG@10", "NDCG@20", "Pearson"} <= set(r) for r in rows)


def test_caption_neighbours_exclude_self_and_rank_by_tfidf() -> None:
    from models.train.image_encoder import caption_neighbours, caption_tfidf

    captions = [
        "a large red circle at top-left",
        "a large red circle at top-left",
        "a small red circle at top-left",
        "a small blue triangle at bottom-right",
    ]
    neighbours = caption_neighbours(caption_tfidf(captions), k=2)
    assert neighbours.shape == (4, 2)
    assert neighbours[0, 0] == 1 and neighbours[1, 0] == 0
    assert all(row not in neighbours[row] for row in range(4))


def test_losses_prefer_embeddings_that_follow_their_targets() -> None:
    from models.train.image_encoder import info_nce, tfidf_triplet

    text = torch.nn.functional.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    same = torch.eye(6, dtype=torch.bool)
    scale = torch.tensor(10.0)
    assert info_nce(text, text, same, scale) < info_nce(text.roll(1, 0), text, same, scale)
    # anchors 0..1, positives 2..3; the proxy says rows 4, 5 are far from both anchors
    tfidf = torch.eye(6)
    tfidf[2], tfidf[3] = tfidf[0], tfidf[1]
    good = torch.nn.functional.normalize(tfidf + 0.01, dim=1)
    assert tfidf_triplet(good, tfidf, anchors=2, margin=0.1) == 0
    bad = good.clone()
    bad[4] = good[0]
    assert tfidf_triplet(bad, tfidf, anchors=2, margin=0.1) > 0

"""Cross-domain search: the street/shop corpus, TagYNet and CtxYNet, their served modules, training."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from amcsearch.runtime.contract import CTX_YNET, YNET_DIM, YNET_SHOP, YNET_STREET, model_specs

from models.corpus import street_shop
from models.corpus.street_shop import (
    StreetShopSize,
    build_street_shop,
    load_or_build_street_shop,
    region_coverage,
    street_shop_cache_path,
    tag_matrix,
)
from models.corpus.vocab import KEYWORD_VOCAB, scene_key
from models.features.cross_domain import DomainFeatures, ctx_ynet_ranks, rank_of_truth, top_k_accuracy
from models.nets.ynet import (
    LOCATIONS,
    CtxYNet,
    ServedContextRescorer,
    ServedShop,
    ServedStreet,
    TagYNet,
    squared_distance,
    street_embedding,
)
from models.train.ynet import (
    as_ynet_budget,
    fit,
    held_out_products,
    product_subset,
    triplet_loss,
    validation_queries,
)

V = len(KEYWORD_VOCAB)
TINY = StreetShopSize(train_products=8, test_products=5, train_shots=2, test_shots=1)


@pytest.fixture()
def tiny(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(street_shop.STREET_SHOP_SIZES, "tiny", TINY)
    return "tiny"


def _same(a: street_shop.StreetShopSplit, b: street_shop.StreetShopSplit) -> bool:
    """Same products and every array of the split equal."""
    return a.products == b.products and all(np.array_equal(getattr(a, n), getattr(b, n)) for n in street_shop._ARRAYS)


def test_corpus_is_deterministic_and_test_products_are_never_trained_on(tiny: str) -> None:
    first, again = build_street_shop(tiny, seed=3), build_street_shop(tiny, seed=3)
    assert _same(first.train, again.train) and _same(first.test, again.test)
    assert not np.array_equal(build_street_shop(tiny, seed=4).test.shop_pixels, first.test.shop_pixels)
    train_keys = {scene_key(p.objects) for p in first.train.products}
    test_keys = {scene_key(p.objects) for p in first.test.products}
    assert len(train_keys) == TINY.train_products and len(test_keys) == TINY.test_products
    assert not train_keys & test_keys


def test_parallel_render_gives_the_pixels_of_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Enough products for worker processes (the build's default on 2+ cores) against one process."""
    monkeypatch.setattr(street_shop.os, "cpu_count", lambda: 2)
    products = street_shop._sample_products("train", 100, 5, set(), street_shop.DEFAULT_GAP)
    parallel = street_shop._build_split("train", products, 1, 5, street_shop.DEFAULT_GAP)
    monkeypatch.setattr(street_shop.os, "cpu_count", lambda: 1)
    serial = street_shop._build_split("train", products, 1, 5, street_shop.DEFAULT_GAP)
    assert _same(parallel, serial)


def test_corpus_shapes_tags_and_coverage(tiny: str) -> None:
    corpus = build_street_shop(tiny, seed=0)
    split = corpus.train
    assert split.shop_pixels.shape == (8, 128, 128, 3) and split.shop_pixels.dtype == np.uint8
    assert split.street_pixels.shape == (16, 128, 128, 3)
    assert split.street_product.tolist() == [i // 2 for i in range(16)]
    for product in split.products:
        assert 2 <= len(product.objects) <= 5 and len(product.accessories) <= 1
        assert not {o.cell for o in product.objects} & {o.cell for o in product.accessories}
        assert not {o.color for o in product.objects} - set(product.tags)  # the tags list the product
    tags = tag_matrix(split.products, corpus.keyword_vocab)
    assert tags.shape == (8, V) and set(np.unique(tags)) <= {0.0, 1.0}
    assert (split.shop_product_coverage.sum(axis=1) > 0.5).all()  # 2-5 objects of 9-17 px radius
    assert (split.street_product_coverage.sum(axis=1) > 0).all()
    street_objects = split.street_product_coverage + split.street_distractor_coverage
    assert (street_objects <= 1.0 + 1e-5).all()  # distractors never sit on the product


def test_region_coverage_uses_the_adaptive_pooling_bins() -> None:
    alpha = np.zeros((128, 128), dtype=np.float32)
    alpha[:22, :22] = 1.0  # adaptive pooling's first bin is rows and columns 0..21
    coverage = region_coverage(alpha)
    assert coverage[0] == pytest.approx(1.0) and coverage[1:].max() < 0.05


def test_corpus_cache_round_trip(tiny: str, tmp_path: Path) -> None:
    built = load_or_build_street_shop(tiny, seed=1, cache_dir=tmp_path)
    assert (street_shop_cache_path(tiny, 1, tmp_path) / "records.json").exists()
    loaded = load_or_build_street_shop(tiny, seed=1, cache_dir=tmp_path)
    assert _same(built.train, loaded.train) and _same(built.test, loaded.test)


def _models(seed: int = 0) -> tuple[TagYNet, CtxYNet]:
    torch.manual_seed(seed)
    tag_ynet, ctx_ynet = TagYNet(V).eval(), CtxYNet(V).eval()
    with torch.no_grad():  # a non-zero attention score, so the context matters
        ctx_ynet.score.saliency.normal_(0, 1.0)
        ctx_ynet.score.context_prior.normal_(0, 1.0)
    return tag_ynet, ctx_ynet


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 128, 128, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _tags(n: int) -> torch.Tensor:
    tags = torch.zeros(n, V)
    for row in range(n):
        tags[row, [row % 8, 8 + row % 3, 11, 13 + row % 6]] = 1.0
    return tags


def _scripted(module: torch.nn.Module) -> torch.jit.ScriptModule:
    scripted = torch.jit.script(module.eval())
    assert "cpu" not in scripted.code.lower()  # no tensor pinned to a device
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


def _check_contract(name: str, outputs: tuple[torch.Tensor, ...], batch: int | None) -> None:
    spec = model_specs(V)[name]
    assert len(outputs) == len(spec.outputs)
    for tensor, out in zip(spec.outputs, outputs, strict=True):
        dims = ((batch,) if batch else ()) + tensor.dims
        assert all(d == -1 or d == s for d, s in zip(dims, out.shape, strict=True)), (tensor.name, out.shape)
        assert out.dtype == torch.float32


def test_served_modules_script_and_follow_the_contract() -> None:
    tag_ynet, ctx_ynet = _models()
    images, tags = _images(3), _tags(3)
    shop, street = ServedShop(tag_ynet, ctx_ynet), ServedStreet(tag_ynet, ctx_ynet)
    rescorer = ServedContextRescorer(ctx_ynet)
    with torch.no_grad():
        shop_out = shop(images, tags)
        street_out = street(images)
        query_index = torch.tensor([0, 0, 1, 1, 1], dtype=torch.int32)
        rescore_out = rescorer(street_out[1][:2], query_index, shop_out[2][[0, 1, 2, 0, 1]])
        for module, args, eager in (
            (shop, (images, tags), shop_out),
            (street, (images,), street_out),
            (rescorer, (street_out[1][:2], query_index, shop_out[2][[0, 1, 2, 0, 1]]), rescore_out),
        ):
            for a, b in zip(_scripted(module)(*args), eager, strict=True):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    _check_contract(YNET_SHOP, shop_out, 3)
    _check_contract(YNET_STREET, street_out, 3)
    _check_contract(CTX_YNET, rescore_out, None)
    assert shop_out[0].shape == (3, YNET_DIM) and street_out[1].shape == (3, LOCATIONS, YNET_DIM)
    torch.testing.assert_close(shop_out[0].norm(dim=1), torch.ones(3))
    torch.testing.assert_close(street_out[0].norm(dim=1), torch.ones(3))
    # the rescorer's rows are the query's map attended with each candidate's context
    query, _ = ctx_ynet.query(street_out[1][[1]], shop_out[2][[2]])
    torch.testing.assert_close(rescore_out[0][2], (query - shop_out[2][2]).pow(2).sum(), atol=1e-5, rtol=1e-5)


def test_attention_sums_to_one_and_the_query_depends_on_the_context() -> None:
    tag_ynet, ctx_ynet = _models()
    with torch.no_grad():
        _, _, tag_attention = tag_ynet(_images(4), _images(4, seed=1), _tags(4))
        feats = _features(2, 1)
        locations = ctx_ynet.branches.street_locations(feats.street_regions)
        contexts, _ = ctx_ynet.context(feats.shop_regions, feats.tags)
        first, first_attention = ctx_ynet.query(locations[[0, 0]], contexts)
    torch.testing.assert_close(tag_attention.sum(dim=1), torch.ones(4))
    torch.testing.assert_close(first_attention.sum(dim=1), torch.ones(2))
    assert (first_attention >= 0).all()
    assert not torch.allclose(first[0], first[1], atol=1e-4)  # same street map, two contexts
    assert not torch.allclose(first_attention[0], first_attention[1], atol=1e-4)


def test_fresh_ctx_ynet_attends_uniformly_and_pairwise_matches_rowwise() -> None:
    torch.manual_seed(0)
    ctx_ynet = CtxYNet(V).eval()
    locations = torch.randn(3, LOCATIONS, YNET_DIM)
    contexts = F.normalize(torch.randn(4, YNET_DIM), dim=1)
    _, attention = ctx_ynet.query(locations[[0]], contexts[[1]])
    torch.testing.assert_close(attention, torch.full((1, LOCATIONS), 1.0 / LOCATIONS))
    with torch.no_grad():
        ctx_ynet.score.saliency.normal_()
        ctx_ynet.score.context_prior.normal_()
        pairwise = ctx_ynet.pairwise_distances(locations, contexts)
        query, _ = ctx_ynet.query(locations[[2]], contexts[[3]])
    torch.testing.assert_close(pairwise[2, 3], (query - contexts[3]).pow(2).sum(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(street_embedding(locations), F.normalize(locations.mean(dim=1), dim=1))
    with torch.no_grad():  # a short list per query, batched: query() row by row
        listed = contexts[torch.tensor([[3, 1], [0, 2], [1, 1]])]
        batched, batched_attention = ctx_ynet.shortlist_query(locations, listed)
        row, row_attention = ctx_ynet.query(locations[[1]], contexts[[2]])
    torch.testing.assert_close(batched[1, 1], row[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(batched_attention[1, 1], row_attention[0], atol=1e-6, rtol=1e-5)


def test_triplet_loss_masks_shots_of_the_same_product() -> None:
    distances = torch.tensor([[0.1, 0.5, 0.1], [0.9, 0.2, 0.25], [0.1, 0.3, 0.1]])
    products = torch.tensor([0, 1, 0])
    # row 0: negative column 1 only (column 2 is the same product): hinge 0.1 - 0.5 + 0.3 < 0
    # row 1: columns 0 and 2: 0.2 - 0.9 + 0.3 < 0 and 0.2 - 0.25 + 0.3 = 0.25
    # row 2: column 1: 0.1 - 0.3 + 0.3 = 0.1
    assert float(triplet_loss(distances, products, margin=0.3)) == pytest.approx((0.25 + 0.1) / 2)


def _features(n_products: int, shots: int, seed: int = 0) -> DomainFeatures:
    """Grid features in which a street shot is its product's shop features plus as much noise."""
    g = torch.Generator().manual_seed(seed)
    shop = torch.randn(n_products, LOCATIONS, 256, generator=g).relu()
    noise = torch.randn(n_products * shots, LOCATIONS, 256, generator=g).relu()
    return DomainFeatures(
        shop_regions=shop,
        shop_head=torch.rand(n_products, 1408, generator=g),
        street_regions=0.5 * shop.repeat_interleave(shots, dim=0) + 0.5 * noise,
        street_head=torch.rand(n_products * shots, 1408, generator=g),
        street_product=torch.arange(n_products).repeat_interleave(shots),
        tags=_tags(n_products),
    )


def test_held_out_products_and_subsets_are_disjoint_and_renumbered() -> None:
    fit, val = held_out_products(20, 0.25, seed=0)
    assert len(val) == 5 and not set(fit) & set(val) and sorted([*fit, *val]) == list(range(20))
    feats = _features(20, 2)
    part = product_subset(feats, val)
    assert part.shop_regions.shape[0] == 5 and part.street_regions.shape[0] == 10
    assert part.street_product.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    torch.testing.assert_close(part.street_regions[2], feats.street_regions[2 * int(val[1])])


def test_validation_queries_search_every_train_product() -> None:
    feats = _features(20, 2)
    _, val = held_out_products(20, 0.25, seed=0)
    part = validation_queries(feats, val)
    assert part.shop_regions.shape[0] == 20 and part.street_regions.shape[0] == 10
    assert part.street_product.tolist() == [int(p) for p in val for _ in range(2)]
    torch.testing.assert_close(part.street_regions[2], feats.street_regions[2 * int(val[1])])


def test_budget_settings_outside_their_choices_are_refused() -> None:
    assert as_ynet_budget({"ctx_init": "tag", "unknown": 1}).ctx_init == "tag"
    with pytest.raises(ValueError, match="ctx_init must be one of"):
        as_ynet_budget({"ctx_init": "warm"})
    with pytest.raises(ValueError, match="validation_gallery must be one of"):
        as_ynet_budget({"validation_gallery": "test"})


def test_fit_stops_when_patience_runs_out_and_keeps_the_best_epoch() -> None:
    """Scores by epoch (0: before training) 0.1, 0.2, 0.5, 0.4, 0.3, 0.45, 0.9: with patience 3 the
    run ends after epoch 5, keeps epoch 2's copy and never trains epoch 6."""
    feats = _features(4, 2)
    module = torch.nn.Linear(1, 1)
    scores = iter([0.1, 0.2, 0.5, 0.4, 0.3, 0.45, 0.9])
    snapshots: list[float] = []

    def validate() -> float:
        snapshots.append(float(module.weight.detach()))
        return next(scores)

    def distances(rows: torch.Tensor, products: torch.Tensor) -> torch.Tensor:
        return module.weight * torch.rand(len(rows), len(products))

    groups = [{"params": list(module.parameters()), "base_lr": 0.1}]
    cfg = as_ynet_budget({"batch_size": 4})
    fitted = fit("toy", module, groups, distances, validate, feats, 10, 3, cfg, seed=0)
    assert (fitted.best_epoch, fitted.epochs_run, fitted.score) == (2, 5, 0.5)
    assert len(snapshots) == 6 and float(fitted.module.weight.detach()) == snapshots[2] != snapshots[5]
    whole = fit("toy", module, groups, distances, lambda: 0.0, feats, 4, 0, cfg, seed=0)
    assert (whole.best_epoch, whole.epochs_run) == (0, 4)  # patience 0: every epoch


def test_a_few_training_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    feats = _features(8, 2)
    ctx_ynet = CtxYNet(V)
    optimizer = torch.optim.Adam(ctx_ynet.parameters(), lr=1e-3)
    products = feats.street_product

    def distances() -> torch.Tensor:
        contexts, _ = ctx_ynet.context(feats.shop_regions[products], feats.tags[products])
        return ctx_ynet.pairwise_distances(ctx_ynet.branches.street_locations(feats.street_regions), contexts)

    def total_hinge() -> float:  # over every triplet: the training loss averages the violating ones
        with torch.no_grad():
            d = distances()
            negative = products.view(-1, 1) != products.view(1, -1)
            return float((F.relu(d.diagonal().unsqueeze(1) - d + 0.3) * negative).sum())

    before = total_hinge()
    for _ in range(24):
        optimizer.zero_grad()
        triplet_loss(distances(), products, margin=0.3).backward()
        optimizer.step()
    assert total_hinge() < 0.5 * before


def test_ranks_and_reranking() -> None:
    distances = torch.tensor([[0.5, 0.1, 0.9], [0.2, 0.2, 0.1]])
    ranks = rank_of_truth(distances, torch.tensor([0, 1]))
    assert ranks.tolist() == [1, 2]  # ties go to the lower item row
    assert top_k_accuracy(ranks, (1, 2, 3)) == {1: 0.0, 2: 0.5, 3: 1.0}
    # CtxYNet re-sorts the short list; a correct item outside it keeps its first-stage rank
    _, ctx_ynet = _models()
    feats = _features(4, 1)
    first = torch.tensor([[0.0, 0.1, 0.2, 0.3]] * 4)
    reranked = ctx_ynet_ranks(ctx_ynet, feats, first, k=2)
    assert reranked[2] == 2 and reranked[3] == 3
    assert set(reranked[:2].tolist()) <= {0, 1}


def test_rerank_sorts_by_ctx_distance_plus_weighted_tag_distance() -> None:
    """The re-rank's distance is CtxYNet's plus tag_weight times the first stage's: weight 0 is
    CtxYNet's order alone, a huge weight gives back the first stage's order."""
    _, ctx_ynet = _models()
    feats = _features(6, 2)
    first = torch.rand(12, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        contexts, _ = ctx_ynet.context(feats.shop_regions, feats.tags)
        locations = ctx_ynet.branches.street_locations(feats.street_regions)
        ctx = torch.stack(
            [
                squared_distance(ctx_ynet.query(locations[[q]].expand(6, -1, -1), contexts)[0], contexts)
                for q in range(12)
            ]
        )
    truth = feats.street_product
    for weight in (0.0, 0.5, 1.0):
        expected = rank_of_truth(ctx + weight * first, truth)
        assert ctx_ynet_ranks(ctx_ynet, feats, first, k=6, tag_weight=weight).tolist() == expected.tolist()
    assert ctx_ynet_ranks(ctx_ynet, feats, first, k=6, tag_weight=1e6).tolist() == rank_of_truth(first, truth).tolist()
    assert not np.array_equal(rank_of_truth(ctx, truth), rank_of_truth(first, truth))  # the weight mattered

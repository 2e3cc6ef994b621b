"""Cross-domain search (TagYNet + CtxYNet) served through gRPC: the same top-k accuracy as the
exported models give in process on the same images, attention with explain, and clear statuses
for the requests it cannot serve."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from amcsearch.runtime.contract import CROSS_DOMAIN_TAG_WEIGHT
from amcsearch.v1 import search_pb2, search_pb2_grpc

from models.corpus.street_shop import load_or_build_street_shop, tag_matrix
from tests.integration.conftest import png, run

pytestmark = pytest.mark.integration
PRODUCTS = 120
"""Gallery size: the first test products' shop images (every one of their street shots queries)."""
RERANK_K = 100
KS = (1, 5, 10, 20, 50, 100)
COLLECTION = "street_to_shop"


@pytest.fixture(scope="module")
def search(real_stack):
    with grpc.insecure_channel(real_stack.address("search")) as channel:
        yield search_pb2_grpc.SearchServiceStub(channel)


@pytest.fixture(scope="module")
def split():
    test = load_or_build_street_shop("ci", 0).test
    shots = np.flatnonzero(test.street_product < PRODUCTS)
    return test, shots


@pytest.fixture(scope="module")
def catalogue(search, split, tmp_path_factory):
    """The gallery indexed with each product's tags as its given tags (no automatic ones, as
    offline), and its files' paths (for the results page)."""
    test, _ = split
    directory = tmp_path_factory.mktemp("catalogue")
    search.CreateCollection(search_pb2.CreateCollectionRequest(name=COLLECTION), timeout=30)
    items = []
    for i in range(PRODUCTS):
        path = directory / f"shop-{i}.png"
        path.write_bytes(png(test.shop_pixels[i]))
        items.append(
            search_pb2.ImageItem(
                id=f"shop-{i}", image=path.read_bytes(), tags=test.products[i].tags, metadata={"path": str(path)}
            )
        )
    for start in range(0, len(items), 32):
        reply = search.Index(
            search_pb2.IndexRequest(items=items[start : start + 32], skip_auto_tags=True, collection=COLLECTION),
            timeout=120,
        )
        assert reply.failed_count == 0, [r.error for r in reply.results if not r.indexed]
    yield
    search.DropCollection(search_pb2.DropCollectionRequest(name=COLLECTION), timeout=60)


def accuracy(ranks: np.ndarray) -> dict[int, float]:
    return {k: float(np.mean(ranks < k)) for k in KS}


def offline_ranks(model_repository, local, split) -> np.ndarray:
    """Rank of the true shop image per street shot: TagYNet's top K by cosine, re-ranked by
    CtxYNet's distance plus CROSS_DOMAIN_TAG_WEIGHT times TagYNet's, from the exported
    TorchScript files in this process."""
    test, shots = split
    modules = local[0]
    vocabulary = (model_repository / "ynet_shop" / "tags.txt").read_text().split()
    tags = tag_matrix(test.products[:PRODUCTS], vocabulary)
    shop, _, context = run(modules["ynet_shop"], test.shop_pixels[:PRODUCTS], tags)
    street, locations = run(modules["ynet_street"], test.street_pixels[shots])
    ranks = []
    for q, truth in enumerate(test.street_product[shots]):
        cosines = shop @ street[q]
        candidates = np.argsort(-cosines, kind="stable")[:RERANK_K]
        distance, _ = run(
            modules["ctx_ynet"],
            locations[q : q + 1],
            np.zeros(len(candidates), dtype=np.int32),
            context[candidates],
        )
        fused = distance.astype(np.float64) + CROSS_DOMAIN_TAG_WEIGHT * (
            2.0 - 2.0 * cosines[candidates].astype(np.float64)
        )
        order = candidates[np.argsort(fused, kind="stable")]
        ranks.append(int(np.flatnonzero(order == truth)[0]) if truth in order else RERANK_K)
    return np.asarray(ranks)


def served_ranks(search, split) -> np.ndarray:
    test, shots = split
    ranks = []
    for shot in shots:
        reply = search.Search(
            search_pb2.SearchRequest(
                image=search_pb2.ImageQuery(data=png(test.street_pixels[shot])),
                image_match=search_pb2.SearchRequest.CROSS_DOMAIN,
                top_k=RERANK_K,
                collection=COLLECTION,
            ),
            timeout=60,
        )
        assert list(reply.stages) == ["encode", "ann_cross_domain", "rescore_cross_domain"]
        ids = [r.id for r in reply.results]
        truth = f"shop-{test.street_product[shot]}"
        ranks.append(ids.index(truth) if truth in ids else RERANK_K)
    return np.asarray(ranks)


def test_served_cross_domain_accuracy_equals_offline(search, catalogue, split, model_repository, local):
    offline = accuracy(offline_ranks(model_repository, local, split))
    served = accuracy(served_ranks(search, split))
    print(f"cross-domain top-k accuracy, {len(split[1])} street shots, {PRODUCTS} shop images: {served}")
    assert served == offline
    assert offline[1] < offline[100]  # a benchmark the models already solve would prove nothing


def test_explain_shows_query_and_candidate_attention(search, catalogue, split, model_repository, local):
    test, shots = split
    request = search_pb2.SearchRequest(
        image=search_pb2.ImageQuery(data=png(test.street_pixels[shots[0]])),
        image_match=search_pb2.SearchRequest.CROSS_DOMAIN,
        top_k=5,
        collection=COLLECTION,
        explain=True,
    )
    reply = search.Search(request, timeout=60)
    assert len(reply.results) == 5 and not reply.explanation
    for result in reply.results:
        query, candidate = result.evidence.regions, result.evidence.candidate_regions
        assert len(query) == 5 and len(candidate) == 5
        assert all(
            0 <= r.index < 36 and r.row == r.index // 6 and r.column == r.index % 6 for r in [*query, *candidate]
        )
        assert [r.weight for r in query] == sorted((r.weight for r in query), reverse=True)
        assert abs(result.score - result.evidence.score) < 1e-6
    # Each result's query attention is the one conditioned on that result, and its candidate
    # attention that image's tag attention: the exported models, run here on the query and on
    # each result's own image and tags, give the same weights. (Whether a trained model's
    # attention varies much with the candidate is the model's business: the ci-size CtxYNet puts
    # all of one query's mass on one cell for every candidate. The unit tests check that the
    # context conditions the query at all.)
    modules = local[0]
    vocabulary = (model_repository / "ynet_shop" / "tags.txt").read_text().split()
    rows = [int(r.id.removeprefix("shop-")) for r in reply.results]
    tags = tag_matrix([test.products[i] for i in rows], vocabulary)
    _, tag_attention, contexts = run(modules["ynet_shop"], test.shop_pixels[rows], tags)
    _, locations = run(modules["ynet_street"], test.street_pixels[shots[:1]])
    _, query_attention = run(modules["ctx_ynet"], locations, np.zeros(len(rows), dtype=np.int32), contexts)
    for result, expected_query, expected_candidate in zip(reply.results, query_attention, tag_attention, strict=True):
        for served, expected in (
            (result.evidence.regions, expected_query),
            (result.evidence.candidate_regions, expected_candidate),
        ):
            np.testing.assert_allclose([r.weight for r in served], np.sort(expected)[::-1][:5], atol=1e-5)
            np.testing.assert_allclose([r.weight for r in served], expected[[r.index for r in served]], atol=1e-5)
    request.explain = False
    plain = search.Search(request, timeout=60)
    assert [r.id for r in plain.results] == [r.id for r in reply.results]
    assert not any(r.evidence.regions or r.evidence.candidate_regions for r in plain.results)


def test_same_domain_and_composed_explain_say_they_have_none(search, catalogue, split):
    test, _ = split
    image = search_pb2.ImageQuery(data=png(test.shop_pixels[0]))
    for request in (
        search_pb2.SearchRequest(image=image, explain=True, collection=COLLECTION),
        search_pb2.SearchRequest(
            composed=search_pb2.ComposedQuery(image=image, modification="make the object red"),
            explain=True,
            collection=COLLECTION,
        ),
    ):
        reply = search.Search(request, timeout=60)
        assert reply.results and "no attention" in reply.explanation
        assert not search.Search(search_pb2.SearchRequest(image=image, collection=COLLECTION), timeout=60).explanation


def test_cross_domain_requests_it_cannot_serve_are_refused_clearly(search, catalogue):
    cases = {
        "text": search_pb2.SearchRequest(text="red circle", image_match=search_pb2.SearchRequest.CROSS_DOMAIN),
        "an indexed id": search_pb2.SearchRequest(
            image=search_pb2.ImageQuery(id="shop-0"),
            image_match=search_pb2.SearchRequest.CROSS_DOMAIN,
            collection=COLLECTION,
        ),
        "an unknown mode": search_pb2.SearchRequest(
            image=search_pb2.ImageQuery(data=b"x"), image_match=7, collection=COLLECTION
        ),
    }
    for name, request in cases.items():
        with pytest.raises(grpc.RpcError) as raised:
            search.Search(request, timeout=30)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert "image_match" in raised.value.details(), name


def test_cross_domain_respects_filters_and_deletes(search, catalogue, split):
    test, shots = split
    request = search_pb2.SearchRequest(
        image=search_pb2.ImageQuery(data=png(test.street_pixels[shots[0]])),
        image_match=search_pb2.SearchRequest.CROSS_DOMAIN,
        top_k=10,
        collection=COLLECTION,
        within_ids=["shop-1", "shop-2", "shop-3"],
    )
    assert sorted(r.id for r in search.Search(request, timeout=60).results) == ["shop-1", "shop-2", "shop-3"]
    item = search_pb2.ImageItem(id="shop-extra", image=png(test.shop_pixels[0]), tags=test.products[0].tags)
    search.Index(search_pb2.IndexRequest(items=[item], skip_auto_tags=True, collection=COLLECTION), timeout=60)
    request.within_ids[:] = ["shop-extra", "shop-1"]
    assert "shop-extra" in [r.id for r in search.Search(request, timeout=60).results]
    search.Delete(search_pb2.DeleteRequest(ids=["shop-extra"], collection=COLLECTION), timeout=60)
    assert [r.id for r in search.Search(request, timeout=60).results] == ["shop-1"]

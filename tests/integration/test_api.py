"""The API backends reach for in their first week, on the real stack: collections, metadata
filters, Rerank of caller-supplied candidates, modality bias, BatchSearch and paging. Each test
works in its own collection, so the default collection other tests use is untouched."""

from __future__ import annotations

import uuid

import grpc
import numpy as np
import pytest
from amcsearch.v1 import common_pb2, search_pb2, search_pb2_grpc

from tests.integration.conftest import metric_value, png, scrape

pytestmark = pytest.mark.integration
HOSTILE = ['a"b', "it's", "x') OR 1=1 --", "[0]", 'id in ["x"]', "back\\slash", "new\nline", "café ☕", "&& ||"]
Condition = search_pb2.MetadataCondition


@pytest.fixture(scope="module")
def search(real_stack):
    with grpc.insecure_channel(real_stack.address("search")) as channel:
        yield search_pb2_grpc.SearchServiceStub(channel)


def fresh(search) -> str:
    name = f"api_{uuid.uuid4().hex[:10]}"
    assert search.CreateCollection(search_pb2.CreateCollectionRequest(name=name), timeout=30).created
    return name


def items(split, count: int, metadata=lambda i: {}) -> list[search_pb2.ImageItem]:
    return [
        search_pb2.ImageItem(
            id=r.id,
            image=png(p),
            title=r.caption,
            metadata=metadata(i),
            keywords=[common_pb2.Keyword(text=k, confidence=c) for k, c in r.noisy_keywords],
        )
        for i, (r, p) in enumerate(zip(split.images[:count], split.pixels[:count], strict=True))
    ]


def index(search, collection: str, batch: list[search_pb2.ImageItem]) -> None:
    for start in range(0, len(batch), 32):
        reply = search.Index(
            search_pb2.IndexRequest(items=batch[start : start + 32], skip_auto_tags=True, collection=collection),
            timeout=120,
        )
        assert reply.failed_count == 0, [r.error for r in reply.results if not r.indexed]


@pytest.fixture(scope="module")
def catalogue(search, ci_corpus):
    """120 images with metadata: a bucket (100 distinct, so one bucket is ~1%), a price, a
    hostile value on some, a flag on every tenth."""
    name = fresh(search)

    def metadata(i: int) -> dict[str, str]:
        extra = {"label": HOSTILE[i % len(HOSTILE)]} if i < 3 * len(HOSTILE) else {}
        return {"bucket": str(i % 60), "price": f"{i * 1.5:.1f}", **({"flag": "on"} if i % 10 == 0 else {}), **extra}

    index(search, name, items(ci_corpus.test, 120, metadata))
    return name


def expect_error(call, code, fragment):
    with pytest.raises(grpc.RpcError) as raised:
        call()
    assert raised.value.code() == code, raised.value.details()
    assert fragment in raised.value.details(), raised.value.details()
    return raised.value.details()


# --- collections -----------------------------------------------------------------------------


def test_collections_are_isolated_and_listed(search, ci_corpus):
    a, b = fresh(search), fresh(search)
    index(search, a, items(ci_corpus.test, 3))
    first = ci_corpus.test.images[0].id
    assert search.Get(search_pb2.GetRequest(ids=[first], collection=a), timeout=30).images[0].id == first
    assert search.Get(search_pb2.GetRequest(ids=[first], collection=b), timeout=30).missing_ids == [first]
    reply = search.Search(search_pb2.SearchRequest(text="circle", top_k=10, collection=b), timeout=30)
    assert list(reply.results) == []
    assert search.Stats(search_pb2.StatsRequest(collection=a), timeout=30).image_count == 3
    listed = {
        c.name: c.image_count
        for c in search.ListCollections(search_pb2.ListCollectionsRequest(), timeout=30).collections
    }
    assert listed[a] == 3 and listed[b] == 0 and "" in listed
    assert not search.CreateCollection(search_pb2.CreateCollectionRequest(name=a), timeout=30).created
    assert search.DropCollection(search_pb2.DropCollectionRequest(name=a), timeout=30).deleted_images == 3
    expect_error(lambda: search.Stats(search_pb2.StatsRequest(collection=a), timeout=30), grpc.StatusCode.NOT_FOUND, a)


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("1abc", "must be 1..63 characters"),
        ("a-b", "must be 1..63"),
        ("x" * 64, "must be 1..63"),
        ("a b", "must be 1..63"),
    ],
)
def test_bad_collection_names(search, name, fragment):
    expect_error(
        lambda: search.Search(search_pb2.SearchRequest(text="x", collection=name), timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT,
        fragment,
    )
    expect_error(
        lambda: search.CreateCollection(search_pb2.CreateCollectionRequest(name=name), timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT,
        fragment,
    )


def test_missing_collection_is_not_found_everywhere(search, ci_corpus):
    missing = f"nope_{uuid.uuid4().hex[:6]}"
    for call in (
        lambda: search.Search(search_pb2.SearchRequest(text="x", collection=missing), timeout=30),
        lambda: search.Get(search_pb2.GetRequest(ids=["a"], collection=missing), timeout=30),
        lambda: search.Delete(search_pb2.DeleteRequest(ids=["a"], collection=missing), timeout=30),
        lambda: search.Index(search_pb2.IndexRequest(items=items(ci_corpus.test, 1), collection=missing), timeout=30),
        lambda: search.DropCollection(search_pb2.DropCollectionRequest(name=missing), timeout=30),
    ):
        expect_error(call, grpc.StatusCode.NOT_FOUND, "does not exist")
    expect_error(
        lambda: search.DropCollection(search_pb2.DropCollectionRequest(name=""), timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT,
        "default collection cannot be dropped",
    )


# --- metadata filters ------------------------------------------------------------------------


def filtered(search, collection, metadata_filter, top_k=100, **extra) -> list[search_pb2.SearchResult]:
    request = search_pb2.SearchRequest(
        text="a picture",
        top_k=top_k,
        candidates=max(top_k, 100),
        collection=collection,
        metadata_filter=metadata_filter,
        **extra,
    )
    return list(search.Search(request, timeout=60).results)


def test_metadata_filters_equality_in_range_exists_and_or(search, catalogue):
    def ids(f, **extra):
        return {r.id for r in filtered(search, catalogue, f, **extra)}

    def price(r):
        return float(r.metadata["price"])

    one = filtered(search, catalogue, search_pb2.MetadataFilter(conditions=[Condition(key="bucket", equals="7")]))
    assert {r.metadata["bucket"] for r in one} == {"7"} and len(one) == 2
    any_of = search_pb2.MetadataFilter(
        conditions=[Condition(key="bucket", any_of=search_pb2.StringList(values=["1", "2"]))]
    )
    assert {r.metadata["bucket"] for r in filtered(search, catalogue, any_of)} == {"1", "2"}
    ranged = filtered(
        search,
        catalogue,
        search_pb2.MetadataFilter(conditions=[Condition(key="price", range=search_pb2.NumberRange(gte=15, lt=30))]),
    )
    assert ranged and all(15 <= price(r) < 30 for r in ranged) and len(ranged) == 10
    flagged = ids(search_pb2.MetadataFilter(conditions=[Condition(key="flag", exists=True)]))
    assert len(flagged) == 12
    either = search_pb2.MetadataFilter(
        combine=search_pb2.MetadataFilter.ANY,
        conditions=[Condition(key="bucket", equals="7"), Condition(key="flag", exists=True)],
    )
    assert ids(either) == flagged | {r.id for r in one}
    both = search_pb2.MetadataFilter(
        conditions=[Condition(key="flag", exists=True)],
        groups=[
            search_pb2.MetadataFilter(
                combine=search_pb2.MetadataFilter.ANY,
                conditions=[Condition(key="bucket", equals="0"), Condition(key="bucket", equals="10")],
            )
        ],
    )
    assert {r.metadata["bucket"] for r in filtered(search, catalogue, both)} <= {"0", "10"}
    keyword = filtered(
        search,
        catalogue,
        search_pb2.MetadataFilter(conditions=[Condition(key="flag", exists=True)]),
        keyword_filter=["red"],
    )
    assert all(r.metadata.get("flag") == "on" for r in keyword)


def test_filter_values_are_escaped_and_never_change_another_filter(search, catalogue):
    for value in HOSTILE:
        results = filtered(
            search, catalogue, search_pb2.MetadataFilter(conditions=[Condition(key="label", equals=value)])
        )
        assert results and {r.metadata["label"] for r in results} == {value}, value
    assert (
        filtered(
            search, catalogue, search_pb2.MetadataFilter(conditions=[Condition(key='label"] or true', exists=True)])
        )
        == []
    )


def test_a_filter_matching_one_percent_still_returns_as_many_as_asked(search, catalogue):
    f = search_pb2.MetadataFilter(conditions=[Condition(key="bucket", equals="3")])  # 2 of 120
    assert len(filtered(search, catalogue, f, top_k=2)) == 2
    for kind in ("image",):
        request = search_pb2.SearchRequest(
            image=search_pb2.ImageQuery(data=png(np.zeros((128, 128, 3), np.uint8))),
            top_k=2,
            collection=catalogue,
            metadata_filter=f,
        )
        assert len(search.Search(request, timeout=60).results) == 2, kind


@pytest.mark.parametrize(
    ("condition", "fragment"),
    [
        (Condition(key="", equals="x"), "metadata_filter.conditions[0]: key is empty"),
        (Condition(key="price"), "metadata_filter.conditions[0] (key 'price'): set one of equals"),
        (Condition(key="price", range=search_pb2.NumberRange()), "range needs at least one of"),
        (Condition(key="price", range=search_pb2.NumberRange(gt=5, lt=1)), "range is empty"),
        (Condition(key="price", range=search_pb2.NumberRange(gt=5, gte=1)), "both gt and gte"),
        (Condition(key="price", range=search_pb2.NumberRange(lt=float("nan"))), "finite"),
        (Condition(key="flag", exists=False), "exists must be true"),
        (Condition(key="bucket", any_of=search_pb2.StringList()), "any_of has no values"),
    ],
)
def test_bad_filters_say_which_clause_and_why(search, catalogue, condition, fragment):
    expect_error(
        lambda: filtered(search, catalogue, search_pb2.MetadataFilter(conditions=[condition])),
        grpc.StatusCode.INVALID_ARGUMENT,
        fragment,
    )


# --- rerank ----------------------------------------------------------------------------------


def test_rerank_scores_indexed_ids_and_inline_images_without_indexing(search, catalogue, ci_corpus):
    split = ci_corpus.test
    inline = search_pb2.InlineImage(
        id="mine/1 (not an index id)",
        image=png(split.pixels[200]),
        keywords=[common_pb2.Keyword(text=k, confidence=c) for k, c in split.images[200].noisy_keywords],
    )
    candidates = [search_pb2.RerankCandidate(id=split.images[i].id) for i in range(5)]
    candidates.append(search_pb2.RerankCandidate(inline=inline))
    reply = search.Rerank(
        search_pb2.RerankRequest(
            text=split.images[200].caption,
            candidates=candidates,
            collection=catalogue,
            explain=True,
            skip_auto_tags=True,
        ),
        timeout=60,
    )
    assert len(reply.results) == 6 and reply.stages == ["encode", "rescore"]
    scores = [r.score for r in reply.results]
    assert scores == sorted(scores, reverse=True)
    assert all(
        len(r.evidence.regions) == 5
        and r.evidence.visual_weight + r.evidence.keyword_weight == pytest.approx(1, abs=1e-4)
        for r in reply.results
    )
    assert "mine/1 (not an index id)" in {r.id for r in reply.results}
    assert search.Get(search_pb2.GetRequest(ids=[split.images[200].id], collection=catalogue), timeout=30).missing_ids
    # the same candidates through Search (within_ids) get the same AMC scores
    within = search.Search(
        search_pb2.SearchRequest(
            text=split.images[200].caption,
            top_k=5,
            candidates=5,
            within_ids=[split.images[i].id for i in range(5)],
            collection=catalogue,
        ),
        timeout=60,
    )
    by_id = {r.id: r.score for r in reply.results}
    for r in within.results:
        assert by_id[r.id] == pytest.approx(r.score, abs=1e-5)


def test_rerank_errors_name_the_candidate(search, catalogue, ci_corpus):
    bad = search_pb2.RerankCandidate(inline=search_pb2.InlineImage(id="x", image=b"not an image"))
    expect_error(
        lambda: search.Rerank(
            search_pb2.RerankRequest(
                text="red",
                candidates=[search_pb2.RerankCandidate(id=ci_corpus.test.images[0].id), bad],
                collection=catalogue,
            ),
            timeout=60,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inline candidate 0",
    )
    expect_error(
        lambda: search.Rerank(
            search_pb2.RerankRequest(
                text="red", candidates=[search_pb2.RerankCandidate(id="never-indexed")], collection=catalogue
            ),
            timeout=60,
        ),
        grpc.StatusCode.NOT_FOUND,
        "never-indexed",
    )
    expect_error(
        lambda: search.Rerank(
            search_pb2.RerankRequest(text="red", candidates=[search_pb2.RerankCandidate()]), timeout=60
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "candidates[0]: set id or inline",
    )
    expect_error(
        lambda: search.Rerank(
            search_pb2.RerankRequest(text="red", candidates=[search_pb2.RerankCandidate(id="a")] * 201), timeout=60
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "limit is 200",
    )


# --- modality bias ---------------------------------------------------------------------------


def test_modality_bias_keeps_learned_and_applied_weights(search, catalogue, ci_corpus):
    text = ci_corpus.test.images[0].caption
    plain = search.Search(search_pb2.SearchRequest(text=text, top_k=5, collection=catalogue), timeout=60).results
    for r in plain:
        assert r.evidence.visual_weight == pytest.approx(r.evidence.learned_visual_weight, abs=1e-6)
    visual = search.Search(
        search_pb2.SearchRequest(
            text=text,
            top_k=5,
            collection=catalogue,
            modality=search_pb2.ModalityBias(modalities=search_pb2.ModalityBias.VISUAL_ONLY),
        ),
        timeout=60,
    ).results
    assert all(r.evidence.keyword_weight == pytest.approx(0, abs=1e-6) for r in visual)
    assert all(0 < r.evidence.learned_keyword_weight < 1 for r in visual)
    bounded = search.Search(
        search_pb2.SearchRequest(
            text=text,
            top_k=20,
            collection=catalogue,
            modality=search_pb2.ModalityBias(keyword_scale=3.0, min_keyword_weight=0.3, max_keyword_weight=0.6),
        ),
        timeout=60,
    ).results
    for r in bounded:
        learned = r.evidence.learned_keyword_weight
        expected = min(max(3 * learned / (1 - learned + 3 * learned), 0.3), 0.6)
        assert r.evidence.keyword_weight == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(
    ("bias", "fragment"),
    [
        (search_pb2.ModalityBias(keyword_scale=-1), "keyword_scale must be in [0, 100]"),
        (search_pb2.ModalityBias(min_keyword_weight=0.8, max_keyword_weight=0.2), "exceeds max_keyword_weight"),
        (search_pb2.ModalityBias(max_keyword_weight=2), "max_keyword_weight must be in [0, 1]"),
    ],
)
def test_bad_bias(search, bias, fragment):
    expect_error(
        lambda: search.Search(search_pb2.SearchRequest(text="x", modality=bias), timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT,
        fragment,
    )


# --- batch and pages -------------------------------------------------------------------------


def triton_requests(stack, model: str) -> float:
    return metric_value(
        scrape(stack.processes["tritonserver"].endpoints["metrics"]), "nv_inference_request_success", model=model
    )


def test_batch_search_equals_single_searches_with_one_call_per_model(search, catalogue, real_stack):
    # 8 new texts (query-cache misses): AMCSEARCH_TORCH_WIDE_ROWS' default, so the batch's text and
    # rescorer forwards run on every core, its single Searches' on one (decision record 0017)
    texts = [f"large red circle batch {i}" for i in range(8)]
    requests = [search_pb2.SearchRequest(text=t, top_k=5, collection=catalogue) for t in texts]
    before = {m: triton_requests(real_stack, m) for m in ("text_encoder", "amc_rescorer")}
    batch = search.BatchSearch(search_pb2.BatchSearchRequest(searches=requests), timeout=60)
    after = {m: triton_requests(real_stack, m) for m in ("text_encoder", "amc_rescorer")}
    assert after["text_encoder"] - before["text_encoder"] == 1
    assert after["amc_rescorer"] - before["amc_rescorer"] == 1
    for request, response in zip(requests, batch.responses, strict=True):
        single = search.Search(request, timeout=60)
        assert [r.id for r in response.results] == [r.id for r in single.results]
        np.testing.assert_allclose([r.score for r in response.results], [r.score for r in single.results], atol=1e-5)


def test_a_mixed_batch_answers_each_search_as_alone(search, catalogue):
    """A BatchSearch's unfiltered vector and hybrid searches share one engine read; keyword-only,
    filtered, paged and repeated searches in the same batch must still answer as alone."""
    source = search_pb2.SearchRequest
    requests = [
        source(text="small blue square mixed 0", top_k=5, collection=catalogue),
        source(
            text="large red circle mixed 1", top_k=5, collection=catalogue, candidate_source=source.CANDIDATES_VECTOR
        ),
        source(
            text="green triangle mixed 2", top_k=5, collection=catalogue, candidate_source=source.CANDIDATES_KEYWORD
        ),
        source(text="red circle mixed 3", top_k=5, collection=catalogue, keyword_filter=["red"]),
        source(text="small blue square mixed 0", top_k=5, collection=catalogue, offset=2),
    ]
    batch = search.BatchSearch(search_pb2.BatchSearchRequest(searches=requests), timeout=60)
    for request, response in zip(requests, batch.responses, strict=True):
        single = search.Search(request, timeout=60)
        assert list(response.stages) == list(single.stages)
        assert [r.id for r in response.results] == [r.id for r in single.results]
        np.testing.assert_allclose([r.score for r in response.results], [r.score for r in single.results], atol=1e-5)


def test_concurrent_searches_are_answered_together_each_as_alone(search, catalogue, real_stack):
    """Searches that arrive while others run are coalesced (one Encode, one Rescore for several):
    each caller still gets what its Search alone gives, and one that fails (an unknown
    collection) fails alone."""
    source = search_pb2.SearchRequest
    requests = [source(text=f"small green circle together {i}", top_k=5, collection=catalogue) for i in range(10)]
    requests[3] = source(text="large red circle together", top_k=5, collection=catalogue, offset=3)
    requests[6] = source(text="blue square together", top_k=5, collection=catalogue, keyword_filter=["blue"])
    requests[8] = source(text="nowhere together", top_k=5, collection=f"missing_{uuid.uuid4().hex[:8]}")
    metrics = real_stack.processes["search"].endpoints["metrics"]
    batches_before = metric_value(scrape(metrics), "amcsearch_coalesced_searches_count")
    encodes_before = triton_requests(real_stack, "text_encoder")
    futures = [search.Search.future(r, timeout=60) for r in requests]
    with pytest.raises(grpc.RpcError) as raised:
        futures[8].result()
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND, raised.value.details()
    together = {i: f.result() for i, f in enumerate(futures) if i != 8}
    batches = metric_value(scrape(metrics), "amcsearch_coalesced_searches_count") - batches_before
    encodes = triton_requests(real_stack, "text_encoder") - encodes_before
    assert batches < len(requests) and encodes < len(requests) - 1, (batches, encodes)
    for i, response in together.items():
        single = search.Search(requests[i], timeout=60)
        assert [r.id for r in response.results] == [r.id for r in single.results]
        np.testing.assert_allclose([r.score for r in response.results], [r.score for r in single.results], atol=1e-5)


def test_batch_search_errors_name_the_search(search):
    good = search_pb2.SearchRequest(text="x")
    expect_error(
        lambda: search.BatchSearch(
            search_pb2.BatchSearchRequest(searches=[good, search_pb2.SearchRequest(text="x", top_k=-1)]), timeout=30
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "searches[1].top_k",
    )
    expect_error(
        lambda: search.BatchSearch(search_pb2.BatchSearchRequest(searches=[good] * 33), timeout=30),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "limit is 32",
    )


def test_pages_are_stable_and_do_not_overlap(search, catalogue):
    whole = search.Search(
        search_pb2.SearchRequest(text="small blue square", top_k=30, collection=catalogue), timeout=60
    )
    pages = [
        search.Search(
            search_pb2.SearchRequest(text="small blue square", top_k=10, offset=o, collection=catalogue), timeout=60
        )
        for o in (0, 10, 20)
    ]
    assert [r.id for p in pages for r in p.results] == [r.id for r in whole.results]
    again = search.Search(
        search_pb2.SearchRequest(text="small blue square", top_k=10, offset=10, collection=catalogue), timeout=60
    )
    assert [r.id for r in again.results] == [r.id for r in pages[1].results]
    expect_error(
        lambda: search.Search(search_pb2.SearchRequest(text="x", top_k=10, offset=95, candidates=100), timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT,
        "exceeds candidates",
    )


def test_the_cli_exposes_each_feature(real_stack, catalogue, ci_corpus, tmp_path, capsys):
    from amcsearch.cli import main

    addr = ["--addr", real_stack.address("search")]
    name = f"cli_{uuid.uuid4().hex[:8]}"
    assert main([*addr, "collections", "create", name]) == 0
    assert main([*addr, "--collection", catalogue, "search", "a picture", "--where", "bucket=5", "--top-k", "5"]) == 0
    assert (
        main(
            [
                *addr,
                "--collection",
                catalogue,
                "search",
                "a picture",
                "--range",
                "price=0..3",
                "--has",
                "flag",
                "--filter",
                '{"combine": "ANY", "conditions": [{"key": "bucket", "equals": "0"}]}',
                "--offset",
                "0",
                "--keyword-only",
            ]
        )
        == 0
    )
    image = tmp_path / "mine.png"
    image.write_bytes(png(ci_corpus.test.pixels[3]))
    assert (
        main(
            [
                *addr,
                "--collection",
                catalogue,
                "rerank",
                "red",
                "--ids",
                ci_corpus.test.images[0].id,
                "--images",
                str(image),
                "--visual-only",
            ]
        )
        == 0
    )
    queries = tmp_path / "queries.txt"
    queries.write_text("red circle\nblue square\n")
    assert main([*addr, "--collection", catalogue, "batch", str(queries)]) == 0
    assert main([*addr, "collections"]) == 0
    out = capsys.readouterr().out
    assert name in out and "== red circle" in out and "stages: encode -> rescore" in out
    first_table = out.split("stages:")[0].splitlines()
    printed = {line.split()[1] for line in first_table if line.strip()[:1].isdigit()}
    assert printed == {ci_corpus.test.images[5].id, ci_corpus.test.images[65].id}  # bucket 5 of 60
    assert main([*addr, "collections", "drop", name]) == 0


def test_the_keyword_route_knows_the_vocabularys_synonyms(search, ci_corpus):
    """A query word the keywords never use ("grey", "holiday") also asks for the vocabulary word
    it means (the query synonym table the export wrote into the text_encoder's config); the
    query's own words still count."""
    name = fresh(search)
    split = ci_corpus.test
    keywords = [["gray", "card"], ["red", "card"], ["festive", "card"], ["grey", "card"]]
    batch = [
        search_pb2.ImageItem(
            id=f"syn{i}", image=png(split.pixels[i]), keywords=[common_pb2.Keyword(text=k) for k in kw]
        )
        for i, kw in enumerate(keywords)
    ]
    reply = search.Index(search_pb2.IndexRequest(items=batch, skip_auto_tags=True, collection=name), timeout=300)
    assert reply.failed_count == 0

    def keyword_hits(text: str) -> set[str]:
        request = search_pb2.SearchRequest(
            text=text, top_k=10, collection=name, candidate_source=search_pb2.SearchRequest.CANDIDATES_KEYWORD
        )
        return {r.id for r in search.Search(request, timeout=60).results}

    assert keyword_hits("grey") == {"syn0", "syn3"}
    assert keyword_hits("holiday") == {"syn2"}
    assert keyword_hits("crimson") == set()  # near several colours: no synonym
    search.DropCollection(search_pb2.DropCollectionRequest(name=name), timeout=30)


def test_candidate_sources_vector_keyword_and_hybrid(search, catalogue, ci_corpus):
    text = "festive picture with a red circle"
    replies = {
        source: search.Search(
            search_pb2.SearchRequest(text=text, top_k=10, collection=catalogue, candidate_source=value), timeout=60
        )
        for source, value in (
            ("vector", search_pb2.SearchRequest.CANDIDATES_VECTOR),
            ("keyword", search_pb2.SearchRequest.CANDIDATES_KEYWORD),
            ("hybrid", search_pb2.SearchRequest.CANDIDATES_HYBRID),
            ("default", search_pb2.SearchRequest.CANDIDATES_DEFAULT),
        )
    }
    assert replies["vector"].stages == ["encode", "ann", "rescore"]
    assert replies["keyword"].stages == ["encode", "keyword_search", "rescore"]
    assert replies["hybrid"].stages == ["encode", "ann", "keyword_search", "merge", "rescore"]
    assert replies["default"].stages == replies["hybrid"].stages
    keywords = {r.id: {k for k, _ in r.noisy_keywords} for r in ci_corpus.test.images}
    words = {"festive", "picture", "with", "red", "circle"}
    assert all(keywords[r.id] & words for r in replies["keyword"].results)
    expect_error(
        lambda: search.Search(search_pb2.SearchRequest(text="x", candidate_source=9), timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT,
        "candidate_source",
    )

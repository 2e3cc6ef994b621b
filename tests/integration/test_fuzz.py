"""Hypothesis-generated requests for every RPC against the real servers: only documented status
codes come back (never INTERNAL or UNKNOWN, never a stack trace) and every server stays healthy."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from amcsearch.processes import grpc_serving
from amcsearch.v1 import (
    attention_rescorer_pb2,
    attention_rescorer_pb2_grpc,
    common_pb2,
    feature_extractor_pb2,
    feature_extractor_pb2_grpc,
    keyword_tagger_pb2,
    keyword_tagger_pb2_grpc,
    query_encoder_pb2,
    query_encoder_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import png

pytestmark = pytest.mark.integration
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND,
}
FUZZ = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

texts = st.one_of(st.text(max_size=40), st.text(min_size=1500, max_size=2500), st.just(""), st.just(" \t\n"))
blobs = st.one_of(st.binary(max_size=64), st.just(b""), st.just(b"\x89PNG\r\n\x1a\n" + b"\0" * 64))
numbers = st.integers(min_value=-(2**31), max_value=2**31 - 1)
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
ids = st.one_of(st.text(max_size=20), st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True), st.just("x" * 200))


@st.composite
def tensors(draw) -> common_pb2.Tensor:
    shape = draw(st.lists(st.integers(-3, 400), max_size=3))
    values = draw(st.lists(floats, max_size=16))
    data = draw(st.one_of(st.just(np.array(values, dtype="<f4").tobytes()), st.binary(max_size=64)))
    return common_pb2.Tensor(shape=shape, dtype=draw(st.integers(0, 5)), data=data)


image_inputs = st.one_of(
    st.builds(common_pb2.ImageInput, data=blobs),
    st.builds(
        lambda e, r: common_pb2.ImageInput(features=common_pb2.ImageFeatures(embedding=e, regions=r)),
        tensors(),
        tensors(),
    ),
    st.just(common_pb2.ImageInput()),
)
query_inputs = st.one_of(
    st.builds(query_encoder_pb2.QueryInput, text=texts),
    st.builds(query_encoder_pb2.QueryInput, image=image_inputs),
    st.builds(
        lambda i, m: query_encoder_pb2.QueryInput(
            composed=query_encoder_pb2.ComposedQueryInput(image=i, modification=m)
        ),
        image_inputs,
        texts,
    ),
)
keywords = st.builds(common_pb2.Keyword, text=texts, confidence=floats)
grid = st.just(common_pb2.Tensor(shape=[1, 36, 128], dtype=common_pb2.Tensor.INT8, data=b"\1" * 4608))
slot_tensors = st.one_of(
    tensors(),
    st.just(common_pb2.Tensor(shape=[1, 32], dtype=common_pb2.Tensor.INT32, data=np.zeros(32, "<i4").tobytes())),
)
rescore_requests = st.builds(
    attention_rescorer_pb2.RescoreRequest,
    queries=tensors(),
    ids=st.lists(ids, max_size=3),
    regions=st.one_of(tensors(), grid),
    region_scales=tensors(),
    query_index=tensors(),
    keyword_texts=st.lists(texts, max_size=3),
    keyword_slots=slot_tensors,
    keyword_confidences=tensors(),
    explain=st.booleans(),
    explain_top=numbers,
)
image_queries = st.one_of(st.builds(search_pb2.ImageQuery, data=blobs), st.builds(search_pb2.ImageQuery, id=ids))
doubles = st.floats(allow_nan=True, allow_infinity=True)
number_ranges = st.builds(
    lambda gt, lte: search_pb2.NumberRange(
        **({"gt": gt} if gt is not None else {}), **({"lte": lte} if lte is not None else {})
    ),
    st.none() | doubles,
    st.none() | doubles,
)
conditions = st.one_of(
    st.builds(search_pb2.MetadataCondition, key=texts, equals=texts),
    st.builds(
        lambda k, v: search_pb2.MetadataCondition(key=k, any_of=search_pb2.StringList(values=v)),
        texts,
        st.lists(texts, max_size=3),
    ),
    st.builds(search_pb2.MetadataCondition, key=texts, range=number_ranges),
    st.builds(search_pb2.MetadataCondition, key=texts, exists=st.booleans()),
    st.builds(search_pb2.MetadataCondition, key=texts),
)
metadata_filters = st.recursive(
    st.builds(search_pb2.MetadataFilter, combine=st.integers(0, 1), conditions=st.lists(conditions, max_size=3)),
    lambda inner: st.builds(
        search_pb2.MetadataFilter,
        combine=st.integers(0, 1),
        conditions=st.lists(conditions, max_size=2),
        groups=st.lists(inner, max_size=2),
    ),
    max_leaves=6,
)
collections = st.one_of(st.just(""), texts, st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,10}", fullmatch=True))
biases = st.builds(
    search_pb2.ModalityBias,
    modalities=st.integers(0, 2),
    keyword_scale=floats,
    min_keyword_weight=floats,
    max_keyword_weight=floats,
)
search_requests = st.one_of(
    st.builds(
        search_pb2.SearchRequest,
        text=texts,
        top_k=numbers,
        candidates=numbers,
        keyword_filter=st.lists(texts, max_size=3),
        explain=st.booleans(),
        within_ids=st.lists(ids, max_size=3),
        metadata_filter=metadata_filters,
        collection=collections,
        offset=numbers,
        modality=biases,
    ),
    st.builds(search_pb2.SearchRequest, image=image_queries, top_k=numbers),
    st.builds(
        lambda q, m, k: search_pb2.SearchRequest(composed=search_pb2.ComposedQuery(image=q, modification=m), top_k=k),
        image_queries,
        texts,
        numbers,
    ),
    st.just(search_pb2.SearchRequest()),
)
index_requests = st.builds(
    search_pb2.IndexRequest,
    items=st.lists(
        st.builds(
            search_pb2.ImageItem,
            id=ids,
            image=blobs,
            title=texts,
            tags=st.lists(texts, max_size=3),
            keywords=st.lists(keywords, max_size=3),
        ),
        max_size=4,
    ),
    skip_auto_tags=st.booleans(),
)


@pytest.fixture(scope="module")
def stubs(real_stack):
    channels = [
        grpc.insecure_channel(real_stack.address(m))
        for m in ("query_encoder", "keyword_tagger", "feature_extractor", "attention_rescorer", "search")
    ]
    yield {
        "encode": query_encoder_pb2_grpc.QueryEncoderStub(channels[0]).Encode,
        "tag": keyword_tagger_pb2_grpc.KeywordTaggerStub(channels[1]).Tag,
        "extract": feature_extractor_pb2_grpc.FeatureExtractorStub(channels[2]).Extract,
        "rescore": attention_rescorer_pb2_grpc.AttentionRescorerStub(channels[3]).Rescore,
        "search": search_pb2_grpc.SearchServiceStub(channels[4]),
    }
    for channel in channels:
        channel.close()


def answered_as_documented(call, request) -> None:
    try:
        call(request, timeout=30)
    except grpc.RpcError as error:
        assert error.code() in DOCUMENTED, f"{error.code()}: {error.details()}"
        assert "Traceback" not in (error.details() or "")


@FUZZ
@given(st.lists(query_inputs, max_size=5))
def test_fuzz_encode(stubs, queries):
    answered_as_documented(stubs["encode"], query_encoder_pb2.EncodeRequest(queries=queries))


@FUZZ
@given(st.lists(blobs, max_size=4), floats, numbers)
def test_fuzz_tag_and_extract(stubs, images, threshold, top_k):
    answered_as_documented(stubs["tag"], keyword_tagger_pb2.TagRequest(images=images, threshold=threshold, top_k=top_k))
    answered_as_documented(stubs["extract"], feature_extractor_pb2.ExtractRequest(images=images))


@FUZZ
@given(rescore_requests)
def test_fuzz_rescore(stubs, request_):
    answered_as_documented(stubs["rescore"], request_)


@FUZZ
@given(search_requests)
def test_fuzz_search(stubs, request_):
    answered_as_documented(stubs["search"].Search, request_)


@FUZZ
@given(st.lists(search_requests, max_size=4))
def test_fuzz_batch_search(stubs, searches):
    answered_as_documented(stubs["search"].BatchSearch, search_pb2.BatchSearchRequest(searches=searches))


rerank_candidates = st.one_of(
    st.builds(search_pb2.RerankCandidate, id=ids),
    st.builds(
        lambda i, b, t, k: search_pb2.RerankCandidate(inline=search_pb2.InlineImage(id=i, image=b, tags=t, keywords=k)),
        ids,
        blobs,
        st.lists(texts, max_size=2),
        st.lists(keywords, max_size=2),
    ),
    st.just(search_pb2.RerankCandidate()),
)


@FUZZ
@given(texts, st.lists(rerank_candidates, max_size=3), numbers, collections, biases)
def test_fuzz_rerank(stubs, text, cands, top_k, collection, bias):
    answered_as_documented(
        stubs["search"].Rerank,
        search_pb2.RerankRequest(text=text, candidates=cands, top_k=top_k, collection=collection, modality=bias),
    )


@FUZZ
@given(collections)
def test_fuzz_collections(stubs, name):
    answered_as_documented(stubs["search"].CreateCollection, search_pb2.CreateCollectionRequest(name=name))
    answered_as_documented(stubs["search"].Stats, search_pb2.StatsRequest(collection=name))
    answered_as_documented(stubs["search"].DropCollection, search_pb2.DropCollectionRequest(name=name))
    answered_as_documented(stubs["search"].ListCollections, search_pb2.ListCollectionsRequest())


def test_malformed_protobuf_is_invalid_argument(real_stack):
    """Bytes that are not a valid message: INVALID_ARGUMENT, not UNKNOWN 'Unexpected DecodeError'."""
    with grpc.insecure_channel(real_stack.address("search")) as channel:
        raw = channel.unary_unary(
            "/amcsearch.v1.SearchService/Search", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.RpcError) as raised:
            raw(b"\x0a\xff\xff\xff\xff\x0f", timeout=10)  # a length-delimited field longer than the message
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert "not a valid Search message" in raised.value.details()


@FUZZ
@given(index_requests, st.lists(ids, max_size=3), st.booleans())
def test_fuzz_index_get_delete(stubs, index_request, some_ids, features):
    answered_as_documented(stubs["search"].Index, index_request)
    answered_as_documented(stubs["search"].Get, search_pb2.GetRequest(ids=some_ids, include_features=features))
    answered_as_documented(
        stubs["search"].Delete, search_pb2.DeleteRequest(ids=[i for i in some_ids if i.startswith("zz")])
    )
    answered_as_documented(stubs["search"].Stats, search_pb2.StatsRequest())


def test_every_server_is_still_healthy_after_fuzzing(real_stack, stubs):
    for module in ("query_encoder", "keyword_tagger", "feature_extractor", "attention_rescorer", "search"):
        assert grpc_serving(real_stack.address(module)), module


PIXELS_PNG = png(np.full((16, 16, 3), 120, np.uint8))
stored_texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)
stored_items = st.builds(
    lambda n, title, tags, weighted, metadata: search_pb2.ImageItem(
        id=f"rt-{n}",
        image=PIXELS_PNG,
        title=title,
        tags=tags,
        metadata=metadata,
        keywords=[common_pb2.Keyword(text=t, confidence=c) for t, c in weighted],
    ),
    st.integers(0, 10**6),
    st.text(max_size=50),
    st.lists(stored_texts, max_size=3),
    st.lists(st.tuples(stored_texts, st.floats(0, 1)), max_size=2),
    st.dictionaries(stored_texts, st.text(max_size=40), max_size=3),
)


@FUZZ
@given(st.lists(stored_items, min_size=1, max_size=3, unique_by=lambda i: i.id))
def test_fuzz_whatever_index_accepts_round_trips_through_get_search_and_delete(stubs, items):
    """Every accepted item: Get returns its title and metadata as given and its keywords
    normalised (beside the tagger's placements); a search filtered on each of its keywords finds it; Delete removes it."""
    from amcsearch.runtime.keywords import normalize_keyword

    search = stubs["search"]
    reply = search.Index(search_pb2.IndexRequest(items=items, skip_auto_tags=True), timeout=60)
    accepted = [i for i, r in zip(items, reply.results, strict=True) if r.indexed]
    if not accepted:
        return
    got = {g.id: g for g in search.Get(search_pb2.GetRequest(ids=[i.id for i in accepted]), timeout=30).images}
    for item in accepted:
        stored = got[item.id]
        assert stored.title == item.title and dict(stored.metadata) == dict(item.metadata)
        expected = {normalize_keyword(t) for t in [*item.tags, *(k.text for k in item.keywords)]} - {""}
        given = {k.text for k in stored.keywords if k.source != common_pb2.Keyword.PLACEMENT}
        assert given == expected  # besides the tagger's placements, stored even with skip_auto_tags
        for keyword in expected:
            found = search.Search(
                search_pb2.SearchRequest(text="x", top_k=100, keyword_filter=[keyword], within_ids=[item.id]),
                timeout=30,
            )
            assert [r.id for r in found.results] == [item.id], keyword
        for key, value in item.metadata.items():
            condition = search_pb2.MetadataCondition(key=key, equals=value)
            found = search.Search(
                search_pb2.SearchRequest(
                    text="x",
                    top_k=10,
                    within_ids=[item.id],
                    metadata_filter=search_pb2.MetadataFilter(conditions=[condition]),
                ),
                timeout=30,
            )
            assert [r.id for r in found.results] == [item.id], key
    deleted = search.Delete(search_pb2.DeleteRequest(ids=[i.id for i in accepted]), timeout=30)
    assert deleted.deleted_count == len(accepted)

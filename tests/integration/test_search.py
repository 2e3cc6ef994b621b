"""SearchService end to end on the real stack: served quality equals offline quality, nothing
indexed is lost across a restart, deletes are final, bad requests get clear statuses."""

from __future__ import annotations

import io
import json

import grpc
import numpy as np
import pytest
from amcsearch.cli import index_directory
from amcsearch.processes import grpc_serving, wait_until
from amcsearch.query_encoder.tokenize import Tokenizer
from amcsearch.runtime.contract import NO_BIAS
from amcsearch.runtime.quantize import quantize_regions
from amcsearch.v1 import search_pb2, search_pb2_grpc

from models.export.triton_repo import keyword_vocabulary
from models.metrics import ndcg_at_k
from tests.integration.conftest import MODELS, metric_value, own_gateway, png, run, scrape

pytestmark = pytest.mark.integration
MAX_TEXT_QUERIES = 60
MAX_COMPOSED_QUERIES = 80


@pytest.fixture(scope="module")
def search(real_stack):
    with grpc.insecure_channel(real_stack.address("search")) as channel:
        yield search_pb2_grpc.SearchServiceStub(channel)


@pytest.fixture(scope="module")
def indexed(search, ci_corpus, tmp_path_factory):
    """The ci test split indexed through the CLI's path, with the simulated tagger's keywords."""
    directory = tmp_path_factory.mktemp("images")
    with (directory / "metadata.jsonl").open("w") as metadata:
        for record, pixels in zip(ci_corpus.test.images, ci_corpus.test.pixels, strict=False):
            (directory / f"{record.id}.png").write_bytes(png(pixels))
            metadata.write(
                json.dumps({"id": record.id, "title": record.caption, "keywords": record.noisy_keywords}) + "\n"
            )
    count, failed = index_directory(search, directory, batch_size=32, skip_auto_tags=True, progress=False)
    assert count == len(ci_corpus.test.images) and not failed
    return directory


def offline_text_ndcg(local, split, queries, repository) -> float:
    """AMC Full over each query's candidates, in process, from the exported TorchScript files, on
    the int8 regions the index stores and the keyword vocabulary the rescorer model carries."""
    modules = local[0]
    tokenizer = Tokenizer.default()
    vocabulary = keyword_vocabulary(repository)
    _, regions = run(modules["image_encoder"], split.pixels)
    quantized, scales = quantize_regions(regions)
    no_extra = np.zeros((0, 384), dtype=np.float16)
    scores = []
    for query in queries:
        ids, mask, _ = tokenizer.encode([query.text])
        q = run(modules["text_encoder"], ids, mask)[0][0]
        rows = [split.index_of(i) for i in query.candidate_ids]
        index = np.zeros((len(rows), 32), dtype=np.int32)
        masks = np.zeros((len(rows), 32), dtype=np.float32)
        for r, row in enumerate(rows):
            slots = sorted(split.images[row].noisy_keywords, key=lambda kw: (-kw[1], kw[0]))[:32]
            for j, (text, confidence) in enumerate(slots):
                index[r, j] = vocabulary[text]
                masks[r, j] = confidence
        score = run(
            modules["amc_rescorer"],
            q[None],
            np.zeros(len(rows), np.int32),
            quantized[rows],
            scales[rows],
            no_extra,
            index,
            masks,
            np.array([NO_BIAS], np.float32),
        )[0]
        order = np.argsort(-score.reshape(-1), kind="stable")
        scores.append(ndcg_at_k(np.array(query.relevance)[order], 10))
    return float(np.mean(scores))


def test_served_text_ndcg_equals_offline(search, indexed, ci_corpus, local, model_repository):
    queries = ci_corpus.test.text_queries[:MAX_TEXT_QUERIES]
    served = []
    for query in queries:
        reply = search.Search(
            search_pb2.SearchRequest(
                text=query.text,
                within_ids=query.candidate_ids,
                candidates=len(query.candidate_ids),
                top_k=len(query.candidate_ids),
            ),
            timeout=60,
        )
        assert reply.stages == ["encode", "ann", "keyword_search", "merge", "rescore"] and not reply.degradations
        relevance = dict(zip(query.candidate_ids, query.relevance, strict=False))
        served.append(ndcg_at_k([relevance[r.id] for r in reply.results], 10))
    offline = offline_text_ndcg(local, ci_corpus.test, queries, model_repository)
    print(f"text NDCG@10 served {np.mean(served):.4f} offline {offline:.4f} over {len(queries)} queries")
    assert abs(np.mean(served) - offline) <= 0.01


def test_served_composed_recall_equals_offline(search, indexed, ci_corpus, local):
    split = ci_corpus.test
    queries = split.composed_queries[:MAX_COMPOSED_QUERIES]
    labels = {r.id: r.label for r in split.images}
    served_hits = []
    for query in queries:
        reply = search.Search(
            search_pb2.SearchRequest(
                composed=search_pb2.ComposedQuery(
                    image=search_pb2.ImageQuery(id=query.source_id), modification=query.modification
                ),
                top_k=10,
            ),
            timeout=60,
        )
        assert query.source_id not in [r.id for r in reply.results]
        served_hits.append(any(labels[r.id] == query.target_label for r in reply.results))
    modules = local[0]
    embeddings, regions = run(modules["image_encoder"], split.pixels)
    tokenizer = Tokenizer.default()
    offline_hits = []
    for query in queries:
        row = split.index_of(query.source_id)
        ids, mask, _ = tokenizer.encode([query.modification])
        text_embedding, tokens = run(modules["text_encoder"], ids, mask)
        composed = run(
            modules["composer"],
            embeddings[row : row + 1],
            regions[row : row + 1],
            text_embedding,
            tokens,
            mask.astype(np.float32),
        )[0][0]
        similarity = embeddings @ composed / np.linalg.norm(composed)
        similarity[row] = -np.inf
        top = np.argsort(-similarity, kind="stable")[:10]
        offline_hits.append(any(split.images[i].label == query.target_label for i in top))
    print(f"composed R@10 served {np.mean(served_hits):.4f} offline {np.mean(offline_hits):.4f}")
    assert abs(np.mean(served_hits) - np.mean(offline_hits)) <= 0.01 + 1.0 / len(queries)


def test_explain_returns_weights_regions_and_keywords(search, indexed):
    reply = search.Search(search_pb2.SearchRequest(text="festive images", top_k=3, explain=True), timeout=60)
    assert len(reply.results) == 3
    for result in reply.results:
        evidence = result.evidence
        assert evidence.visual_weight + evidence.keyword_weight == pytest.approx(1.0, abs=1e-4)
        assert len(evidence.regions) == 5 and len(evidence.keywords) > 0
        assert evidence.regions[0].weight >= evidence.regions[-1].weight
    scores = [r.score for r in reply.results]
    assert scores == sorted(scores, reverse=True)


def test_image_search_by_id_excludes_itself_and_keyword_filter_holds(search, indexed, ci_corpus):
    source = ci_corpus.test.images[0]
    reply = search.Search(search_pb2.SearchRequest(image=search_pb2.ImageQuery(id=source.id), top_k=5), timeout=60)
    assert len(reply.results) == 5 and source.id not in [r.id for r in reply.results]
    keyword = source.noisy_keywords[0][0]
    filtered = search.Search(search_pb2.SearchRequest(text="anything", top_k=10, keyword_filter=[keyword]), timeout=60)
    got = search.Get(search_pb2.GetRequest(ids=[r.id for r in filtered.results]), timeout=30)
    assert got.images and all(keyword in [k.text for k in image.keywords] for image in got.images)


def test_delete_then_search_never_returns_the_id(search, indexed, ci_corpus):
    victim = search.Search(search_pb2.SearchRequest(text="large red circle", top_k=1), timeout=60).results[0].id
    reply = search.Delete(search_pb2.DeleteRequest(ids=[victim, "never-there"]), timeout=30)
    assert reply.deleted_count == 1 and list(reply.missing_ids) == ["never-there"]
    for text in ("large red circle", "red", "circle"):
        results = search.Search(search_pb2.SearchRequest(text=text, top_k=50), timeout=60).results
        assert victim not in [r.id for r in results]
    assert list(search.Get(search_pb2.GetRequest(ids=[victim]), timeout=30).missing_ids) == [victim]
    with pytest.raises(grpc.RpcError) as raised:
        search.Search(search_pb2.SearchRequest(image=search_pb2.ImageQuery(id=victim)), timeout=30)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_index_reports_bad_items_and_keeps_the_good_ones(search, ci_corpus):
    good = png(ci_corpus.test.pixels[0])
    reply = search.Index(
        search_pb2.IndexRequest(
            items=[
                search_pb2.ImageItem(id="good-one", image=good, tags=["Festive "]),
                search_pb2.ImageItem(id="corrupt-one", image=b"\x89PNG\r\n\x1a\nbroken"),
                search_pb2.ImageItem(id="bad id!", image=good),
            ]
        ),
        timeout=60,
    )
    outcome = {r.id: r for r in reply.results}
    assert outcome["good-one"].indexed and "festive" in [k.text for k in outcome["good-one"].keywords]
    assert not outcome["corrupt-one"].indexed and outcome["corrupt-one"].error_code == "INVALID_ARGUMENT"
    assert not outcome["bad id!"].indexed and "id must be" in outcome["bad id!"].error
    assert (reply.indexed_count, reply.failed_count) == (1, 2)
    assert search.Get(search_pb2.GetRequest(ids=["good-one"]), timeout=30).images[0].title == ""


@pytest.mark.parametrize(
    ("request_", "code", "fragment"),
    [
        (search_pb2.SearchRequest(), grpc.StatusCode.INVALID_ARGUMENT, "set one of"),
        (search_pb2.SearchRequest(text="  "), grpc.StatusCode.INVALID_ARGUMENT, "text is empty"),
        (search_pb2.SearchRequest(text="x", top_k=1000), grpc.StatusCode.RESOURCE_EXHAUSTED, "limit is 100"),
        (search_pb2.SearchRequest(text="x", top_k=-1), grpc.StatusCode.INVALID_ARGUMENT, "negative"),
        (search_pb2.SearchRequest(text="x", candidates=100000), grpc.StatusCode.RESOURCE_EXHAUSTED, "limit is 500"),
        (search_pb2.SearchRequest(image=search_pb2.ImageQuery(id="nope")), grpc.StatusCode.NOT_FOUND, "nope"),
        (
            search_pb2.SearchRequest(image=search_pb2.ImageQuery(data=b"junk")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "decoded",
        ),
        (
            search_pb2.SearchRequest(composed=search_pb2.ComposedQuery(image=search_pb2.ImageQuery(id="x"))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "modification is empty",
        ),
    ],
)
def test_bad_searches_get_clear_statuses(search, real_stack, request_, code, fragment):
    with pytest.raises(grpc.RpcError) as raised:
        search.Search(request_, timeout=30)
    assert raised.value.code() == code and fragment in raised.value.details(), raised.value.details()
    assert grpc_serving(real_stack.address("search"))


def test_bad_index_requests(search):
    for request_, code in [
        (search_pb2.IndexRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        (
            search_pb2.IndexRequest(items=[search_pb2.ImageItem(id="a", image=b"x")] * 2),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            search_pb2.IndexRequest(items=[search_pb2.ImageItem(id=f"i{n}", image=b"x") for n in range(65)]),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
    ]:
        with pytest.raises(grpc.RpcError) as raised:
            search.Index(request_, timeout=30)
        assert raised.value.code() == code


def test_rescorer_down_degrades_to_ann_order(search, indexed, real_stack):
    rescorer = real_stack.processes["attention_rescorer"]
    rescorer.stop()
    try:
        reply = search.Search(
            search_pb2.SearchRequest(
                text="small blue square", top_k=5, candidate_source=search_pb2.SearchRequest.CANDIDATES_VECTOR
            ),
            timeout=30,
        )
        assert reply.stages == ["encode", "ann"]
        assert reply.degradations[0].stage == "rescore"
        hybrid = search.Search(search_pb2.SearchRequest(text="small blue square", top_k=5), timeout=30)
        assert hybrid.stages == ["encode", "ann", "keyword_search", "merge"] and hybrid.degradations
        metrics = scrape(real_stack.processes["search"].endpoints["metrics"])
        assert metric_value(metrics, "amcsearch_search_degradations_total", stage="rescore") >= 1
        assert [r.score for r in reply.results] == sorted([r.ann_score for r in reply.results], reverse=True)
    finally:
        rescorer.start()
        wait_until(lambda: grpc_serving(rescorer.endpoints["grpc"]), 60, "rescorer restart", rescorer)
    # The gateway notices by itself: full rescoring is back within seconds, no restart needed.
    wait_until(
        lambda: not search.Search(search_pb2.SearchRequest(text="small blue square", top_k=5), timeout=30).degradations,
        15,
        "rescoring to resume",
        interval=0.5,
    )


def test_restart_of_search_keeps_everything_indexed(search, indexed, real_stack, ci_corpus):
    request = search_pb2.SearchRequest(text="vintage picture with a green triangle", top_k=10)
    before = search.Search(request, timeout=60)
    assert not before.degradations
    count = search.Stats(search_pb2.StatsRequest(), timeout=30).image_count
    process = real_stack.processes["search"]
    process.stop()
    process.start()
    wait_until(lambda: grpc_serving(process.endpoints["grpc"]), 60, "search restart", process)
    after = search.Search(request, timeout=60)
    assert [r.id for r in after.results] == [r.id for r in before.results]
    np.testing.assert_allclose([r.score for r in after.results], [r.score for r in before.results], rtol=1e-5)
    assert search.Stats(search_pb2.StatsRequest(), timeout=30).image_count == count


def test_write_rpcs_need_the_bearer_token_when_one_is_set(real_stack, ci_corpus, tmp_path):
    """A second gateway with SEARCH_AUTH_TOKEN, on the same model services and its own index."""
    from amcsearch.launcher import SERVICES_ROOT
    from amcsearch.processes import free_port, service_process

    env = {**real_stack.env, "SEARCH_AUTH_TOKEN": "s3cret-token", "INDEX_URI": str(tmp_path / "auth.db")}
    process = service_process("search", "SEARCH", free_port(), free_port(), env, tmp_path, SERVICES_ROOT)
    process.start()
    try:
        wait_until(lambda: grpc_serving(process.endpoints["grpc"]), 90, "search with auth", process)
        with grpc.insecure_channel(process.endpoints["grpc"]) as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            item = search_pb2.IndexRequest(items=[search_pb2.ImageItem(id="a1", image=png(ci_corpus.test.pixels[0]))])
            for metadata, code in [
                ((), grpc.StatusCode.UNAUTHENTICATED),
                ((("authorization", "Basic abc"),), grpc.StatusCode.UNAUTHENTICATED),
                ((("authorization", "Bearer wrong"),), grpc.StatusCode.PERMISSION_DENIED),
            ]:
                for call, request in ((stub.Index, item), (stub.Delete, search_pb2.DeleteRequest(ids=["a1"]))):
                    with pytest.raises(grpc.RpcError) as raised:
                        call(request, timeout=30, metadata=metadata)
                    assert raised.value.code() == code
                    assert "s3cret-token" not in raised.value.details()
            good = (("authorization", "Bearer s3cret-token"),)
            assert stub.Index(item, timeout=60, metadata=good).indexed_count == 1
            assert stub.Search(search_pb2.SearchRequest(text="circle", top_k=1), timeout=30).results[0].id == "a1"
            assert stub.Delete(search_pb2.DeleteRequest(ids=["a1"]), timeout=30, metadata=good).deleted_count == 1
        assert "s3cret-token" not in process.log_path.read_text()
    finally:
        process.stop()


def test_get_returns_the_thumbnail_kept_at_index_time(search, indexed, ci_corpus):
    """A small JPEG of each indexed image, only when asked for (no local file is ever read)."""
    from PIL import Image

    image_id = ci_corpus.test.images[0].id
    plain = search.Get(search_pb2.GetRequest(ids=[image_id]), timeout=30).images[0]
    asked = search.Get(search_pb2.GetRequest(ids=[image_id], include_thumbnails=True), timeout=30).images[0]
    assert plain.thumbnail == b"" and asked.thumbnail[:3] == b"\xff\xd8\xff"
    thumbnail = Image.open(io.BytesIO(asked.thumbnail))
    assert thumbnail.format == "JPEG" and max(thumbnail.size) <= 96


def test_index_size_gauge_follows_the_index(search, indexed, real_stack, ci_corpus):
    """Every collection has its series without anyone calling Stats; a dropped one's goes."""
    from amcsearch.runtime.metrics import samples

    stats = search.Stats(search_pb2.StatsRequest(), timeout=30)
    metrics = real_stack.processes["search"].endpoints["metrics"]
    wait_until(
        lambda: (
            metric_value(scrape(metrics), "amcsearch_index_images", collection=stats.collection) == stats.image_count
        ),
        10,
        "amcsearch_index_images of the default collection to equal Stats.image_count",
        interval=0.5,
    )
    search.CreateCollection(search_pb2.CreateCollectionRequest(name="gauged"), timeout=30)
    item = search_pb2.ImageItem(id="gauged-1", image=png(ci_corpus.test.pixels[0]))
    search.Index(search_pb2.IndexRequest(items=[item], collection="gauged"), timeout=60)

    def series() -> dict[str, float]:
        found = samples(scrape(metrics), "amcsearch_index_images")
        return {dict(labels)["collection"]: value for labels, value in found.items()}

    wait_until(lambda: any(n.endswith("gauged") and v == 1 for n, v in series().items()), 10, "the new series")
    search.DropCollection(search_pb2.DropCollectionRequest(name="gauged"), timeout=30)
    wait_until(lambda: not any(n.endswith("gauged") for n in series()), 10, "the dropped series to go")


def test_stats_reports_every_models_build_before_any_search(real_stack, tmp_path, model_repository):
    """A fresh gateway: Stats.model_builds lists every served model (from Triton, the
    cross-domain ones included), not only the ones QueryEncoder reported, and not only after the
    first Search."""
    from models.export.triton_repo import read_config

    with (
        own_gateway(real_stack, tmp_path, "fresh search", INDEX_URI=str(tmp_path / "fresh.sqlite")) as address,
        grpc.insecure_channel(address) as channel,
    ):
        builds = dict(
            search_pb2_grpc.SearchServiceStub(channel).Stats(search_pb2.StatsRequest(), timeout=30).model_builds
        )
    expected = {m: read_config(model_repository, m).parameters["build_id"].string_value for m in MODELS}
    assert builds == expected

"""The four model services on the real trained models: outputs equal the in-process TorchScript
pipeline, one Triton call per batch, caching, and every limit answered with its status."""

from __future__ import annotations

import io
import os

import grpc
import numpy as np
import pytest
from amcsearch.keyword_tagger.settings import KeywordTaggerSettings
from amcsearch.query_encoder.tokenize import Tokenizer
from amcsearch.runtime.contract import NO_BIAS
from amcsearch.runtime.keywords import placement_label
from amcsearch.runtime.quantize import quantize_regions
from amcsearch.runtime.rescoring import pack, rescore_request
from amcsearch.runtime.tensors import to_tensor
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
)
from PIL import Image

from models.export.triton_repo import keyword_vocabulary
from tests.integration.conftest import metric_value, png, run, scrape

pytestmark = pytest.mark.integration
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}  # float32 through the same TorchScript file; batching may reorder sums


def array(tensor: common_pb2.Tensor) -> np.ndarray:
    return np.frombuffer(tensor.data, dtype="<f4").reshape(tuple(tensor.shape))


@pytest.fixture(scope="module")
def stubs(real_stack):
    channels = {
        m: grpc.insecure_channel(real_stack.address(m))
        for m in ("query_encoder", "feature_extractor", "keyword_tagger", "attention_rescorer")
    }
    yield {
        "encoder": query_encoder_pb2_grpc.QueryEncoderStub(channels["query_encoder"]),
        "extractor": feature_extractor_pb2_grpc.FeatureExtractorStub(channels["feature_extractor"]),
        "tagger": keyword_tagger_pb2_grpc.KeywordTaggerStub(channels["keyword_tagger"]),
        "rescorer": attention_rescorer_pb2_grpc.AttentionRescorerStub(channels["attention_rescorer"]),
    }
    for channel in channels.values():
        channel.close()


def triton_counts(stack, model: str) -> tuple[float, float]:
    text = scrape(stack.processes["tritonserver"].endpoints["metrics"])
    return (
        metric_value(text, "nv_inference_request_success", model=model),
        metric_value(text, "nv_inference_count", model=model),
    )


def test_text_encode_equals_in_process(stubs, local):
    texts = ["large red circle top-left", "festive images", "a small  Blue square"]
    reply = stubs["encoder"].Encode(
        query_encoder_pb2.EncodeRequest(queries=[query_encoder_pb2.QueryInput(text=t) for t in texts]), timeout=30
    )
    ids, mask, _ = Tokenizer.default().encode(texts)
    expected = run(local[0]["text_encoder"], ids, mask)[0]
    np.testing.assert_allclose(np.stack([array(e.embedding) for e in reply.embeddings]), expected, **TOLERANCE)


def test_extract_equals_in_process_and_is_one_triton_call(real_stack, stubs, local, ci_corpus):
    pixels = ci_corpus.test.pixels[:4].copy()
    pixels[:, 0, 0, :] = os.getpid() % 251  # content never extracted before in this stack: a cache miss
    requests_before, items_before = triton_counts(real_stack, "image_encoder")
    reply = stubs["extractor"].Extract(
        feature_extractor_pb2.ExtractRequest(images=[png(p) for p in pixels]), timeout=30
    )
    requests_after, items_after = triton_counts(real_stack, "image_encoder")
    embedding, regions = run(local[0]["image_encoder"], pixels)
    np.testing.assert_allclose(np.stack([array(r.features.embedding) for r in reply.results]), embedding, **TOLERANCE)
    np.testing.assert_allclose(np.stack([array(r.features.regions) for r in reply.results]), regions, **TOLERANCE)
    assert (requests_after - requests_before, items_after - items_before) == (1, 4)
    again = stubs["extractor"].Extract(
        feature_extractor_pb2.ExtractRequest(images=[png(p) for p in pixels]), timeout=30
    )
    assert all(r.cache_hit for r in again.results)
    assert triton_counts(real_stack, "image_encoder") == (requests_after, items_after)


def test_tag_equals_in_process(stubs, local, ci_corpus, model_repository):
    pixels = ci_corpus.test.pixels[:3]
    reply = stubs["tagger"].Tag(
        keyword_tagger_pb2.TagRequest(images=[png(p) for p in pixels], threshold=0.3, top_k=8), timeout=30
    )
    probabilities, placements = run(local[0]["keyword_tagger"], pixels)
    vocab = local[1]
    labels = (model_repository / "keyword_tagger" / "placements.txt").read_text().splitlines()
    settings = KeywordTaggerSettings()
    for row, where, result in zip(probabilities, placements, reply.results, strict=True):
        order = np.argsort(-row, kind="stable")[:8]
        expected = [(vocab[i], float(row[i])) for i in order if row[i] >= 0.3]
        assert [k.text for k in result.keywords] == [t for t, _ in expected]
        np.testing.assert_allclose([k.confidence for k in result.keywords], [p for _, p in expected], rtol=1e-5)
        order = np.argsort(-where, kind="stable")[: settings.max_placements]
        expected = [(labels[i], float(where[i])) for i in order if where[i] >= settings.placement_threshold]
        assert [k.text for k in result.placements] == [t for t, _ in expected]
        assert {k.source for k in result.placements} <= {common_pb2.Keyword.PLACEMENT}
        np.testing.assert_allclose([k.confidence for k in result.placements], [p for _, p in expected], rtol=1e-5)


def test_placements_say_where_the_scene_objects_are(stubs, ci_corpus):
    """The ci tagger's placements against the scene graphs of TEST images it never trained on."""
    images = ci_corpus.test.images[:32]
    reply = stubs["tagger"].Tag(
        keyword_tagger_pb2.TagRequest(images=[png(p) for p in ci_corpus.test.pixels[:32]]), timeout=30
    )
    truth = [{placement_label(a, o.cell) for o in r.objects for a in (o.color, o.shape, o.size)} for r in images]
    said = [{k.text for k in result.placements} for result in reply.results]
    hits = sum(len(t & s) for t, s in zip(truth, said, strict=True))
    precision, recall = hits / max(1, sum(map(len, said))), hits / sum(map(len, truth))
    print(f"placements on 32 TEST images: precision {precision:.3f}, recall {recall:.3f}")
    assert precision > 0.7 and recall > 0.5, (precision, recall)


def test_composed_encode_equals_in_process(stubs, local, ci_corpus):
    pixels = ci_corpus.test.pixels[5]
    modification = "make the circle blue"
    reply = stubs["encoder"].Encode(
        query_encoder_pb2.EncodeRequest(
            queries=[
                query_encoder_pb2.QueryInput(
                    composed=query_encoder_pb2.ComposedQueryInput(
                        image=common_pb2.ImageInput(data=png(pixels)), modification=modification
                    )
                )
            ]
        ),
        timeout=30,
    )
    modules = local[0]
    embedding, regions = run(modules["image_encoder"], pixels[None])
    ids, mask, _ = Tokenizer.default().encode([modification])
    text_embedding, tokens = run(modules["text_encoder"], ids, mask)
    expected = run(modules["composer"], embedding, regions, text_embedding, tokens, mask.astype(np.float32))[0]
    np.testing.assert_allclose(array(reply.embeddings[0].embedding), expected[0], **TOLERANCE)


def test_rescore_equals_in_process(stubs, local, ci_corpus, model_repository):
    """The gateway's columns (float regions here, quantised by the service; keywords in and
    outside the model's vocabulary) scored through Triton equal the exported file run here."""
    modules = local[0]
    pixels = ci_corpus.test.pixels[:3]
    records = ci_corpus.test.images[:3]
    _, regions = run(modules["image_encoder"], pixels)
    tokenizer = Tokenizer.default()
    ids, mask, _ = tokenizer.encode(["large red circle top-left"])
    query = run(modules["text_encoder"], ids, mask)[0][0]
    vocabulary = keyword_vocabulary(model_repository)
    outside = "a tag outside the vocabulary"
    k_ids, k_mask, _ = tokenizer.encode([outside])
    table = run(modules["text_encoder"], k_ids, k_mask)[0].astype(np.float16)
    keywords = [[*r.noisy_keywords, (outside, 0.95)] for r in records]
    batch = pack([r.id for r in records], list(regions), [np.ones(36, np.float32)] * 3, keywords)
    request = rescore_request(query, batch, explain=True)
    request.regions.CopyFrom(to_tensor(regions))  # float32: the service quantises
    request.ClearField("region_scales")
    reply = stubs["rescorer"].Rescore(request, timeout=30)
    index = np.zeros((3, 32), np.int32)
    masks = np.zeros((3, 32), np.float32)
    for row, candidate_keywords in enumerate(keywords):
        slots = sorted(candidate_keywords, key=lambda kw: (-kw[1], kw[0]))[:32]
        for j, (text, confidence) in enumerate(slots):
            index[row, j] = vocabulary[text] if text in vocabulary else len(vocabulary)
            masks[row, j] = confidence
    quantized, scales = quantize_regions(regions)
    score, weights, region_attention, _, _ = run(
        modules["amc_rescorer"],
        query[None],
        np.zeros(3, np.int32),
        quantized,
        scales,
        table,
        index,
        masks,
        np.array([NO_BIAS], np.float32),
    )
    np.testing.assert_allclose([r.evidence.score for r in reply.results], score.reshape(-1), **TOLERANCE)
    np.testing.assert_allclose([r.evidence.visual_weight for r in reply.results], weights[:, 0], **TOLERANCE)
    top_region = [r.evidence.regions[0].index for r in reply.results]
    assert top_region == [int(np.argmax(a)) for a in region_attention]
    assert all(len(r.evidence.keywords) == 5 for r in reply.results)


def columns(n: int = 1, **changes) -> attention_rescorer_pb2.RescoreRequest:
    """A valid Rescore of n candidates, with some fields replaced."""
    batch = pack(
        [f"c{i}" for i in range(n)],
        [np.zeros((36, 128), np.int8)] * n,
        [np.ones(36, np.float32)] * n,
        [[("red", 0.9)]] * n,
    )
    request = rescore_request(np.ones(384, np.float32), batch, explain=False)
    for name, value in changes.items():
        if value is None:
            request.ClearField(name)
        elif isinstance(value, list):
            del getattr(request, name)[:]
            getattr(request, name).extend(value)
        else:
            getattr(request, name).CopyFrom(value)
    return request


def bomb() -> bytes:
    """A PNG of 3000 x 3000 pixels that compresses to a few KB."""
    buffer = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("call", "code", "fragment"),
    [
        (
            lambda s: s["extractor"].Extract(feature_extractor_pb2.ExtractRequest(images=[])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "images is empty",
        ),
        (
            lambda s: s["extractor"].Extract(
                feature_extractor_pb2.ExtractRequest(images=[png(np.zeros((8, 8, 3), np.uint8)), b"junk"])
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "image 1",
        ),
        (
            lambda s: s["extractor"].Extract(feature_extractor_pb2.ExtractRequest(images=[b"x"] * 65)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "limit is 64",
        ),
        (
            lambda s: s["extractor"].Extract(
                feature_extractor_pb2.ExtractRequest(images=[b"\x89PNG" + b"\0" * 2_000_001])
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "limit is 2000000 bytes",
        ),
        (
            lambda s: s["extractor"].Extract(feature_extractor_pb2.ExtractRequest(images=[bomb()])),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "pixels, the limit is 4000000",
        ),
        (
            lambda s: s["tagger"].Tag(keyword_tagger_pb2.TagRequest(images=[b"x"], threshold=2.0)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "threshold",
        ),
        (
            lambda s: s["tagger"].Tag(keyword_tagger_pb2.TagRequest(images=[b"GIF89a"])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "image cannot be decoded as JPEG, PNG or WebP",
        ),
        (
            lambda s: s["rescorer"].Rescore(
                attention_rescorer_pb2.RescoreRequest(queries=to_tensor(np.zeros((1, 384))))
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ids is empty",
        ),
        (
            lambda s: s["rescorer"].Rescore(columns(queries=to_tensor(np.zeros((1, 10))))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "queries: shape [1, 10] is not [-1, 384]",
        ),
        (
            lambda s: s["rescorer"].Rescore(columns(regions=None)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "regions: dtype must be",
        ),
        (
            lambda s: s["rescorer"].Rescore(columns(query_index=to_tensor(np.array([1], np.int32)))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "query_index has a row outside queries",
        ),
        (
            lambda s: s["rescorer"].Rescore(columns(keyword_slots=to_tensor(np.full((1, 32), 5, np.int32)))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "keyword_slots has an index outside",
        ),
        (
            lambda s: s["rescorer"].Rescore(columns(keyword_texts=["x" * 65])),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "the limit is 64 characters",
        ),
        (lambda s: s["rescorer"].Rescore(columns(8193)), grpc.StatusCode.RESOURCE_EXHAUSTED, "limit is 8192"),
        (
            lambda s: s["encoder"].Encode(
                query_encoder_pb2.EncodeRequest(
                    queries=[query_encoder_pb2.QueryInput(image=common_pb2.ImageInput(data=b"not an image"))]
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "cannot be decoded",
        ),
    ],
)
def test_limits_and_bad_inputs_get_their_status_and_services_stay_healthy(real_stack, stubs, call, code, fragment):
    with pytest.raises(grpc.RpcError) as raised:
        call(stubs)
    assert raised.value.code() == code, raised.value.details()
    assert fragment in raised.value.details()
    from amcsearch.processes import grpc_serving

    for module in ("query_encoder", "feature_extractor", "keyword_tagger", "attention_rescorer"):
        assert grpc_serving(real_stack.address(module))

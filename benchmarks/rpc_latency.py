"""Per-RPC latency of the four model services, cache hit vs miss: `python -m benchmarks.rpc_latency`.

Starts the stack on free ports (the model_repository as built), calls each RPC N times with
fresh inputs (misses) and N times with repeated inputs (hits), and prints a markdown table of
p50 / p90 in milliseconds. Bounded: N calls per row, loopback only.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from amcsearch.launcher import ROOT, Stack
from amcsearch.runtime.quantize import quantize_regions
from amcsearch.runtime.rescoring import pack, rescore_request
from amcsearch.v1 import (
    attention_rescorer_pb2_grpc,
    feature_extractor_pb2,
    feature_extractor_pb2_grpc,
    keyword_tagger_pb2,
    keyword_tagger_pb2_grpc,
    query_encoder_pb2,
    query_encoder_pb2_grpc,
)

from loadtests.data import png


def timed(call, requests) -> list[float]:
    times = []
    for request in requests:
        started = time.perf_counter()
        call(request, timeout=60)
        times.append((time.perf_counter() - started) * 1000)
    return times


def row(name: str, times: list[float]) -> str:
    return f"| {name} | {np.percentile(times, 50):.1f} | {np.percentile(times, 90):.1f} | {len(times)} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    from models.corpus import load_or_build_corpus

    split = load_or_build_corpus("ci", 0).test
    images = [png(p) for p in split.pixels[: 2 * args.calls]]
    work = Path(tempfile.mkdtemp(prefix="amcsearch-rpc-latency-"))
    stack = Stack(ROOT / "model_repository", work / "logs", extra_env={"INDEX_URI": str(work / "index.sqlite")})
    stack.start(timeout=300)
    try:
        channel = lambda m: grpc.insecure_channel(stack.address(m))  # noqa: E731
        encoder = query_encoder_pb2_grpc.QueryEncoderStub(channel("query_encoder")).Encode
        extractor = feature_extractor_pb2_grpc.FeatureExtractorStub(channel("feature_extractor")).Extract
        tagger = keyword_tagger_pb2_grpc.KeywordTaggerStub(channel("keyword_tagger")).Tag
        rescorer = attention_rescorer_pb2_grpc.AttentionRescorerStub(channel("attention_rescorer")).Rescore

        def text(i: int) -> query_encoder_pb2.EncodeRequest:
            return query_encoder_pb2.EncodeRequest(
                queries=[query_encoder_pb2.QueryInput(text=f"red circle number {i}")]
            )

        def extract(batch: list[bytes]) -> feature_extractor_pb2.ExtractRequest:
            return feature_extractor_pb2.ExtractRequest(images=batch)

        rows = ["| RPC | p50 ms | p90 ms | calls |", "| --- | --- | --- | --- |"]
        rows.append(row("Encode 1 text, miss", timed(encoder, [text(i) for i in range(args.calls)])))
        rows.append(row("Encode 1 text, hit", timed(encoder, [text(i) for i in range(args.calls)])))
        rows.append(row("Extract 1 image, miss", timed(extractor, [extract([img]) for img in images[: args.calls]])))
        rows.append(row("Extract 1 image, hit", timed(extractor, [extract([img]) for img in images[: args.calls]])))
        batches = [images[i : i + 8] for i in range(args.calls, 2 * args.calls, 8)]
        rows.append(row("Extract 8 images, miss", timed(extractor, [extract(b) for b in batches])))
        rows.append(
            row(
                "Tag 1 image",
                timed(tagger, [keyword_tagger_pb2.TagRequest(images=[img]) for img in images[: args.calls]]),
            )
        )
        features = extractor(extract(images[:50]), timeout=60).results
        quantized = [quantize_regions(np.frombuffer(f.features.regions.data, "<f4").reshape(36, 128)) for f in features]
        batch = pack(
            [r.id for r in split.images[:50]],
            [q for q, _ in quantized],
            [s for _, s in quantized],
            [r.noisy_keywords for r in split.images[:50]],
        )
        query = np.frombuffer(encoder(text(0), timeout=60).embeddings[0].embedding.data, "<f4")
        rows.append(
            row(
                "Rescore 50 candidates (int8 regions)",
                timed(rescorer, [rescore_request(query, batch, False)] * args.calls),
            )
        )
        rows.append(
            row("Rescore 50 candidates, explain", timed(rescorer, [rescore_request(query, batch, True)] * args.calls))
        )
        print("\n".join(rows))
    finally:
        stack.stop()


if __name__ == "__main__":
    main()

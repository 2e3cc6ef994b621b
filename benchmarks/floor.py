"""The compute floor of one text Search: the exported model files called in this process.

What a Search cannot avoid on this machine: the text_encoder forward of the query (batch 1,
tokenized as the service tokenizes), the amc_rescorer forward over its N candidates (the
exported file, with the same int8 regions and keyword indices the service sends), and an exact
top-N over the index's vectors (numpy, one matrix-vector product; where the engine searches an
HNSW graph, that graph's search instead, in-process). Their p50s summed are the floor of one
Search; the best throughput of the same forwards, batching queries as Triton's dynamic batcher
may, is the floor for concurrency, and cores / that throughput the floor's CPU per Search.
Nothing here uses gRPC, Triton, Redis or the index engine's store: the reference must not share
the slow part it is compared with. The two forwards are also timed on one intra-op thread, as
each Triton model stub runs them, to compare with Triton's own per-request compute.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from amcsearch.attention_rescorer.rescorer import Vocabulary, build_inputs
from amcsearch.query_encoder.tokenize import Tokenizer
from amcsearch.runtime.contract import AMC_RESCORER, model_specs
from amcsearch.runtime.rescoring import CandidateBatch

AMC_INPUTS = tuple(t.name for t in model_specs(vocab_size=1)[AMC_RESCORER].inputs)
"""amc_rescorer's inputs in forward()'s order, from the tensor contract."""


def _p50(function, repeat: int) -> float:
    function()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@dataclass
class Floor:
    text_encoder: float
    rescorer: float
    top_n: float
    best_qps: float
    best_qps_batch: int
    candidates: int
    vectors: int
    ann: str = "numpy"
    one_thread: dict[str, float] | None = None
    """text_encoder and amc_rescorer p50 on one intra-op thread (as a Triton stub runs them)."""
    text_per_text: dict[int, float] | None = None
    """batch size -> text_encoder p50 per text at that batch, on one intra-op thread: what a stub's
    forward of the batches the served stack sends costs in-process."""
    threads: int = 2

    @property
    def cpu_per_search(self) -> float:
        """CPU seconds one Search needs at the floor's best throughput: cores / QPS."""
        return self.threads / self.best_qps

    @property
    def search(self) -> float:
        return self.text_encoder + self.rescorer + self.top_n

    def rows(self) -> list[tuple[str, float]]:
        return [
            ("text_encoder, batch 1", self.text_encoder),
            (f"amc_rescorer over {self.candidates} candidates", self.rescorer),
            (f"top-{self.candidates} over the vectors ({self.ann})", self.top_n),
            ("floor of one Search (sum)", self.search),
        ]


class ComputeFloor:
    def __init__(self, repository: Path, vocabulary: dict[str, int]) -> None:
        self.threads = 2
        torch.set_num_threads(self.threads)
        self.text_encoder = torch.jit.load(str(repository / "text_encoder" / "1" / "model.pt")).eval()
        self.rescorer = torch.jit.load(str(repository / "amc_rescorer" / "1" / "model.pt")).eval()
        self.tokenizer = Tokenizer.default()
        self.vocabulary = Vocabulary(sorted(vocabulary, key=vocabulary.__getitem__))

    def encode(self, texts: list[str]) -> np.ndarray:
        ids, mask, _ = self.tokenizer.encode(texts)
        with torch.inference_mode():
            return self.text_encoder(torch.from_numpy(ids), torch.from_numpy(mask))[0].numpy()

    def rescore(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return self.rescorer(*(torch.from_numpy(np.ascontiguousarray(inputs[k])) for k in AMC_INPUTS))[0].numpy()

    def measure(
        self,
        texts: list[str],
        vectors: np.ndarray,
        candidates: CandidateBatch,
        hnsw: bool = False,
        repeat: int = 30,
        text_batches: tuple[int, ...] = (),
    ) -> Floor:
        """`hnsw`: the engine searches a graph at this size; time the same graph search.
        `text_batches`: also time text_encoder per text at these batch sizes on one thread."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        query = self.encode(texts[:1])[0]
        inputs = build_inputs(query[None], candidates, self.vocabulary, {})
        n = len(candidates)
        counter = iter(range(10**9))

        def encode_one() -> None:
            self.encode([texts[next(counter) % len(texts)]])

        def top_n() -> None:
            scores = vectors @ query
            top = np.argpartition(-scores, n - 1)[:n]
            top[np.argsort(-scores[top])]

        if hnsw:
            from amcsearch.search.vector_index import VectorIndex

            graph = VectorIndex(vectors.shape[1], hnsw_min_rows=1, ef_search=256)
            graph.add(np.arange(len(vectors)), vectors, build_graph=False)
            graph.ensure_graph(background=False)

            def top_n() -> None:  # noqa: F811 (the graph's search replaces numpy's)
                graph.search(query, n)

        text = _p50(encode_one, repeat)
        rescorer = _p50(lambda: self.rescore(inputs), repeat)
        ann = _p50(top_n, repeat)
        torch.set_num_threads(1)
        one_thread = {
            "text_encoder": _p50(encode_one, repeat),
            "amc_rescorer": _p50(lambda: self.rescore(inputs), repeat),
        }
        per_text = {}
        for batch in sorted(set(text_batches)):
            batch_texts = [texts[i % len(texts)] for i in range(batch)]
            per_text[batch] = _p50(lambda t=batch_texts: self.encode(t), max(5, repeat // batch)) / batch
        torch.set_num_threads(self.threads)
        best, best_batch = 0.0, 1
        for batch in (1, 4, 16):
            batch_texts = [texts[i % len(texts)] for i in range(batch)]
            encoded = _p50(lambda batch_texts=batch_texts: self.encode(batch_texts), max(5, repeat // batch))
            qps = batch / (encoded + batch * (rescorer + ann))
            if qps > best:
                best, best_batch = qps, batch
        return Floor(
            text,
            rescorer,
            ann,
            best,
            best_batch,
            n,
            len(vectors),
            "hnsw" if hnsw else "numpy",
            one_thread,
            per_text,
            self.threads,
        )

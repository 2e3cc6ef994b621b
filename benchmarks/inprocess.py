"""Search(text) in one Python process: the reference the served pipeline is compared with.

The same steps as SearchService with its model services, and the same code where the code is
plain logic: tokenize (the QueryEncoder's Tokenizer), text_encoder (the exported TorchScript file
Triton serves), Milvus ANN top-N through the same MilvusIndex class (a milvus-lite file holding the
same records), AMC rescoring of the N candidates in one batched call of the amc_rescorer
TorchScript file with the AttentionRescorer's own input builder, then top-k. What it leaves out is
exactly the serving machinery: no gRPC between services, no Triton, no Redis (candidate features
and keyword vectors are in-memory dicts, like a warm cache). Model calls run in a thread pool so
that concurrent searches overlap as they do in the async services.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from amcsearch.attention_rescorer.rescorer import build_inputs, keyword_slots
from amcsearch.query_encoder.tokenize import Tokenizer
from amcsearch.runtime.indexed import IndexedFeatures
from amcsearch.search.index import MilvusIndex


class InProcessSearch:
    def __init__(self, repository: Path, index: MilvusIndex, features: dict[str, IndexedFeatures],
                 threads: int = 16) -> None:
        self.text_encoder = torch.jit.load(str(repository / "text_encoder" / "1" / "model.pt")).eval()
        self.rescorer = torch.jit.load(str(repository / "amc_rescorer" / "1" / "model.pt")).eval()
        self.tokenizer = Tokenizer.default()
        self.index = index
        self.features = features
        self.keyword_vectors: dict[str, np.ndarray] = {}
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="inprocess")

    def _encode(self, texts: list[str]) -> np.ndarray:
        ids, mask, _ = self.tokenizer.encode(texts)
        with torch.inference_mode():
            out = self.text_encoder(torch.from_numpy(ids), torch.from_numpy(mask))
        return (out[0] if isinstance(out, tuple) else out).numpy()

    def _rescore(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            out = self.rescorer(*(torch.from_numpy(np.ascontiguousarray(inputs[k]))
                                  for k in ("query", "regions", "keywords", "keyword_mask")))
        return out[0].numpy().reshape(-1)

    async def _run(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    async def search(self, text: str, top_k: int = 10, candidates: int = 100) -> list[tuple[str, float]]:
        query = (await self._run(self._encode, [text]))[0]
        hits = await self.index.search(query, candidates, [], [], [])
        found = [self.features[h.id] for h in hits]
        texts = sorted({t for f in found for t, _ in keyword_slots(f.keywords)})
        missing = [t for t in texts if t not in self.keyword_vectors]
        if missing:
            self.keyword_vectors.update(zip(missing, await self._run(self._encode, missing), strict=True))
        scores = await self._run(self._rescore, build_inputs(query, found, self.keyword_vectors))
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [(found[i].id, float(scores[i])) for i in order]

    def close(self) -> None:
        self.executor.shutdown(wait=False)

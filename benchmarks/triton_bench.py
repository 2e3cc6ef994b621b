"""Triton-level figures: dynamic batching on vs off, and bytes per image on the wire."""

from __future__ import annotations

import io
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as triton_aio
from amcsearch import processes
from amcsearch.query_encoder.tokenize import Tokenizer
from amcsearch.runtime import contract as c
from PIL import Image
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc._utils import _get_inference_request

from benchmarks.measure import Run, closed_loop, scrape, total

DYNAMIC_BATCHING = re.compile(r"dynamic_batching\s*\{[^}]*\}\s*")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def repository_without_batching(repository: Path, models: list[str], target: Path) -> Path:
    """A copy of `models` whose configs have no dynamic_batching block (files hard-linked)."""
    shutil.rmtree(target, ignore_errors=True)
    for model in models:
        shutil.copytree(repository / model, target / model, copy_function=_link_or_copy)
        for config in [target / model / "config.pbtxt", target / model / "configs" / "pyt.pbtxt"]:
            if config.exists():
                text = config.read_text()
                config.unlink()  # a hard link: never write through it
                stripped = DYNAMIC_BATCHING.sub("", text)
                if "dynamic_batching" in stripped:
                    raise ValueError(f"{config}: could not remove dynamic_batching")
                config.write_text(stripped)
    return target


@dataclass
class TritonLoad:
    run: Run
    mean_batch: float
    """nv_inference_count / nv_inference_exec_count over the run."""
    queue_ms: float
    """Mean time a request waited in Triton's queue."""
    compute_ms_per_execution: float
    """Mean compute time of one model execution (one batch)."""


async def text_encoder_load(url: str, metrics_url: str, concurrency: int, count: int) -> TritonLoad:
    """One-query requests to text_encoder from `concurrency` async callers, with Triton's own
    counters over the run."""
    client = triton_aio.InferenceServerClient(url)
    tokenizer = Tokenizer.default()
    requests = []
    for number in range(count):
        ids, mask, _ = tokenizer.encode([f"small red circle top-left and blue square number {number}"])
        inputs = []
        for name, array in (("input_ids", ids), ("attention_mask", mask)):
            tensor = InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        requests.append(inputs)
    outputs = [InferRequestedOutput(c.EMBEDDING_OUT)]

    async def call(number: int) -> None:
        await client.infer(c.TEXT_ENCODER, requests[number % len(requests)], outputs=outputs)

    try:
        await closed_loop(call, 2 * concurrency, concurrency)  # warm-up
        before = scrape(metrics_url)
        run = await closed_loop(call, count, concurrency)
        after = scrape(metrics_url)
    finally:
        await client.close()

    def delta(name: str) -> float:
        return total(after, name, model=c.TEXT_ENCODER) - total(before, name, model=c.TEXT_ENCODER)

    executions = max(delta("nv_inference_exec_count"), 1.0)
    requests = max(delta("nv_inference_request_success"), 1.0)
    return TritonLoad(run, delta("nv_inference_count") / executions,
                      delta("nv_inference_queue_duration_us") / requests / 1000,
                      # every request of a batch is charged the whole execution's compute time, so
                      # the mean over requests is the mean execution time
                      delta("nv_inference_compute_infer_duration_us") / requests / 1000)


def start_triton(repository: Path, log_dir: Path, models: list[str]) -> processes.Process:
    grpc_port, http_port, metrics_port = processes.free_port(), processes.free_port(), processes.free_port()
    triton = processes.triton_process(repository, log_dir, grpc_port, http_port, metrics_port, models=models)
    triton.start()
    try:
        processes.wait_until(lambda: processes.triton_ready(http_port), 180, "tritonserver", triton)
    except BaseException:
        triton.stop()
        raise
    return triton


def wire_bytes_per_image(pngs: list[bytes]) -> dict[str, float]:
    """Serialized size of the image_encoder request the FeatureExtractor sends (uint8 NHWC), per
    image, against the PNG the caller sent and a float32 tensor of the same pixels."""
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(p)).convert("RGB")) for p in pngs]).astype(np.uint8)
    tensor = InferInput("image", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    outputs = [InferRequestedOutput(c.EMBEDDING_OUT), InferRequestedOutput(c.REGIONS_OUT)]
    request = _get_inference_request(c.IMAGE_ENCODER, [tensor], "", "", outputs, 0, False, False, 0, None, None)
    count = len(pngs)
    return {
        "request": request.ByteSize() / count,
        "png": sum(len(p) for p in pngs) / count,
        "float32": pixels[0].size * 4,
        "reply": (c.EMBEDDING_DIM + c.REGION_COUNT * c.REGION_DIM) * 4,
    }

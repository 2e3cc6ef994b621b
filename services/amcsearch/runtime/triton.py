"""Async Triton client: one batched infer call, deadlines kept, readiness by canary.

Triton's health endpoints stay green when a Python-backend stub has died, so readiness here is
a real inference of zeros through every model the service needs.

An inference call is never cancelled. The caller's deadline is kept here: when it passes (or
the caller is cancelled), the caller gets DEADLINE_EXCEEDED (or its cancellation) at once, and
the Triton call runs on to its own, longer deadline (TRITON_CALL_CEILING_SECONDS), its answer
dropped. Triton 2.51, the nvidia-pytriton wheel's, can crash on a cancelled gRPC inference
whose response is being completed (triton-inference-server/server#7368, fixed in 24.12), and
under load a deadline or the gateway's rescore budget cancels calls at exactly that moment.
The cost: Triton finishes work nobody waits for.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, triton_to_np_dtype

from amcsearch.runtime.errors import AmcsearchError, DeadlineExceeded, InvalidArgument, Unavailable
from amcsearch.runtime.metrics import TRITON_ABANDONED, TRITON_REQUEST_BYTES, TRITON_SECONDS
from amcsearch.runtime.settings import TRITON_ADMIN_HEADER, TritonSettings

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def translate_error(error: InferenceServerException, model: str) -> AmcsearchError:
    status = str(error.status() or "")
    message = f"Triton model {model}: {error.message()}"
    if "DEADLINE_EXCEEDED" in status or "Deadline" in (error.message() or ""):
        return DeadlineExceeded(message)
    if "INVALID_ARGUMENT" in status:
        return InvalidArgument(message)
    return Unavailable(message)


class TritonModels:
    """The Triton models one service uses, behind one async gRPC client."""

    def __init__(self, settings: TritonSettings, service: str) -> None:
        self.settings = settings
        self.service = service
        self.client = triton_aio.InferenceServerClient(
            settings.url,
            channel_args=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),  # resume within ~1 s once Triton is back
            ],
        )
        self._configs: dict[str, dict] = {}
        self._admin_headers = (
            {f"triton-grpc-protocol-{TRITON_ADMIN_HEADER}": settings.admin_key} if settings.admin_key else None
        )
        """For the protocols Triton restricts when the key is set (model-config here)."""
        self._last_canary = float("-inf")
        self._abandoned: set[asyncio.Future] = set()  # calls left to finish (a reference each)

    async def close(self, grace_seconds: float = 5.0) -> None:
        """Close the channel once the abandoned calls have ended (closing cancels them), or
        after `grace_seconds`."""
        if self._abandoned:
            await asyncio.wait(set(self._abandoned), timeout=grace_seconds)
        await self.client.close()

    async def infer(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        outputs: list[str],
        timeout_seconds: float | None = None,
        class_counts: dict[str, int] | None = None,
    ) -> dict[str, np.ndarray]:
        """One inference call for a whole batch; `timeout_seconds` is the caller's remaining deadline.

        `class_counts` asks Triton's classification extension for the top-k "score:index:label"
        strings of an output instead of its raw values.
        """
        if timeout_seconds is not None and timeout_seconds <= 0:
            raise DeadlineExceeded(f"no time left to call Triton model {model}")
        TRITON_REQUEST_BYTES.labels(self.service, model).observe(sum(a.nbytes for a in inputs.values()))
        triton_inputs = []
        for name, array in inputs.items():
            triton_input = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            triton_input.set_data_from_numpy(np.ascontiguousarray(array))
            triton_inputs.append(triton_input)
        call = asyncio.ensure_future(
            self.client.infer(
                model,
                triton_inputs,
                outputs=[InferRequestedOutput(name, class_count=(class_counts or {}).get(name, 0)) for name in outputs],
                client_timeout=self.settings.call_ceiling_seconds,
            )
        )
        start = time.perf_counter()
        outcome = "ok"
        try:
            result = await asyncio.wait_for(asyncio.shield(call), timeout_seconds)
        except InferenceServerException as error:
            translated = translate_error(error, model)
            outcome = type(translated).__name__
            raise translated from error
        except TimeoutError as error:
            outcome = "DeadlineExceeded"
            self._abandon(call, model)
            raise DeadlineExceeded(f"Triton model {model}: the deadline passed before it answered") from error
        except asyncio.CancelledError:
            outcome = "cancelled"
            self._abandon(call, model)
            raise
        finally:
            TRITON_SECONDS.labels(self.service, model, outcome).observe(time.perf_counter() - start)
        return {name: result.as_numpy(name) for name in outputs}

    def _abandon(self, call: asyncio.Future, model: str) -> None:
        """Let a call nobody waits for run to its end (see the module doc), then drop its answer."""
        TRITON_ABANDONED.labels(self.service, model).inc()
        self._abandoned.add(call)
        call.add_done_callback(self._drop)

    def _drop(self, call: asyncio.Future) -> None:
        self._abandoned.discard(call)
        if not call.cancelled():
            call.exception()  # retrieved, so asyncio does not log it as never retrieved

    async def config(self, model: str) -> dict:
        """The model's config as JSON (cached; cleared when a canary fails)."""
        if model not in self._configs:
            try:
                response = await self.client.get_model_config(
                    model, headers=self._admin_headers, as_json=True, client_timeout=5.0
                )
            except InferenceServerException as error:
                raise translate_error(error, model) from error
            self._configs[model] = response["config"]
        return self._configs[model]

    async def max_batch_size(self, model: str) -> int:
        """Rows one request may carry (0: the model has no batch dimension, no limit here)."""
        return int((await self.config(model)).get("max_batch_size", 0))

    async def infer_chunked(
        self, model: str, inputs: dict[str, np.ndarray], outputs: list[str], timeout_seconds: float | None = None
    ) -> dict[str, np.ndarray]:
        """infer() in as many calls as the model's max_batch_size needs, outputs concatenated.
        Every input must have the same (batch) first dimension and fixed other dimensions."""
        step = await self.max_batch_size(model)
        rows = next(iter(inputs.values())).shape[0]
        if step <= 0 or rows <= step:
            return await self.infer(model, inputs, outputs, timeout_seconds)
        parts = [
            await self.infer(model, {k: v[s : s + step] for k, v in inputs.items()}, outputs, timeout_seconds)
            for s in range(0, rows, step)
        ]
        return {name: np.concatenate([p[name] for p in parts]) for name in outputs}

    async def build_id(self, model: str) -> str:
        """The model's build_id parameter (sha256 prefix of model.pt), for cache keys."""
        parameters = (await self.config(model)).get("parameters", {})
        return str(parameters.get("build_id", {}).get("string_value", "unversioned"))

    async def has_model(self, model: str) -> bool:
        """Whether Triton has `model` loaded and ready (no inference)."""
        try:
            return bool(await self.client.is_model_ready(model, client_timeout=2.0))
        except InferenceServerException:
            return False

    async def canary(self, model: str) -> None:
        """Run one inference of zeros (batch 1) through `model`; raises when it fails."""
        config = await self.config(model)
        inputs = {}
        for tensor in config["input"]:
            dtype = triton_to_np_dtype(tensor["data_type"].removeprefix("TYPE_"))
            dims = [1 if int(d) < 0 else int(d) for d in tensor["dims"]]
            batch = [1] if int(config.get("max_batch_size", 0)) > 0 else []
            inputs[tensor["name"]] = np.zeros([*batch, *dims], dtype=dtype)
        await self.infer(model, inputs, [config["output"][0]["name"]], self.settings.canary_timeout_seconds)

    async def ready(self, models: list[str]) -> bool:
        """True when every model answers; a canary inference at most every canary_interval."""
        now = time.monotonic()
        try:
            if now - self._last_canary >= self.settings.canary_interval_seconds:
                for model in models:
                    await self.canary(model)
                self._last_canary = now
            else:
                for model in models:
                    if not await self.client.is_model_ready(model, client_timeout=2.0):
                        raise Unavailable(f"Triton model {model} is not ready")
        except (AmcsearchError, InferenceServerException, OSError) as error:
            log.warning("Triton not ready for %s: %s", self.service, error)
            self._configs.clear()
            self._last_canary = float("-inf")
            return False
        return True

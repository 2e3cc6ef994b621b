"""Image decoding on a budget, off the event loop: bytes -> uint8 [size, size, 3] for Triton.

The models take 128 x 128, so no decode needs the full pixel grid of a huge image, and none may
cost more than a bounded amount of memory and CPU (a 39 KB PNG of 40,000,000 x 1 pixels decodes
to ~800 MB). In order:
- the header is read first (Pillow's open() reads nothing else): format, width and height are
  checked against the pixel, side and aspect-ratio limits before any pixel is decoded;
- JPEG decodes through `draft`, at 1/2, 1/4 or 1/8 scale, to just above the model's size;
- truncated or corrupt data is refused (Pillow raises; the message says so, without reprs);
- decodes run in a bounded thread pool per process (`decode_concurrency`), so concurrent
  requests cannot multiply the peak memory without limit.
"""

from __future__ import annotations

import asyncio
import io
import re
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from amcsearch.runtime.errors import InvalidArgument, ResourceExhausted, limit, require
from amcsearch.runtime.settings import ImageLimits
from amcsearch.runtime.tensors import from_tensor
from amcsearch.v1 import common_pb2

ACCEPTED_FORMATS = {"JPEG", "PNG", "WEBP"}
Image.MAX_IMAGE_PIXELS = None  # our own limits apply, before decoding, with our own messages
_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


THUMBNAIL_SIDE = 96
"""Pixels a side of the thumbnail kept per indexed image."""


def thumbnail(pixels: np.ndarray) -> bytes:
    """A small JPEG of decoded pixels (the image as the models saw it), for result pages: made
    once at index time so that no reader ever opens a file an indexed item names."""
    buffer = io.BytesIO()
    small = Image.fromarray(np.asarray(pixels, dtype=np.uint8)).resize(
        (THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BILINEAR
    )
    small.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def decoder_pool(limits: ImageLimits) -> ThreadPoolExecutor:
    """The process's decode threads: at most `decode_concurrency` decodes at once."""
    return ThreadPoolExecutor(max_workers=limits.decode_concurrency, thread_name_prefix="decode")


def check_dimensions(width: int, height: int, limits: ImageLimits, what: str) -> None:
    """Pixels, longest side and aspect ratio, from the header, before decoding."""
    if width < 1 or height < 1:
        raise InvalidArgument(f"{what} has no pixels ({width}x{height})")
    pixels = width * height
    if pixels > limits.max_image_pixels:
        raise ResourceExhausted(f"{what} is {width}x{height} = {pixels} pixels, the limit is {limits.max_image_pixels}")
    if max(width, height) > limits.max_image_side:
        raise ResourceExhausted(f"{what} is {width}x{height}: a side is longer than {limits.max_image_side} pixels")
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_aspect_ratio:
        raise ResourceExhausted(
            f"{what} is {width}x{height}: aspect ratio {ratio:.0f}:1, the limit is {limits.max_aspect_ratio:g}:1"
        )


def decode_image(data: bytes, limits: ImageLimits, what: str = "image") -> np.ndarray:
    """Decode, check and resize one image; errors name it as `what` ("image", "image 3")."""
    if not data:
        raise InvalidArgument(f"{what} is empty")
    limit(len(data), limits.max_image_bytes, f"{what} size", "bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ACCEPTED_FORMATS:
                raise InvalidArgument(f"{what} is {image.format or 'of an unknown format'}; accepted: JPEG, PNG, WebP")
            check_dimensions(*image.size, limits, what)
            if image.format == "JPEG":
                image.draft("RGB", (limits.image_size, limits.image_size))  # reduced-scale decode
            rgb = image.convert("RGB")
            if rgb.size != (limits.image_size, limits.image_size):
                rgb = rgb.resize((limits.image_size, limits.image_size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except UnidentifiedImageError as error:
        raise InvalidArgument(f"{what} cannot be decoded as JPEG, PNG or WebP") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        reason = _REPR.sub("the data", str(error)) or type(error).__name__
        raise InvalidArgument(f"{what} is truncated or corrupt: {reason}") from error


async def decode_images(
    images: list[bytes], limits: ImageLimits, executor: Executor | None = None, names: list[str] | None = None
) -> np.ndarray:
    """Decode a batch in the decode pool; returns uint8 [B, size, size, 3].

    `names` name the items in messages; by default "image" for a batch of one, else "image i".
    """
    loop = asyncio.get_running_loop()
    if names is None:
        names = ["image"] if len(images) == 1 else [f"image {i}" for i in range(len(images))]
    arrays = await asyncio.gather(
        *[
            loop.run_in_executor(executor, decode_image, data, limits, name)
            for name, data in zip(names, images, strict=True)
        ]
    )
    if not arrays:
        return np.zeros((0, limits.image_size, limits.image_size, 3), dtype=np.uint8)
    return np.stack(arrays)


def decoded_or_encoded(request: Any, max_batch: int, limits: ImageLimits) -> list[bytes] | np.ndarray:
    """The images of an Extract or Tag request: `pixels` (decoded by the caller) or `images`
    (encoded), checked: one of them, 1..max_batch images, sizes within the limits."""
    if request.HasField("pixels") and request.pixels.shape:
        require(not request.images, "send images or pixels, not both")
        shape = (-1, limits.image_size, limits.image_size, 3)
        pixels = from_tensor(request.pixels, shape, "pixels", (common_pb2.Tensor.UINT8,))
        require(pixels.shape[0] > 0, f"pixels is empty: send 1 to {max_batch} images")
        limit(pixels.shape[0], max_batch, "number of images")
        return pixels
    count = len(request.images)
    require(count > 0, f"images is empty: send 1 to {max_batch} images")
    limit(count, max_batch, "number of images")
    for i, data in enumerate(request.images):
        name = "image" if count == 1 else f"image {i}"
        require(len(data) > 0, f"{name} is empty")
        limit(len(data), limits.max_image_bytes, f"{name} size", "bytes")
    return list(request.images)

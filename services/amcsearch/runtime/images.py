"""Image decoding with limits, off the event loop: bytes -> uint8 [size, size, 3] for Triton."""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import Executor

import numpy as np
from PIL import Image, UnidentifiedImageError

from amcsearch.runtime.errors import InvalidArgument, ResourceExhausted, limit
from amcsearch.runtime.settings import ImageLimits

ACCEPTED_FORMATS = {"JPEG", "PNG", "WEBP"}


def decode_image(data: bytes, limits: ImageLimits, index: int) -> np.ndarray:
    """Decode, check and resize one image; errors name the item's index in the batch."""
    what = f"image {index}"
    if not data:
        raise InvalidArgument(f"{what} is empty")
    limit(len(data), limits.max_image_bytes, f"{what} size", "bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ACCEPTED_FORMATS:
                raise InvalidArgument(f"{what} is {image.format or 'of an unknown format'}; accepted: JPEG, PNG, WebP")
            width, height = image.size
            if width * height > limits.max_image_pixels:
                raise ResourceExhausted(
                    f"{what} is {width}x{height} = {width * height} pixels, the limit is {limits.max_image_pixels}"
                )
            rgb = image.convert("RGB")
            if rgb.size != (limits.image_size, limits.image_size):
                rgb = rgb.resize((limits.image_size, limits.image_size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except (UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise InvalidArgument(f"{what} cannot be decoded as JPEG, PNG or WebP: {error}") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise InvalidArgument(f"{what} is corrupt: {error}") from error


async def decode_images(images: list[bytes], limits: ImageLimits, executor: Executor | None = None,
                        indices: list[int] | None = None) -> np.ndarray:
    """Decode a batch in a thread pool; returns uint8 [B, size, size, 3].

    `indices` are the items' positions in the caller's request, used in error messages.
    """
    loop = asyncio.get_running_loop()
    indices = list(range(len(images))) if indices is None else indices
    arrays = await asyncio.gather(*[
        loop.run_in_executor(executor, decode_image, data, limits, index) for index, data in zip(indices, images)
    ])
    if not arrays:
        return np.zeros((0, limits.image_size, limits.image_size, 3), dtype=np.uint8)
    return np.stack(arrays)

"""Reduced-precision forms of the features that are stored per image and shipped per Search.

Region grids are int8 with one float32 scale per region (symmetric: x ~= q * scale, q in
[-127, 127]). That is 4,752 bytes per image instead of 18,432 in float32, and it is what the
index stores and what goes to the amc_rescorer model, which dequantizes inside. Keyword vectors
are float16. benchmarks/QUALITY.md shows the NDCG of both against float32.
"""

from __future__ import annotations

import numpy as np


def quantize_regions(regions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float regions [..., R, D] -> (int8 [..., R, D], float32 scales [..., R])."""
    regions = np.asarray(regions, dtype=np.float32)
    peak = np.abs(regions).max(axis=-1)
    scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    quantized = np.clip(np.rint(regions / scales[..., None]), -127, 127).astype(np.int8)
    return quantized, scales


def dequantize_regions(quantized: np.ndarray, scales: np.ndarray) -> np.ndarray:
    return quantized.astype(np.float32) * np.asarray(scales, dtype=np.float32)[..., None]

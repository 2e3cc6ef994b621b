"""Training of every model; `python -m models.train` (make models) runs them all."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name, family and model numbers (Linux) and the kernels torch picks on it
    (AVX2, AVX512): training is bit-identical run to run on one machine, not across CPUs whose
    kernels round differently, so QUALITY.md says which one trained and evaluated."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "cpu family", "model") and key.strip() not in fields:
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    family = (
        f"family {fields['cpu family']} model {fields['model']}, "
        if "cpu family" in fields and "model" in fields
        else ""
    )
    return f"{name} ({family}torch kernels {torch.backends.cpu.get_cpu_capability()})"

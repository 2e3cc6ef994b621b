"""Write a TorchScript module into the Triton model repository, runnable by both servers.

Per model: <name>/1/model.pt, <name>/config.pbtxt (pytorch_libtorch, for NVIDIA's container),
<name>/configs/pyt.pbtxt (python backend, for the nvidia-pytriton wheel's tritonserver) and
<name>/1/model.py (a copy of triton_python_model.py). See model_repository/README.md.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

PYTHON_MODEL_SOURCE = Path(__file__).with_name("triton_python_model.py")
DTYPES = ("FP32", "FP16", "INT64", "INT32", "UINT8", "BOOL")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output; dims exclude the batch dimension."""

    name: str
    dtype: str
    dims: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"tensor {self.name}: dtype {self.dtype} is not one of {DTYPES}")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int = 64
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 2000
    cpu_instances: int = 1
    labels: dict[str, str] = field(default_factory=dict)
    """Output name -> label file name (Triton's label_filename), e.g. keywords.txt."""

    def __post_init__(self) -> None:
        for index, tensor in enumerate(self.outputs):
            if not tensor.name.endswith(f"__{index}"):
                raise ValueError(f"output {tensor.name} must be named <name>__{index} (libtorch rule)")


def _tensor_block(kind: str, tensors: list[TensorSpec], labels: dict[str, str]) -> str:
    entries = []
    for tensor in tensors:
        dims = ", ".join(str(d) for d in tensor.dims)
        label = f'\n    label_filename: "{labels[tensor.name]}"' if tensor.name in labels else ""
        entries.append(
            f'  {{\n    name: "{tensor.name}"\n    data_type: TYPE_{tensor.dtype}\n    dims: [ {dims} ]{label}\n  }}'
        )
    return f"{kind} [\n" + ",\n".join(entries) + "\n]\n"


def render_config(spec: ModelSpec, build_id: str, backend: str) -> str:
    """Config text for backend "libtorch" (config.pbtxt) or "python" (configs/pyt.pbtxt)."""
    header = f'name: "{spec.name}"\n'
    if backend == "libtorch":
        header += 'platform: "pytorch_libtorch"\n'
        instances = "instance_group [ { count: 1 } ]\n"  # KIND_AUTO: the GPU when there is one
    elif backend == "python":
        header += 'backend: "python"\n'
        instances = f"instance_group [ {{ kind: KIND_CPU count: {spec.cpu_instances} }} ]\n"
    else:
        raise ValueError(f"backend {backend!r} is not 'libtorch' or 'python'")
    preferred = ""
    if spec.preferred_batch_sizes:
        preferred = f"  preferred_batch_size: [ {', '.join(map(str, spec.preferred_batch_sizes))} ]\n"
    return (
        header
        + f"max_batch_size: {spec.max_batch_size}\n"
        + _tensor_block("input", spec.inputs, {})
        + _tensor_block("output", spec.outputs, spec.labels)
        + f"dynamic_batching {{\n{preferred}  max_queue_delay_microseconds: {spec.max_queue_delay_us}\n}}\n"
        + instances
        + f'parameters {{ key: "build_id" value: {{ string_value: "{build_id}" }} }}\n'
    )


def export_model(
    module: torch.nn.Module,
    spec: ModelSpec,
    repository: Path,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Script `module` and write its folder under `repository`; returns the model folder."""
    scripted = torch.jit.script(module.eval())
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    model_bytes = buffer.getvalue()
    build_id = hashlib.sha256(model_bytes).hexdigest()[:12]

    folder = Path(repository) / spec.name
    version = folder / "1"
    if version.exists():
        shutil.rmtree(version)
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    version.mkdir(parents=True)
    (version / "model.pt").write_bytes(model_bytes)
    shutil.copyfile(PYTHON_MODEL_SOURCE, version / "model.py")
    (folder / "config.pbtxt").write_text(render_config(spec, build_id, "libtorch"))
    (folder / "configs" / "pyt.pbtxt").write_text(render_config(spec, build_id, "python"))
    for name, content in (extra_files or {}).items():
        (folder / name).write_bytes(content)
    return folder

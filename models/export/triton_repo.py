"""Write a TorchScript module into the Triton model repository, runnable by both servers.

Per model: <name>/1/model.pt, <name>/config.pbtxt (pytorch_libtorch, for NVIDIA's container),
<name>/configs/pyt.pbtxt (python backend, for the nvidia-pytriton wheel's tritonserver) and
<name>/1/model.py (a copy of triton_python_model.py). See model_repository/README.md.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sys
import zipfile
from pathlib import Path

import torch
from amcsearch.runtime.contract import DTYPES, ModelSpec
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

PYTHON_MODEL_SOURCE = Path(__file__).with_name("triton_python_model.py")
_DATA_TYPE = {dtype: model_config_pb2.DataType.Value(f"TYPE_{dtype}") for dtype in DTYPES}


def model_config(
    spec: ModelSpec, build_id: str, backend: str, parameters: dict[str, str] | None = None
) -> model_config_pb2.ModelConfig:
    """Triton's ModelConfig for backend "libtorch" (config.pbtxt) or "python" (configs/pyt.pbtxt)."""
    config = model_config_pb2.ModelConfig(name=spec.name, max_batch_size=spec.max_batch_size)
    if backend == "libtorch":
        config.platform = "pytorch_libtorch"
        config.instance_group.add(count=1)  # KIND_AUTO: the GPU when there is one
    elif backend == "python":
        config.backend = "python"
        config.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_CPU, count=spec.cpu_instances)
    else:
        raise ValueError(f"backend {backend!r} is not 'libtorch' or 'python'")
    for tensor in spec.inputs:
        config.input.add(name=tensor.name, data_type=_DATA_TYPE[tensor.dtype], dims=tensor.dims)
    for tensor in spec.outputs:
        config.output.add(
            name=tensor.name,
            data_type=_DATA_TYPE[tensor.dtype],
            dims=tensor.dims,
            label_filename=spec.labels.get(tensor.name, ""),
        )
    if spec.batched:
        config.dynamic_batching.max_queue_delay_microseconds = spec.max_queue_delay_us
        config.dynamic_batching.preferred_batch_size.extend(spec.preferred_batch_sizes)
    for key, value in {"build_id": build_id, **(parameters or {})}.items():
        config.parameters[key].string_value = value
    return config


def render_config(spec: ModelSpec, build_id: str, backend: str, parameters: dict[str, str] | None = None) -> str:
    """The config.pbtxt text of model_config()."""
    return text_format.MessageToString(model_config(spec, build_id, backend, parameters))


def export_model(
    module: torch.nn.Module,
    spec: ModelSpec,
    repository: Path,
    extra_files: dict[str, bytes] | None = None,
    parameters: dict[str, str] | None = None,
) -> Path:
    """Script `module` and write its folder under `repository`; returns the model folder."""
    scripted = torch.jit.script(module.eval())
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    model_bytes = buffer.getvalue()
    build_id = build_id_of(model_bytes)

    folder = Path(repository) / spec.name
    version = folder / "1"
    if version.exists():
        shutil.rmtree(version)
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    version.mkdir(parents=True)
    (version / "model.pt").write_bytes(model_bytes)
    shutil.copyfile(PYTHON_MODEL_SOURCE, version / "model.py")
    (folder / "config.pbtxt").write_text(render_config(spec, build_id, "libtorch", parameters))
    (folder / "configs" / "pyt.pbtxt").write_text(render_config(spec, build_id, "python", parameters))
    for name, content in (extra_files or {}).items():
        (folder / name).write_bytes(content)
    return folder


RANDOM_ARCHIVE_ENTRY = ".data/serialization_id"
"""torch.jit.save writes a random id into every archive; it says nothing about the model."""


def model_digest(model_bytes: bytes) -> str:
    """sha256 over a TorchScript archive's entries (names and contents) but its random
    serialization id: the same model gives the same digest, whichever run saved it."""
    h = hashlib.sha256()
    with zipfile.ZipFile(io.BytesIO(model_bytes)) as archive:
        for name in sorted(archive.namelist()):
            if not name.endswith(RANDOM_ARCHIVE_ENTRY):
                h.update(name.encode() + b"\0" + archive.read(name))
    return h.hexdigest()


def build_id_of(model_bytes: bytes) -> str:
    """The id a model file is served under (config parameter build_id, Stats.model_builds, the
    cache keys): its model_digest, so re-exporting the same weights keeps the caches warm."""
    return model_digest(model_bytes)[:12]


def run_with_environment(module: str, variables: dict[str, str]) -> None:
    """Re-run `python -m <module>` (same arguments) with `variables` set, unless they already are:
    for settings a process reads only as it starts (the hash seed, the C library's malloc)."""
    if any(os.environ.get(name) != value for name, value in variables.items()):
        env = {**os.environ, **variables}
        os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], env)


def run_with_fixed_hash_seed(module: str) -> None:
    """Re-run `python -m <module>` with PYTHONHASHSEED=0 unless it is already set so.

    TorchScript writes a module's constants in the order of a Python set of their names, which
    follows the string hash seed: without a fixed seed two exports of the same weights differ.
    """
    run_with_environment(module, {"PYTHONHASHSEED": "0"})


def read_config(repository: Path, model: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(
        (Path(repository) / model / "configs" / "pyt.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )


def keyword_vocabulary(repository: Path) -> dict[str, int]:
    """The amc_rescorer's built-in keyword texts -> rows, read from its exported config."""
    words = read_config(repository, "amc_rescorer").parameters["keyword_vocabulary"].string_value.split("\n")
    return {word: i for i, word in enumerate(words) if word}

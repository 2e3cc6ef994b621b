"""The one Python-backend model of the repository: runs <version>/model.pt with TorchScript.

Copied into every <model>/1/model.py by models/export/triton_repo.py. It imports only torch,
numpy and Triton's utils, so the same folder serves under the nvidia-pytriton wheel's server.
All requests of a dynamic batch are concatenated into one forward call, then split again; a
model without a batch dimension (max_batch_size 0) runs each request as it is.
"""

import json
import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils


def _output_index(name: str) -> int:
    return int(name.rsplit("__", 1)[1])


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.output_names = [tensor["name"] for tensor in config["output"]]
        self.output_dtypes = {
            tensor["name"]: pb_utils.triton_string_to_numpy(tensor["data_type"]) for tensor in config["output"]
        }
        # One intra-op thread by default: every model is its own stub process, and on a few cores
        # several OpenMP pools fight (2 spinning threads per stub tripled Search latency on 2
        # cores). Throughput comes from several models (and instances) running side by side.
        self.threads = int(os.environ.get("AMCSEARCH_TORCH_THREADS", "1"))
        # A forward of at least AMCSEARCH_TORCH_WIDE_ROWS rows of its first input (the texts of
        # a batch, the queries of a Rescore, the images of an Index batch; 0: never) is big
        # enough to split: it runs on AMCSEARCH_TORCH_WIDE_THREADS (default torch's own count: the
        # cores it sees, or OMP_NUM_THREADS). docs/decisions/0017-wide-forwards.md.
        self.wide_rows = int(os.environ.get("AMCSEARCH_TORCH_WIDE_ROWS", "8"))
        self.wide_threads = int(os.environ.get("AMCSEARCH_TORCH_WIDE_THREADS", str(torch.get_num_threads())))
        torch.set_num_threads(self.threads)
        use_gpu = torch.cuda.is_available() and os.environ.get("AMCSEARCH_TRITON_CPU_ONLY") != "1"
        self.device = torch.device("cuda" if use_gpu else "cpu")
        model_path = os.path.join(args["model_repository"], args["model_version"], "model.pt")
        self.module = torch.jit.load(model_path, map_location=self.device).eval()

    def execute(self, requests):
        try:
            return self._execute(requests)
        except Exception as error:  # one failed forward answers every request it carried
            message = f"{type(error).__name__}: {error}"
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(message)) for _ in requests]

    def _execute(self, requests):
        if not self.batched:
            return [self._split([request], [None], self._run(self._inputs(request)))[0] for request in requests]
        batches = [self._inputs(request) for request in requests]
        sizes = [batch[0].shape[0] for batch in batches]
        inputs = [np.concatenate([batch[i] for batch in batches]) for i in range(len(self.input_names))]
        return self._split(requests, sizes, self._run(inputs))

    def _run(self, inputs):
        rows = inputs[0].shape[0] if inputs[0].ndim else 1
        threads = self.wide_threads if 0 < self.wide_rows <= rows else self.threads
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        tensors = [torch.from_numpy(np.ascontiguousarray(array)).to(self.device) for array in inputs]
        with torch.inference_mode():
            outputs = self.module(*tensors)
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        return {
            name: outputs[_output_index(name)].detach().cpu().numpy().astype(self.output_dtypes[name])
            for name in self.output_names
        }

    def _split(self, requests, sizes, arrays):
        """One response per request: its rows of each output (all rows when size is None)."""
        responses = []
        start = 0
        for request, size in zip(requests, sizes, strict=True):
            wanted = request.requested_output_names() or self.output_names
            rows = slice(None) if size is None else slice(start, start + size)
            tensors = [pb_utils.Tensor(name, arrays[name][rows]) for name in wanted]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size or 0
        return responses

    def _inputs(self, request):
        return [pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names]

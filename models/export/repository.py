"""The five served models into model_repository/, from trained modules: what `make models` does
after training and what `make export` does from saved checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from amcsearch.runtime import contract as c
from torch import nn

from models.export.triton_repo import export_model
from models.nets.amc import ServedRescorer
from models.nets.image_encoder import count_parameters
from models.nets.text_encoder import embed_texts


def export_repository(repository: Path, vocab: list[str], text_encoder: nn.Module, tokenizer: Any,
                      image_encoder: nn.Module, tagger: nn.Module, rescorer: nn.Module,
                      composer: nn.Module) -> dict[str, dict[str, Any]]:
    """Export every model; amc_rescorer carries the vocabulary's keyword vectors (embedded here
    with the text_encoder) and lists the vocabulary in its config. Returns sizes per model."""
    specs = c.model_specs(len(vocab))
    vocabulary = embed_texts(text_encoder, list(vocab), tokenizer=tokenizer)
    exported = {
        c.TEXT_ENCODER: (text_encoder, None, None),
        c.IMAGE_ENCODER: (image_encoder, None, None),
        c.KEYWORD_TAGGER: (tagger, {"keywords.txt": ("\n".join(vocab) + "\n").encode()}, None),
        c.AMC_RESCORER: (ServedRescorer(rescorer, vocabulary), None, {"keyword_vocabulary": "\n".join(vocab)}),
        c.COMPOSER: (composer, None, None),
    }
    out = {}
    for name, (module, extra, parameters) in exported.items():
        folder = export_model(module, specs[name], repository, extra_files=extra, parameters=parameters)
        out[name] = {
            "folder": str(folder),
            "model_pt_bytes": (folder / "1" / "model.pt").stat().st_size,
            "parameters": count_parameters(module),
        }
    return out

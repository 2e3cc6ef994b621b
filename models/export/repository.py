"""The served models into model_repository/, from trained modules: what `make models` does after
training and what `make export` does from saved checkpoints. The three cross-domain models
(ynet_shop, ynet_street, ctx_ynet) are exported when TagYNet and CtxYNet are given."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from amcsearch.runtime import contract as c
from amcsearch.search.synonyms import QUERY_SYNONYMS_PARAMETER, format_synonyms
from torch import nn

from models.corpus.vocab import PLACEMENT_LABELS
from models.export.triton_repo import build_id_of, export_model
from models.nets.amc import ServedRescorer
from models.nets.image_encoder import count_parameters
from models.nets.text_encoder import embed_texts
from models.nets.ynet import CtxYNet, ServedContextRescorer, ServedShop, ServedStreet, TagYNet


def export_repository(
    repository: Path,
    vocab: list[str],
    text_encoder: nn.Module,
    tokenizer: Any,
    image_encoder: nn.Module,
    tagger: nn.Module,
    rescorer: nn.Module,
    composer: nn.Module,
    tag_ynet: TagYNet | None = None,
    ctx_ynet: CtxYNet | None = None,
    synonyms: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Export every model; amc_rescorer carries the vocabulary's keyword vectors (embedded here
    with the text_encoder) and lists the vocabulary in its config; ynet_shop takes tags as a
    multi-hot over the same vocabulary (tags.txt, and its config's `tag_vocabulary`); the
    text_encoder's config carries the query synonym table (models/export/synonyms.py). Returns
    sizes per model."""
    specs = c.model_specs(len(vocab), len(PLACEMENT_LABELS))
    vocabulary = embed_texts(text_encoder, list(vocab), tokenizer=tokenizer)
    exported = {
        c.TEXT_ENCODER: (text_encoder, None, {QUERY_SYNONYMS_PARAMETER: format_synonyms(synonyms or {})}),
        c.IMAGE_ENCODER: (image_encoder, None, None),
        c.KEYWORD_TAGGER: (
            tagger,
            {
                "keywords.txt": ("\n".join(vocab) + "\n").encode(),
                "placements.txt": ("\n".join(PLACEMENT_LABELS) + "\n").encode(),
            },
            None,
        ),
        c.AMC_RESCORER: (ServedRescorer(rescorer, vocabulary), None, {"keyword_vocabulary": "\n".join(vocab)}),
        c.COMPOSER: (composer, None, None),
    }
    if tag_ynet is not None and ctx_ynet is not None:
        tags = {"tags.txt": ("\n".join(vocab) + "\n").encode()}
        exported[c.YNET_SHOP] = (ServedShop(tag_ynet, ctx_ynet), tags, {"tag_vocabulary": "\n".join(vocab)})
        exported[c.YNET_STREET] = (ServedStreet(tag_ynet, ctx_ynet), None, None)
        exported[c.CTX_YNET] = (ServedContextRescorer(ctx_ynet), None, None)
    out = {}
    for name, (module, extra, parameters) in exported.items():
        folder = export_model(module, specs[name], repository, extra_files=extra, parameters=parameters)
        out[name] = {
            "folder": str(folder),
            "model_pt_bytes": (folder / "1" / "model.pt").stat().st_size,
            "build_id": build_id_of((folder / "1" / "model.pt").read_bytes()),
            "parameters": count_parameters(module),
        }
    return out

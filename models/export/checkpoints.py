"""Loading the state_dicts `make models` saves under build/checkpoints/<size>/, for evaluation
and for re-exporting the model repository without training again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.corpus.vocab import PLACEMENT_ATTRIBUTES
from models.nets.amc import build_text_search_models
from models.nets.composer import load_composers
from models.nets.image_encoder import ImageEncoder
from models.nets.keyword_tagger import KeywordTagger
from models.nets.ynet import CtxYNet, TagYNet

AMC_CHECKPOINTS = {
    "amc_full": "amc_full",
    "img_att": "amc_img_att",
    "key_att": "amc_key_att",
    "dssm_img": "amc_dssm_img",
    "dssm_key": "amc_dssm_key",
}
"""train_amc key -> checkpoint name (models/train/__main__.py prefixes "amc_")."""


def state(folder: Path, name: str) -> dict[str, torch.Tensor]:
    path = folder / f"{name}.pt"
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} is missing; run `make models` with the same --size first")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_image_encoder(folder: Path, name: str) -> nn.Module:
    module = ImageEncoder()
    module.load_state_dict(state(folder, name))
    return module.eval()


def load_keyword_tagger(folder: Path, vocab_size: int) -> nn.Module:
    module = KeywordTagger(ImageEncoder(), vocab_size, placement_attributes=len(PLACEMENT_ATTRIBUTES))
    module.load_state_dict(state(folder, "keyword_tagger"))
    return module.eval()


def load_amc_models(folder: Path) -> dict[str, nn.Module]:
    models = build_text_search_models()
    for key, module in models.items():
        module.load_state_dict(state(folder, AMC_CHECKPOINTS[key]))
        module.eval()
    return models


def load_composer_models(folder: Path, manifest: dict[str, Any]) -> dict[str, nn.Module]:
    states = {
        p.stem[len("composer_") :]: torch.load(p, map_location="cpu", weights_only=True)
        for p in sorted(folder.glob("composer_*.pt"))
    }
    composers = load_composers(states)
    exported = manifest.get("composer_exported")
    if exported in composers:
        composers["composer"] = composers[exported]
    return composers


def load_ynet_models(folder: Path, vocab_size: int) -> dict[str, nn.Module] | None:
    """The cross-domain models (ynet_global: an ImageEncoder, tag_ynet, ctx_ynet), or None when
    the checkpoints predate them."""
    if not all((folder / f"{name}.pt").exists() for name in ("ynet_global", "tag_ynet", "ctx_ynet")):
        return None
    tag_ynet, ctx_ynet = TagYNet(vocab_size), CtxYNet(vocab_size)
    tag_ynet.load_state_dict(state(folder, "tag_ynet"))
    ctx_ynet.load_state_dict(state(folder, "ctx_ynet"))
    return {
        "ynet_global": load_image_encoder(folder, "ynet_global"),
        "tag_ynet": tag_ynet.eval(),
        "ctx_ynet": ctx_ynet.eval(),
    }

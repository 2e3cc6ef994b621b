"""Pieces of the `make models` driver: the tensor contract it exports, the composer pick and the
checkpoint files."""

from pathlib import Path

import pytest
import torch
from amcsearch.runtime.contract import model_specs
from torch import nn

from models.export.triton_repo import render_config
from models.nets.image_encoder import ImageEncoder
from models.nets.keyword_tagger import KeywordTagger
from models.train.__main__ import BUDGETS, chosen_composer, save_checkpoints


def test_specs_follow_the_model_repository_contract() -> None:
    specs = model_specs(vocab_size=57)
    assert {"text_encoder", "image_encoder", "keyword_tagger", "amc_rescorer", "composer"} <= set(specs)
    image = specs["image_encoder"]
    assert [(t.name, t.dtype, t.dims) for t in image.inputs] == [("image", "UINT8", (128, 128, 3))]
    assert [t.name for t in image.outputs] == ["embedding__0", "regions__1"]
    assert specs["keyword_tagger"].outputs[0].dims == (57,)
    assert [t.name for t in specs["keyword_tagger"].outputs] == ["probabilities__0", "placements__1"]
    assert specs["keyword_tagger"].labels == {"probabilities__0": "keywords.txt", "placements__1": "placements.txt"}
    assert [t.name for t in specs["amc_rescorer"].inputs] == [
        "query",
        "query_index",
        "regions",
        "region_scales",
        "keyword_table",
        "keyword_index",
        "keyword_mask",
        "modality_bias",
    ]
    assert specs["amc_rescorer"].max_batch_size == 0  # explicit shapes, no dynamic batching
    assert [t.name for t in specs["amc_rescorer"].outputs] == [
        "score__0",
        "modality_weights__1",
        "region_attention__2",
        "keyword_attention__3",
        "learned_weights__4",
    ]
    assert [t.name for t in specs["composer"].inputs] == [
        "image_embedding",
        "regions",
        "text_embedding",
        "tokens",
        "token_mask",
    ]
    config = render_config(specs["keyword_tagger"], "abc123", "python")
    assert 'label_filename: "keywords.txt"' in config
    rescorer = render_config(specs["amc_rescorer"], "abc123", "python", {"keyword_vocabulary": 'red\ncafé "x"'})
    assert "dynamic_batching" not in rescorer and "TYPE_INT8" in rescorer
    assert 'string_value: "red\\ncaf' in rescorer


def test_every_size_has_a_budget_for_every_stage() -> None:
    for size in ("ci", "demo", "full"):
        assert set(BUDGETS[size]) == {"image_encoder", "amc", "composer", "ynet"}


def test_chosen_composer_prefers_train_composers_own_pick() -> None:
    tirg, lbf = nn.Linear(1, 1), nn.Linear(1, 1)
    assert chosen_composer({"tirg": tirg, "lbf": lbf, "composer": tirg}) == ("tirg", tirg)
    assert chosen_composer({"tirg": tirg, "lbf": lbf}) == ("lbf", lbf)
    with pytest.raises(ValueError):
        chosen_composer({"image_only": tirg})


def test_checkpoints_reload_into_fresh_modules(tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = ImageEncoder().eval()
    tagger = KeywordTagger(encoder, 5).eval()
    info = save_checkpoints({"image_encoder": encoder, "keyword_tagger": tagger}, tmp_path)
    assert info["image_encoder"]["class"] == "models.nets.image_encoder.ImageEncoder"
    torch.manual_seed(1)
    fresh = KeywordTagger(ImageEncoder(), 5).eval()
    fresh.load_state_dict(torch.load(tmp_path / info["keyword_tagger"]["file"]))
    images = torch.zeros(1, 128, 128, 3, dtype=torch.uint8)
    torch.testing.assert_close(fresh(images), tagger(images))


def test_evaluation_names_a_corpus_the_models_never_saw() -> None:
    """`make eval-untuned` evaluates on another seed's corpus: its header must say that the models
    were trained elsewhere, and `make eval`'s must not."""
    from models.eval.__main__ import provenance

    untuned = provenance("python -m models.eval --seed 7", trained_seed=0, corpus_seed=7)
    assert "trained on the corpus of seed 0" in untuned and "a corpus of seed 7: no model" in untuned
    own = provenance("python -m models.eval --seed 0", trained_seed=0, corpus_seed=0)
    assert "with the same\nsize and seed" in own and "no model" not in own

"""`make export`: rewrite model_repository/ from the checkpoints of an earlier `make models`.

    python -m models.export --size demo --checkpoints build/checkpoints --repository model_repository

For a change of the serving side (configs, the Python-backend model, the export wrappers) that
needs no new weights: the exported files are those `make models` would write.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from amcsearch.query_encoder.tokenize import Tokenizer

from models.corpus import load_or_build_corpus
from models.export.checkpoints import (
    load_amc_models,
    load_composer_models,
    load_image_encoder,
    load_keyword_tagger,
    load_ynet_models,
)
from models.export.repository import export_repository
from models.export.synonyms import build_synonyms
from models.export.triton_repo import run_with_fixed_hash_seed
from models.nets.text_encoder import load_text_encoder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m models.export", description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="demo")
    parser.add_argument("--checkpoints", type=Path, default=Path("build/checkpoints"))
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    folder = args.checkpoints / args.size
    manifest = json.loads((folder / "manifest.json").read_text())
    vocab = manifest.get("keyword_vocabulary") or load_or_build_corpus(args.size, manifest["seed"]).keyword_vocab
    torch.manual_seed(manifest["seed"])
    ynets = load_ynet_models(folder, len(vocab)) or {}  # older checkpoints: the five models only
    text_encoder, tokenizer = load_text_encoder(), Tokenizer.default()
    synonyms = build_synonyms(text_encoder, tokenizer, vocab)
    exports = export_repository(
        args.repository,
        vocab,
        text_encoder,
        tokenizer,
        load_image_encoder(folder, "image_encoder"),
        load_keyword_tagger(folder, len(vocab)),
        load_amc_models(folder)["amc_full"],
        load_composer_models(folder, manifest)["composer"],
        ynets.get("tag_ynet"),
        ynets.get("ctx_ynet"),
        synonyms,
    )
    manifest["exports"] = exports  # the build ids the served models now carry
    manifest["query_synonyms"] = synonyms  # what the evaluation's keyword route reads
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for name, info in exports.items():
        print(f"  {name:<16} {info['model_pt_bytes'] / 1e6:6.2f} MB  {info['folder']}")


if __name__ == "__main__":
    run_with_fixed_hash_seed("models.export")
    main()

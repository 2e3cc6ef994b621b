"""`make models`: build the corpus, train every model, save checkpoints, export the Triton models.

    python -m models.train --size {ci,demo,full} --seed 0 \
        --repository model_repository --checkpoints build/checkpoints

Writes build/checkpoints/<size>/<name>.pt (state_dicts; eval loads them), manifest.json beside
them, and model_repository/<model>/ for text_encoder, image_encoder, keyword_tagger,
amc_rescorer (AMC Full), composer (the variant train_composers chose on its TRAIN-split
validation part) and the cross-domain models ynet_shop, ynet_street and ctx_ynet (TagYNet and
CtxYNet, trained on the street/shop corpus on top of the image encoder's frozen trunk). Stage
timings are printed as they finish and gathered in the manifest.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from amcsearch.query_encoder.tokenize import Tokenizer
from torch import nn

from models.corpus import load_or_build_corpus
from models.corpus.street_shop import load_or_build_street_shop
from models.export.repository import export_repository
from models.export.synonyms import build_synonyms
from models.export.triton_repo import run_with_fixed_hash_seed
from models.nets.image_encoder import ImageEncoder, count_parameters
from models.nets.text_encoder import load_text_encoder
from models.train import cpu_model
from models.train.amc import train_amc
from models.train.candidates import candidate_lists
from models.train.composer import train_composers
from models.train.image_encoder import train_image_encoder, train_keyword_tagger
from models.train.ynet import train_ynets

# Per-size budgets, one dict per stage, read by each stage's own as_*_budget: the AMC stage takes
# {"size": ...} to pick its own per-size defaults; the composer stage takes field overrides
# (empty = its defaults); the image stage takes ImageBudget fields; the cross-domain stage takes
# YNetBudget fields (empty = its defaults, the demo size's).
BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "ci": {
        "image_encoder": {"epochs": 6, "tagger_epochs": 15},
        "amc": {"size": "ci"},
        "composer": {"epochs": 8},
        "ynet": {"global_epochs": 20, "tag_epochs": 30, "ctx_epochs": 15},
    },
    "demo": {
        "image_encoder": {"epochs": 8, "tagger_epochs": 30},
        "amc": {"size": "demo"},
        "composer": {},
        "ynet": {},
    },
    "full": {
        "image_encoder": {"epochs": 25, "tagger_epochs": 40},
        "amc": {"size": "full"},
        "composer": {},
        "ynet": {},
    },
}


class Stages:
    """Times each stage and prints it as it ends."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        print(f"[models] {name} ...", flush=True)
        start = time.perf_counter()
        result = fn()
        self.seconds[name] = round(time.perf_counter() - start, 2)
        print(f"[models] {name} done in {self.seconds[name]:.1f}s", flush=True)
        return result


def chosen_composer(composers: dict[str, nn.Module]) -> tuple[str, nn.Module]:
    """The composer to export: train_composers' own "composer" entry (its validation pick)."""
    if "composer" in composers:
        chosen = composers["composer"]
        for key, module in composers.items():
            if key != "composer" and module is chosen:
                return key, chosen
        return "composer", chosen
    for key in ("lbf", "tirg", "concat"):
        if key in composers:
            return key, composers[key]
    raise ValueError(f"train_composers returned no usable composer: {sorted(composers)}")


def save_checkpoints(modules: dict[str, nn.Module], folder: Path) -> dict[str, dict[str, Any]]:
    folder.mkdir(parents=True, exist_ok=True)
    info = {}
    for name, module in modules.items():
        path = folder / f"{name}.pt"
        torch.save(module.state_dict(), path)
        info[name] = {
            "file": path.name,
            "class": f"{type(module).__module__}.{type(module).__qualname__}",
            "parameters": count_parameters(module),
        }
    return info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(BUDGETS), default="demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--checkpoints", type=Path, default=Path("build/checkpoints"))
    parser.add_argument("--corpus-cache", type=Path, default=Path("build/corpus"))
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(os.cpu_count() or 1)
    # KeyATT's keyword gather backpropagates through index_put_(accumulate=True), which on the
    # CPU adds in parallel with float atomics unless deterministic algorithms are on: two runs
    # on one seed then parted at KeyATT's first epoch (models/train/reproduce.py measures it).
    torch.use_deterministic_algorithms(True, warn_only=True)
    # ... without its debugging aid, which fills every new tensor with NaN so that a read of
    # uninitialised memory shows: it cost 4-8% of each training step, and nothing here reads one.
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.manual_seed(args.seed)
    budgets = BUDGETS[args.size]
    stages = Stages()
    total_start = time.perf_counter()
    print(f"[models] size={args.size} seed={args.seed} threads={torch.get_num_threads()}", flush=True)

    corpus = stages.run("corpus", lambda: load_or_build_corpus(args.size, seed=args.seed, cache_dir=args.corpus_cache))
    text_encoder, tokenizer = stages.run("text_encoder load", lambda: (load_text_encoder(), Tokenizer.default()))
    image_encoder = stages.run(
        "image_encoder train",
        lambda: train_image_encoder(corpus, text_encoder, tokenizer, args.seed, budgets["image_encoder"]),
    )
    tagger = stages.run(
        "keyword_tagger train",
        lambda: train_keyword_tagger(corpus, image_encoder, args.seed, budgets["image_encoder"]),
    )
    synonyms = stages.run("query synonyms", lambda: build_synonyms(text_encoder, tokenizer, list(corpus.keyword_vocab)))

    def service_candidates(split, images, queries, embeddings) -> list[list[str]]:
        """AMC's extra training candidates: hybrid, as the service draws them over the whole gallery
        (with the tagger's placements and the query synonyms the service will read)."""
        lists = candidate_lists(split, images, queries, embeddings, ("hybrid",), tagger=tagger, synonyms=synonyms)
        return lists["hybrid"]

    amc = stages.run(
        "amc train",
        lambda: train_amc(
            corpus, text_encoder, tokenizer, image_encoder, args.seed, budgets["amc"], service_candidates
        ),
    )
    composers = stages.run(
        "composer train",
        lambda: train_composers(corpus, text_encoder, tokenizer, image_encoder, args.seed, budgets["composer"]),
    )
    composer_key, composer = chosen_composer(composers)
    street_shop = stages.run(
        "street_shop corpus",
        lambda: load_or_build_street_shop(args.size, seed=args.seed, cache_dir=args.corpus_cache),
    )
    if street_shop.keyword_vocab != list(corpus.keyword_vocab):  # ynet_shop's tags.txt is keywords.txt
        raise ValueError("the street/shop corpus's tag vocabulary differs from the scene corpus's")
    ynets = stages.run("ynet train", lambda: train_ynets(street_shop, image_encoder, args.seed, budgets["ynet"]))

    torch.manual_seed(args.seed)
    untrained = ImageEncoder().eval()  # the seed-initialised reference of the query-by-image table
    checkpoint_dir = args.checkpoints / args.size
    modules: dict[str, nn.Module] = {
        "image_encoder": image_encoder,
        "image_encoder_untrained": untrained,
        "keyword_tagger": tagger,
    }
    modules.update({f"amc_{k}" if not k.startswith("amc_") else k: m for k, m in amc.items()})
    modules.update({f"composer_{k}": m for k, m in composers.items() if k != "composer"})
    modules.update(ynets.modules)
    checkpoints = stages.run("checkpoints", lambda: save_checkpoints(modules, checkpoint_dir))

    def export_all() -> dict[str, dict[str, Any]]:
        return export_repository(
            args.repository,
            list(corpus.keyword_vocab),
            text_encoder,
            tokenizer,
            image_encoder,
            tagger,
            amc["amc_full"],
            composer,
            ynets.modules["tag_ynet"],
            ynets.modules["ctx_ynet"],
            synonyms,
        )

    exports = stages.run("export", export_all)
    total = round(time.perf_counter() - total_start, 2)

    manifest = {
        "size": args.size,
        "seed": args.seed,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.machine()}, {cpu_model()}, {os.cpu_count()} cores",
        "threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],  # 1, 5 and 15 min, at the end
        "torch": torch.__version__,
        "train_images": len(corpus.train.images),
        "test_images": len(corpus.test.images),
        "keyword_vocab": len(corpus.keyword_vocab),
        "keyword_vocabulary": list(corpus.keyword_vocab),
        "budgets": budgets,
        "stage_seconds": stages.seconds,
        "total_seconds": total,
        "composer_exported": composer_key,
        "street_shop": {
            "train_products": len(street_shop.train.products),
            "train_street_shots": len(street_shop.train.street_pixels),
            "test_products": len(street_shop.test.products),
            "test_street_shots": len(street_shop.test.street_pixels),
        },
        "cross_domain": ynets.report,
        "checkpoints": checkpoints,
        "exports": exports,
        "query_synonyms": synonyms,
    }
    (checkpoint_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

    print(f"\n[models] size={args.size} seed={args.seed}: done in {total:.1f}s")
    for name, seconds in stages.seconds.items():
        print(f"  {name:<22} {seconds:8.1f}s")
    for name, info in exports.items():
        print(f"  {name:<22} {info['parameters']:>10,} params  {info['model_pt_bytes'] / 1e6:6.2f} MB")
    print(f"  composer exported: {composer_key}")
    print(f"  checkpoints and manifest: {checkpoint_dir}")


if __name__ == "__main__":
    run_with_fixed_hash_seed("models.train")
    main()

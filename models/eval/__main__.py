"""`make eval`: the papers' tables on the TEST split, printed and written to benchmarks/QUALITY.md.

    python -m models.eval --size demo --seed 0 --checkpoints build/checkpoints --out benchmarks/QUALITY.md

Loads the corpus (same size and seed as `make models`) and the state_dicts the training driver
saved under <checkpoints>/<size>/ (each module built with its default constructor, as training
builds it), then runs text search (AMC), query by image, composed queries and cross-domain
(street-to-shop) search on the street/shop corpus. No randomness: the same checkpoints give the
same figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
from amcsearch.query_encoder.tokenize import Tokenizer

from models.corpus import load_or_build_corpus
from models.corpus.paraphrase import paraphrased
from models.corpus.street_shop import load_or_build_street_shop
from models.eval import (
    composed,
    cross_domain,
    evaluation_parser,
    image_search,
    layout,
    text_search,
    whole_index,
)
from models.export.checkpoints import (
    load_amc_models,
    load_composer_models,
    load_image_encoder,
    load_keyword_tagger,
    load_ynet_models,
)
from models.export.synonyms import build_synonyms
from models.nets.text_encoder import load_text_encoder
from models.train import cpu_model
from models.train.amc import as_amc_budget


def _load_average(load: list[float] | tuple[float, ...]) -> str:
    """ "1.93 / 1.80 / 1.52 (1 / 5 / 15 min)": how busy the machine was, beside its timings."""
    return " / ".join(f"{x:.2f}" for x in load) + " (1 / 5 / 15 min)"


def _section(title: str, command_note: str, body: str) -> str:
    return f"## {title}\n\n{command_note}\n\n{body}\n"


CROSS_DOMAIN_NOTE = (
    "Street-to-shop retrieval on the street/shop corpus (models/corpus/street_shop.py): each TEST street shot"
    " queries every TEST shop image (held-out products, never trained on); top-k accuracy = share of queries"
    " whose product's shop image is in the first k. Every model sits on the make-models image encoder's frozen"
    " trunk; the trained ones were selected on held-out TRAIN products. Attention mass counts the 6 x 6 regions"
    " that the named objects cover by at least 10%; uniform attention's mass is the share of such regions."
)


def cross_domain_section(
    args: argparse.Namespace, manifest: dict, image_encoder: torch.nn.Module, vocab_size: int
) -> str:
    """The cross-domain tables, or a line saying the checkpoints predate the models."""
    folder = args.checkpoints / args.size
    ynets = load_ynet_models(folder, vocab_size)
    if ynets is None:
        return "Not evaluated: the checkpoints have no ynet_global / tag_ynet / ctx_ynet (rerun `make models`)."
    street_shop = load_or_build_street_shop(args.size, seed=args.seed, cache_dir=args.corpus_cache)
    result = cross_domain.evaluate_cross_domain(
        street_shop.test,
        street_shop.keyword_vocab,
        image_encoder,
        ynets["ynet_global"],
        ynets["tag_ynet"],
        ynets["ctx_ynet"],
    )
    return cross_domain.format_table(result, manifest.get("cross_domain"), manifest.get("exports", {}))


PARAPHRASE_SEED = 0
"""The paraphrases of the TEST queries; training's own rewordings use other seeds (train/amc.py)."""
WHOLE_INDEX_NOTE = (
    "The protocol users see (models/eval/whole_index.py): every TEST text query ranked over the whole TEST"
    " gallery. Candidates come from the service's own index code in process (the embedded engine: exact vector"
    " search over the global embedding, BM25 over the indexed keywords (keyword_index.py), the gateway's merge), 100 per"
    " query as the gateway's default; the gallery's keywords are the corpus's noisy ones plus the tagger's"
    ' placements ("red@top-left", which the service stores for every image; docs/decisions/0011-placement-keywords.md).'
    " AMC Full rescores them on the int8 regions the index stores. NDCG@k divides"
    " by the ideal DCG of the whole gallery, so a relevant image the candidates miss costs. `hybrid` (reciprocal"
    " rank fusion of vector and keyword lists) is the service's default (SEARCH_CANDIDATE_SOURCE);"
    " tests/integration/test_whole_index.py checks that Search serves these figures (ci size)."
)
PARAPHRASE_NOTE = (
    "The same TEST queries worded as users word them (models/corpus/paraphrase.py, seed"
    f' {PARAPHRASE_SEED}: synonyms, spelled-out positions, filler such as "show me", plurals, word order), over'
    " the whole index; every image keeps its grade. Drop = original minus paraphrased. The keyword route reads"
    " the query synonym table the export derives from the text model, as the gateway does (search/synonyms.py,"
    " docs/decisions/0013-query-synonyms.md); the ablation rows leave it out."
)
LAYOUT_NOTE = (
    "Why layout queries failed, and whether the where head fixes it (models/eval/layout.py): can the query"
    " embedding, a region feature and the fused vector each tell where, and does the score put the right object"
    " in the queried cell above the same object elsewhere? Probes are ridge classifiers scored on held-out"
    ' data. "Where head off" is the same trained AMC Full with its where head at zero (uniform p_q), as'
    " AMC was before it. The directions tried on validation (held-out TRAIN queries), kept and dropped, are in"
    " benchmarks/LAYOUT.md."
)
DEPTHS = (100, 200, 300)
"""Candidate list lengths of the depth diagnostic (hybrid source)."""


def whole_index_section(corpus, amc_full, image_encoder, text_encoder, tokenizer, tagger, synonyms) -> str:
    """The whole-index tables: per candidate source, the layout diagnostics, candidate depth and
    paraphrases. The gallery holds the tagger's placements and the keyword route reads the
    exported query synonyms, as the service does."""
    test, vocab = corpus.test, list(corpus.keyword_vocab)
    common = (test, amc_full, image_encoder, text_encoder, tokenizer, vocab)
    original = whole_index.evaluate_whole_index(*common, tagger=tagger, synonyms=synonyms)
    rewording = paraphrased(test.text_queries, PARAPHRASE_SEED)
    reworded = whole_index.evaluate_whole_index(
        *common, queries=rewording, sources=("vector", "keyword", "hybrid"), tagger=tagger, synonyms=synonyms
    )
    unexpanded = whole_index.evaluate_whole_index(
        *common, queries=rewording, sources=("keyword", "hybrid"), tagger=tagger
    )
    depth = [
        (n, whole_index.evaluate_whole_index(*common, limit=n, sources=("hybrid",), tagger=tagger, synonyms=synonyms))
        for n in DEPTHS
    ]

    def hybrid_with(module) -> dict:
        """The default hybrid candidates ranked by a variant of AMC Full (an ablation row)."""
        return whole_index.evaluate_whole_index(
            test,
            module,
            image_encoder,
            text_encoder,
            tokenizer,
            vocab,
            sources=("hybrid",),
            tagger=tagger,
            synonyms=synonyms,
        )

    blind = hybrid_with(layout.where_off(amc_full))
    ungated = hybrid_with(layout.gate_off(amc_full))
    unplaced = whole_index.evaluate_whole_index(*common, sources=("hybrid",), synonyms=synonyms)
    original["rows"].append(blind["rows"][-1] | {"method": "AMC Full, where head off (ablation)"})
    original["rows"].append(
        ungated["rows"][-1] | {"method": "AMC Full, where head on for every query (no WHERE_GATE; ablation)"}
    )
    original["rows"].append(unplaced["rows"][-1] | {"method": "AMC Full, no placements in the index (ablation)"})
    hybrid_recall = next(i for i, d in enumerate(original["diagnostics"]) if "hybrid candidates" in d["diagnostic"])
    original["diagnostics"].insert(
        hybrid_recall + 1,
        {
            "diagnostic": "layout: fully relevant images in the hybrid candidates without placements (recall)",
            "value": unplaced["diagnostics"][0]["value"],
        },
    )
    diagnostics = layout.diagnostics(corpus, amc_full, image_encoder, text_encoder, tokenizer)
    return "\n\n".join(
        [
            whole_index.format_table(original),
            "### Layout diagnostics\n\n" + LAYOUT_NOTE,
            layout.format_diagnostics(diagnostics),
            "Candidate depth (hybrid): does the rescorer or the candidate list lose the layout queries?",
            whole_index.format_depth_table(depth),
            "### Paraphrased queries\n\n" + PARAPHRASE_NOTE,
            whole_index.format_paraphrase_table(original, reworded, unexpanded),
        ]
    )


REPRODUCIBILITY = Path("benchmarks/REPRODUCIBILITY.md")
COMPOSER_SEEDS = Path("benchmarks/COMPOSER_SEEDS.md")


def composer_seeds_section() -> str:
    """benchmarks/COMPOSER_SEEDS.md (`make composer-seeds`: the composers over training runs),
    one heading level down, or nothing."""
    if not COMPOSER_SEEDS.exists():
        return ""
    return "\n\n" + COMPOSER_SEEDS.read_text().replace("## ", "### ", 1).rstrip("\n")


def reproducibility_section() -> str:
    """benchmarks/REPRODUCIBILITY.md (written by `python -m models.train.reproduce`), or how to make it."""
    if REPRODUCIBILITY.exists():
        return REPRODUCIBILITY.read_text()
    return "## Reproducibility of training\n\nNot measured yet: run `python -m models.train.reproduce`.\n"


def provenance(command: str, trained_seed: int, corpus_seed: int) -> str:
    """Where the figures come from. A corpus seed other than the one the models were trained on
    is a corpus that no model, setting or selection saw (`make eval-untuned`)."""
    if trained_seed == corpus_seed:
        return (
            f"Every figure below comes from one run of `{command}` (after `make models` with the same\n"
            "size and seed), on the TEST split of the synthetic scene corpus; nothing was tuned on it."
        )
    return (
        f"Every figure below comes from one run of `{command}` with the models `make models` trained on"
        f" the corpus of seed {trained_seed}, on the TEST split of a corpus of seed {corpus_seed}: no model,"
        " setting or selection ever saw it (only the late-fusion baseline's weight is fitted, as always, on"
        " its TRAIN queries). benchmarks/QUALITY.md has the same tables on the corpus the models were trained on."
    )


def main(argv: list[str] | None = None) -> None:
    args = evaluation_parser("python -m models.eval", __doc__.split("\n")[0], "benchmarks/QUALITY.md").parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(os.cpu_count() or 1)
    command = "python -m models.eval " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    started = time.perf_counter()
    folder = args.checkpoints / args.size
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}

    corpus = load_or_build_corpus(args.size, seed=args.seed, cache_dir=args.corpus_cache)
    text_encoder, tokenizer = load_text_encoder(), Tokenizer.default()
    image_encoder = load_image_encoder(folder, "image_encoder")

    amc_models = load_amc_models(folder)
    text = text_search.evaluate_text_search(corpus, amc_models, image_encoder, text_encoder, tokenizer, seed=args.seed)
    tagger = load_keyword_tagger(folder, len(corpus.keyword_vocab))
    synonyms = manifest.get("query_synonyms")
    if synonyms is None:  # checkpoints exported before the table existed: what the export would write
        synonyms = build_synonyms(text_encoder, tokenizer, list(corpus.keyword_vocab))
    whole_index_body = whole_index_section(
        corpus, amc_models["amc_full"], image_encoder, text_encoder, tokenizer, tagger, synonyms
    )
    images = image_search.evaluate_image_search(
        corpus, load_image_encoder(folder, "image_encoder_untrained"), image_encoder
    )
    composed_rows = composed.evaluate_composed(
        corpus, load_composer_models(folder, manifest), image_encoder, text_encoder, tokenizer
    )
    cross_domain_body = cross_domain_section(args, manifest, image_encoder, len(corpus.keyword_vocab))
    seconds = time.perf_counter() - started

    test = corpus.test
    trained_seed = manifest.get("seed", args.seed)
    untuned = trained_seed != args.seed
    header = [
        "# Model quality",
        "",
        provenance(command, trained_seed, args.seed),
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- machine: {platform.platform()}, {platform.machine()}, {cpu_model()}, {os.cpu_count()} CPUs,"
        f" torch {torch.__version__},"
        f" {torch.get_num_threads()} threads",
        f"- corpus: size `{args.size}`, seed {args.seed}: {len(corpus.train.images)} train / {len(test.images)} test"
        f" images; test queries: {len(test.text_queries)} text, {len(test.image_queries)} by image,"
        f" {len(test.composed_queries)} composed",
        f"- evaluation time: {seconds:.0f} s (load average {_load_average(os.getloadavg())} at its end)",
        "- reproducibility: the same command on the same checkpoints reproduces every figure exactly (no randomness)"
        + ("." if untuned else "; retraining from scratch: the last section."),
    ]
    if manifest:
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in manifest.get("stage_seconds", {}).items())
        where = f" on {manifest['machine']}" if "machine" in manifest else ""
        if "load_average" in manifest:
            where += f", load average {_load_average(manifest['load_average'])} at its end"
        header.append(
            f"- training (`make models`, {manifest.get('threads', '?')} threads{where}): "
            f"{manifest.get('total_seconds', 0):.0f} s in all; {stages}"
        )
        sizes = ", ".join(
            f"{k} {v['parameters']:,} parameters ({v['model_pt_bytes'] / 1e6:.2f} MB)"
            for k, v in manifest.get("exports", {}).items()
        )
        if sizes:
            header.append(f"- exported models: {sizes}")
    text_note = (
        "AMC Tables 1-2. Each query ranks its ~50 candidates; NDCG on graded relevance (2 all constraints, "
        "1 partial, 0 none), P@5, MAP, MRR and AUC with relevance > 0 as positive. Then AMC Full's mean "
        "modality weights per query family and its attention diagnostics. Every method trains on the TRAIN"
        " queries' own candidates; AMC Full, the served rescorer, also on"
        f" {as_amc_budget({'size': args.size}).service_candidates} per query drawn as a Search draws them over"
        " the whole TRAIN gallery (docs/decisions/0016-service-candidates.md)."
    )
    document = (
        "\n".join(header)
        + "\n\n"
        + "\n".join(
            [
                _section("Text search (AMC)", text_note, text_search.format_tables(text)),
                _section("Text search over the whole index", WHOLE_INDEX_NOTE, whole_index_body),
                _section(
                    "Query by image (Gordo & Larlus)",
                    "NDCG@k against the caption tf-idf proxy and Pearson correlation of cosine vs proxy.",
                    image_search.format_table(images),
                ),
                _section(
                    "Composed queries (TIRG protocol)",
                    "Recall@K over the whole test gallery, the reference image excluded; a hit is any image of the target's scene."
                    " The second table tests the papers' orderings at R@1 on the same queries: the difference of the two"
                    f" methods' hits and its 95% interval over {composed.BOOTSTRAP_RESAMPLES} paired bootstrap resamples of the"
                    " queries (seed 0). Where the interval holds 0, these queries cannot tell the two methods apart.",
                    composed.format_table(composed_rows)
                    + "\n\n"
                    + composed.ordering_table(composed_rows)
                    + ("" if untuned else composer_seeds_section()),
                ),
                _section("Cross-domain search (TagYNet, CtxYNet)", CROSS_DOMAIN_NOTE, cross_domain_body),
                "" if untuned else reproducibility_section(),
            ]
        )
    )
    print(document)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(document)
    print(f"[eval] wrote {args.out} in {seconds:.0f} s")


if __name__ == "__main__":
    main()

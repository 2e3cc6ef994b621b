"""Served == offline on the whole-index protocol: every ci TEST text query ranked by Search over a
collection that holds the whole ci TEST gallery, against models/eval/whole_index.py (the code
behind QUALITY.md's whole-index tables) run in process on the checkpoints the served models were
exported from."""

from __future__ import annotations

import json

import grpc
import pytest
from amcsearch.launcher import ROOT
from amcsearch.query_encoder.tokenize import Tokenizer
from amcsearch.runtime.keywords import parse_placement
from amcsearch.search.synonyms import QUERY_SYNONYMS_PARAMETER, parse_synonyms
from amcsearch.v1 import common_pb2, search_pb2, search_pb2_grpc

from loadtests.stack import start_stack
from models.corpus.queries import grade
from models.eval.whole_index import FAMILIES, KS, evaluate_whole_index
from models.export.checkpoints import load_amc_models, load_image_encoder, load_keyword_tagger
from models.export.triton_repo import read_config
from models.metrics import ndcg_against_ideal
from models.nets.text_encoder import load_text_encoder
from tests.integration.conftest import png

pytestmark = pytest.mark.integration
COLLECTION = "whole_index"
TOLERANCE = 0.01
"""Per family: the served text encoder and rescorer run the exported TorchScript files in Triton,
the offline side the same weights in eager PyTorch; float noise may swap a near tie."""


@pytest.fixture(scope="module")
def checkpoint_folder(model_repository):
    """build/checkpoints/<size>, the one whose export is the served amc_rescorer."""
    served = read_config(model_repository, "amc_rescorer").parameters["build_id"].string_value
    for path in sorted((ROOT / "build" / "checkpoints").glob("*/manifest.json")):
        exports = json.loads(path.read_text()).get("exports", {})
        if exports.get("amc_rescorer", {}).get("build_id") == served:
            return path.parent
    pytest.fail(f"no build/checkpoints/<size> exported the served amc_rescorer {served}: run `make models`")


@pytest.fixture(scope="module")
def own_stack(model_repository, tmp_path_factory):
    """A stack of its own: the other tests index into the shared stack's default collection, which
    would move this gallery's keyword candidates (BM25 statistics are per collection)."""
    stack = start_stack(
        model_repository, tmp_path_factory.mktemp("whole-index-stack"), {"TRITON_CANARY_INTERVAL_SECONDS": "3600"}
    )
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def gallery(own_stack, ci_corpus):
    """A collection holding the ci TEST gallery as the protocol indexes it: the noisy keywords as
    the caller's keywords, no automatic ones (the tagger's placements are stored all the same),
    the caption as the title."""
    split = ci_corpus.test
    with grpc.insecure_channel(own_stack.address("search")) as channel:
        search = search_pb2_grpc.SearchServiceStub(channel)
        search.CreateCollection(search_pb2.CreateCollectionRequest(name=COLLECTION), timeout=30)
        items = [
            search_pb2.ImageItem(
                id=r.id,
                image=png(pixels),
                title=r.caption,
                keywords=[common_pb2.Keyword(text=k, confidence=float(c)) for k, c in r.noisy_keywords],
            )
            for r, pixels in zip(split.images, split.pixels, strict=True)
        ]
        for start in range(0, len(items), 32):
            reply = search.Index(
                search_pb2.IndexRequest(items=items[start : start + 32], skip_auto_tags=True, collection=COLLECTION),
                timeout=300,
            )
            assert reply.failed_count == 0, [r.error for r in reply.results if not r.indexed][:3]
        yield search


def served_rows(search, split) -> list[dict]:
    """Per query: its family and NDCG@k of Search's results against the whole gallery's ideal."""
    by_id = {r.id: r for r in split.images}
    rows = []
    for query in split.text_queries:
        reply = search.Search(
            search_pb2.SearchRequest(text=query.text, top_k=max(KS), collection=COLLECTION), timeout=60
        )
        assert not reply.degradations, reply.degradations
        assert "merge" in reply.stages  # the default candidates are hybrid
        ranked = [grade(query.spec, by_id[r.id]) for r in reply.results]
        ideal = sorted((grade(query.spec, r) for r in split.images), reverse=True)[: max(KS)]
        rows.append({"family": query.family, **{k: ndcg_against_ideal(ranked, ideal, k) for k in KS}})
    return rows


def mean(rows: list[dict], k: int, family: str | None = None) -> float:
    values = [r[k] for r in rows if family is None or r["family"] == family]
    return sum(values) / len(values)


def test_served_whole_index_ndcg_equals_offline(gallery, ci_corpus, checkpoint_folder, model_repository):
    split = ci_corpus.test
    vocab = (model_repository / "keyword_tagger" / "keywords.txt").read_text().splitlines()
    offline = evaluate_whole_index(
        split,
        load_amc_models(checkpoint_folder)["amc_full"],
        load_image_encoder(checkpoint_folder, "image_encoder"),
        load_text_encoder(),
        Tokenizer.default(),
        vocab,
        sources=("hybrid",),
        tagger=load_keyword_tagger(checkpoint_folder, len(vocab)),
        synonyms=parse_synonyms(
            read_config(model_repository, "text_encoder").parameters[QUERY_SYNONYMS_PARAMETER].string_value
        ),
    )["rows"][-1]
    served = served_rows(gallery, split)
    for k in KS:
        pairs = {"all": (mean(served, k), offline[f"all@{k}"])}
        for family in FAMILIES:
            if any(r["family"] == family for r in served):
                pairs[family] = (mean(served, k, family), offline[f"{family}@{k}"])
        print(f"NDCG@{k} served / offline: " + ", ".join(f"{f} {s:.4f}/{o:.4f}" for f, (s, o) in pairs.items()))
        for family, (s, o) in pairs.items():
            assert abs(s - o) <= TOLERANCE, (k, family, s, o)


def test_explain_shows_the_queried_cell(gallery, ci_corpus):
    """A query that names a place: the explanation of each fully relevant result (the object is
    there) puts its strongest region inside the named 3 x 3 cell, and puts more attention there
    than anywhere of the same size, far above the uniform share (4 of 36 regions)."""
    split = ci_corpus.test
    by_id = {r.id: r for r in split.images}
    strongest_inside, masses = [], []
    for query in split.text_queries:
        if query.spec.get("kind") != "layout":
            continue
        reply = gallery.Search(
            search_pb2.SearchRequest(text=query.text, top_k=3, explain=True, collection=COLLECTION),
            timeout=60,
        )
        row0, column0 = divmod(int(query.spec["cell"]), 3)
        for result in reply.results:
            if grade(query.spec, by_id[result.id]) != 2:
                continue
            regions = result.evidence.regions
            inside = [r for r in regions if r.row // 2 == row0 and r.column // 2 == column0]
            strongest_inside.append(bool(regions) and regions[0].row // 2 == row0 and regions[0].column // 2 == column0)
            masses.append(sum(r.weight for r in inside))
    assert len(masses) >= 5, "too few fully relevant layout results to judge"
    share = sum(strongest_inside) / len(strongest_inside)
    print(
        f"explained layout results: {len(masses)}, strongest region in the named cell {share:.2f}, "
        f"mean mass there {sum(masses) / len(masses):.2f}"
    )
    assert share >= 0.7 and sum(masses) / len(masses) > 0.4


def test_placements_are_stored_for_the_keyword_route_only(gallery, ci_corpus):
    """Indexed with skip_auto_tags: no automatic keyword, but the tagger's placements are stored
    (source PLACEMENT, "red@top-left"), and the rescorer never attends to them."""
    split = ci_corpus.test
    got = gallery.Get(search_pb2.GetRequest(ids=[r.id for r in split.images[:8]], collection=COLLECTION), timeout=30)
    sources = {k.source for image in got.images for k in image.keywords}
    assert common_pb2.Keyword.AUTO not in sources
    placed = [k.text for image in got.images for k in image.keywords if k.source == common_pb2.Keyword.PLACEMENT]
    assert placed and all(parse_placement(t) is not None for t in placed)
    layout = next(q for q in split.text_queries if q.spec.get("kind") == "layout")
    reply = gallery.Search(
        search_pb2.SearchRequest(text=layout.text, top_k=10, explain=True, collection=COLLECTION), timeout=60
    )
    attended = [k.keyword for r in reply.results for k in r.evidence.keywords]
    assert attended and not any(parse_placement(t) for t in attended)

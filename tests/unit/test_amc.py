"""AMC rescorer nets: the Triton contract, the attention semantics and the ranking loss."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.nets.amc import (
    TEXT_SEARCH_MODELS,
    WHERE_GATE,
    AMCRescorer,
    DSSMRescorer,
    VisualAttention,
    build_text_search_models,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: threading only adds overhead (and contention on shared CI machines)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _inputs(batch: int = 5, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    query = F.normalize(torch.randn(batch, 384, generator=gen), dim=1)
    regions = torch.randn(batch, 36, 128, generator=gen)
    keywords = F.normalize(torch.randn(batch, 32, 384, generator=gen), dim=2)
    mask = torch.rand(batch, 32, generator=gen)
    mask[:, 20:] = 0.0
    return query, regions, keywords, mask


@pytest.mark.parametrize("name", TEXT_SEARCH_MODELS)
def test_every_model_meets_the_triton_contract_and_scripts(name: str) -> None:
    torch.manual_seed(0)
    module = build_text_search_models()[name].eval()
    inputs = _inputs()
    score, weights, regions_att, keywords_att = module(*inputs)
    assert score.shape == (5, 1) and weights.shape == (5, 2)
    assert regions_att.shape == (5, 36) and keywords_att.shape == (5, 32)
    assert torch.all(score.abs() <= 1.0 + 1e-5)
    assert torch.allclose(weights.sum(dim=1), torch.ones(5))
    scripted = torch.jit.script(module)
    for eager, script in zip(module(*inputs), scripted(*inputs), strict=True):
        assert torch.allclose(eager, script, atol=1e-6)


def test_van_equals_a_per_sample_same_padded_convolution() -> None:
    torch.manual_seed(0)
    van = VisualAttention(query_dim=384, region_dim=128, dim=16, kernel=3, grid=6)
    query, regions, _, _ = _inputs(batch=3)
    _, attention, _ = van(van.kernels(query), regions, van.where_logits(query))
    features = van.project(regions).transpose(1, 2).reshape(3, 16, 6, 6)
    kernels = F.relu(van.query_kernel(query)).view(3, 1, 16, 3, 3)
    for b in range(3):
        logits = F.conv2d(features[b : b + 1], kernels[b], padding=1).flatten()
        assert torch.allclose(attention[b], torch.softmax(logits, dim=0), atol=1e-6)


def test_amc_attentions_are_distributions_and_padding_gets_none() -> None:
    torch.manual_seed(0)
    module = AMCRescorer("full").eval()
    query, regions, keywords, mask = _inputs()
    _, _, region_att, keyword_att = module(query, regions, keywords, mask)
    assert torch.allclose(region_att.sum(dim=1), torch.ones(5), atol=1e-5)
    assert torch.allclose(keyword_att.sum(dim=1), torch.ones(5), atol=1e-5)
    assert torch.all(keyword_att[:, 20:] == 0)


def test_padded_keyword_slots_do_not_change_the_score() -> None:
    torch.manual_seed(0)
    module = AMCRescorer("full").eval()
    query, regions, keywords, mask = _inputs()
    other = keywords.clone()
    other[:, 20:] = torch.randn(5, 12, 384)
    assert torch.allclose(module(query, regions, keywords, mask)[0], module(query, regions, other, mask)[0])


def test_ablations_ignore_the_other_modality() -> None:
    torch.manual_seed(0)
    query, regions, keywords, mask = _inputs()
    img, key = AMCRescorer("img").eval(), AMCRescorer("key").eval()
    assert torch.allclose(img(query, regions, keywords, mask)[0], img(query, regions, keywords * 0 + 1, mask)[0])
    assert torch.allclose(key(query, regions, keywords, mask)[0], key(query, regions * 3 + 1, keywords, mask)[0])
    assert torch.all(img(query, regions, keywords, mask)[1][:, 0] == 1)
    assert torch.all(key(query, regions, keywords, mask)[1][:, 1] == 1)


def test_dssm_key_is_the_masked_mean_of_keywords() -> None:
    torch.manual_seed(0)
    module = DSSMRescorer("key").eval()
    query, regions, keywords, mask = _inputs()
    att = module(query, regions, keywords, mask)[3]
    assert torch.allclose(att[:, :20], torch.full((5, 20), 1 / 20))
    assert torch.all(att[:, 20:] == 0)


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="allowed"):
        AMCRescorer("both")


def test_ranking_loss_training_separates_a_toy_positive_from_negatives() -> None:
    """The keyword that equals the query makes an image relevant: AMC must learn to rank it first."""
    from models.train.amc import ranking_loss

    torch.manual_seed(0)
    module = AMCRescorer("full")
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    query, regions, keywords, mask = _inputs(batch=40, seed=1)
    keywords = keywords.view(8, 5, 32, 384).clone()
    query = query[:8]
    relevance = torch.zeros(8, 5)
    relevance[:, 0] = 2
    relevance[:, 1] = 1
    keywords[:, 0, 3] = query
    keywords[:, 1, 3] = F.normalize(query + 0.8 * keywords[:, 1, 4], dim=1)

    def scores() -> torch.Tensor:
        q = query.unsqueeze(1).expand(8, 5, 384).reshape(40, 384)
        return module(q, regions, keywords.view(40, 32, 384), mask)[0].view(8, 5)

    gen = torch.Generator().manual_seed(0)
    before = ranking_loss(scores(), relevance, torch.ones(8, 5, dtype=torch.bool), 0.5, 4, gen).item()
    for _ in range(60):
        loss = ranking_loss(scores(), relevance, torch.ones(8, 5, dtype=torch.bool), 0.5, 4, gen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = scores()
    assert ranking_loss(final, relevance, torch.ones(8, 5, dtype=torch.bool), 0.5, 4, gen).item() < 0.3 * before
    assert torch.all(final.argmax(dim=1) == 0)


def test_ranking_loss_counts_only_lower_graded_negatives() -> None:
    from models.train.amc import ranking_loss

    scores = torch.tensor([[0.9, 0.5, 0.6, 0.0]])
    relevance = torch.tensor([[2.0, 1.0, 0.0, 0.0]])
    valid = torch.tensor([[True, True, True, False]])
    gen = torch.Generator().manual_seed(0)
    # pairs: (0,1) 0.2-0.4 -> 0, (0,2) 0.2-0.3 -> 0, (1,2) 0.2+0.1 = 0.3; two positives
    loss = ranking_loss(scores, relevance, valid, margin=0.2, negatives=4, generator=gen)
    assert loss.item() == pytest.approx(0.3 / 2)


@pytest.mark.parametrize("name", TEXT_SEARCH_MODELS)
def test_training_path_equals_forward(name: str) -> None:
    """batch_scores (query side per query, vocabulary projected once) is forward() reordered."""
    from models.train.amc import ImageFeatures, QueryFeatures, batch_scores

    torch.manual_seed(0)
    module = build_text_search_models()[name].eval()
    vocab = F.normalize(torch.randn(10, 384), dim=1)
    index = torch.randint(0, 10, (6, 32))
    mask = torch.rand(6, 32)
    mask[:, 25:] = 0
    images = ImageFeatures(torch.randn(6, 384), torch.randn(6, 36, 128), index, mask, vocab)
    queries = QueryFeatures(
        embedding=F.normalize(torch.randn(2, 384), dim=1),
        candidates=torch.tensor([[0, 1, 2], [3, 4, 5]]),
        relevance=torch.zeros(2, 3),
        valid=torch.ones(2, 3, dtype=torch.bool),
        families=["layout", "theme"],
    )
    with torch.no_grad():
        fast = batch_scores(module, images, queries, torch.arange(2))
        rows = queries.candidates.reshape(-1)
        query = queries.embedding.repeat_interleave(3, dim=0)
        slow = module(query, images.regions[rows], vocab[index[rows]], mask[rows])[0].view(2, 3)
    assert torch.allclose(fast, slow, atol=1e-5)


def _query_features(relevance: torch.Tensor):
    from models.train.amc import QueryFeatures

    n, c = relevance.shape
    return QueryFeatures(
        embedding=torch.zeros(n, 384),
        candidates=torch.arange(c).repeat(n, 1),
        relevance=relevance,
        valid=torch.ones(n, c, dtype=torch.bool),
        families=["layout"] * n,
    )


def test_ranking_metrics_reward_the_ideal_order_only() -> None:
    from models.eval.text_search import ranking_metrics

    relevance = torch.tensor([[0.0, 2.0, 1.0, 0.0, 0.0, 0.0]])
    queries = _query_features(relevance)
    ideal = ranking_metrics(relevance.clone(), queries)
    reverse = ranking_metrics(-relevance, queries)
    assert ideal["NDCG@5"] == pytest.approx(1.0) and ideal["MRR"] == 1.0 and ideal["AUC"] == 1.0
    assert reverse["NDCG@5"] < 0.5 and reverse["AUC"] == 0.0


def test_late_fusion_weight_follows_the_informative_model() -> None:
    from models.eval.text_search import tune_fusion_weight

    gen = torch.Generator().manual_seed(0)
    relevance = torch.randint(0, 3, (30, 20), generator=gen).float()
    queries = _query_features(relevance)
    informative = relevance + 0.1 * torch.rand(30, 20, generator=gen)
    noise = 20 * torch.rand(30, 20, generator=gen)  # large: only a weight near 1 ignores it
    assert tune_fusion_weight(informative, noise, queries) >= 0.8
    assert tune_fusion_weight(noise, informative, queries) <= 0.2


class _HashTextEncoder(torch.nn.Module):
    """Stand-in for MiniLM: a fixed random embedding per token id, mean-pooled."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Embedding(40000, 384)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        tokens = self.table(input_ids) * attention_mask.unsqueeze(-1)
        pooled = tokens.sum(1) / attention_mask.sum(1, keepdim=True).clamp(min=1)
        return F.normalize(pooled, dim=1), tokens


class _PixelImageEncoder(torch.nn.Module):
    def forward(self, image: torch.Tensor):
        x = image.float().permute(0, 3, 1, 2) / 255.0
        regions = F.adaptive_avg_pool2d(x, 6).flatten(2).transpose(1, 2).repeat(1, 1, 43)[:, :, :128]
        return F.normalize(torch.cat([x.mean((2, 3))] * 128, dim=1), dim=1), regions


def _tiny_corpus():
    import numpy as np

    from models.corpus import KEYWORD_VOCAB, Corpus, ImageRecord, SceneObject, Split, TextQuery

    rng = np.random.default_rng(0)
    colors, themes = ("red", "blue", "green"), ("festive", "sale")

    def split(name: str) -> Split:
        images = []
        for i in range(12):
            obj = SceneObject("circle", colors[i % 3], "large", i % 9)
            theme = themes[i % 2]
            keywords = [(colors[i % 3], 0.9), ("circle", 0.7), (theme, 0.8), ("photo", 0.2)]
            images.append(
                ImageRecord(
                    f"{name}-{i:05d}",
                    (obj,),
                    theme,
                    f"a large {obj.color} circle",
                    [obj.color, "circle", "large", theme],
                    keywords,
                    i,
                    False,
                )
            )
        ids = [r.id for r in images]
        queries = [
            TextQuery(f"{name}-q{j}", text, family, ids, [int(rule(r)) * 2 for r in images])
            for j, (text, family, rule) in enumerate(
                [
                    ("red circle top-left", "layout", lambda r: r.objects[0].color == "red" and r.objects[0].cell == 0),
                    ("blue circle", "attribute", lambda r: r.objects[0].color == "blue"),
                    ("festive images", "theme", lambda r: r.theme == "festive"),
                    ("sale picture with a green circle", "mixed", lambda r: r.theme == "sale"),
                ]
                * 3
            )
        ]
        pixels = rng.integers(0, 255, size=(12, 128, 128, 3), dtype=np.uint8)
        return Split(name, images, pixels, text_queries=queries)

    return Corpus("ci", 0, split("train"), split("test"), list(KEYWORD_VOCAB))


def test_text_search_evaluation_reports_every_method_family_and_diagnostic() -> None:
    from amcsearch.query_encoder.tokenize import Tokenizer

    from models.eval.text_search import METHODS, evaluate_text_search, format_tables

    torch.manual_seed(0)
    models = {k: m.eval() for k, m in build_text_search_models().items()}
    corpus = _tiny_corpus()
    text_encoder = _HashTextEncoder().eval()
    result = evaluate_text_search(corpus, models, _PixelImageEncoder(), text_encoder, Tokenizer.default())
    assert [r["method"] for r in result["ranking"]] == [key for key, _ in METHODS]
    assert all(0.0 <= r["NDCG@5"] <= 1.0 and r["queries"] == 12 for r in result["ranking"])
    keyword = next(r for r in result["ranking"] if r["method"] == "keyword")
    assert keyword["NDCG@5"] > 0.5  # BM25 finds the colour and theme words among the keywords
    assert [r["family"] for r in result["weights"]] == ["layout", "attribute", "theme", "mixed"]
    for row in result["weights"]:  # repeated templates: distinct texts never exceed the queries
        texts = {q.text for q in corpus.test.text_queries if q.family == row["family"]}
        assert row["texts"] == len(texts) and 1 <= row["texts"] <= row["queries"]
    assert 0.0 <= result["late_fusion_weight"] <= 1.0
    assert len(result["diagnostics"]) == 3 and "| AMC Full |" in format_tables(result)
    again = evaluate_text_search(corpus, models, _PixelImageEncoder(), text_encoder, Tokenizer.default())
    assert again["ranking"] == result["ranking"]


@pytest.mark.parametrize("layout", ["term", "prior", "both", "none"])
def test_served_rescorer_equals_the_dense_forward_on_the_same_inputs(layout: str) -> None:
    """ServedRescorer (the exported amc_rescorer): query broadcast, int8 regions, keyword ids into
    its vocabulary and the request's table give what the dense forward gives on the equivalent
    float inputs; scripting keeps it. The where head is random (not its uniform start), so the
    placement term and the attention prior are covered."""
    from amcsearch.runtime.quantize import dequantize_regions, quantize_regions

    from models.nets.amc import ServedRescorer

    torch.manual_seed(0)
    module = AMCRescorer("full", layout=layout).eval()
    torch.nn.init.normal_(module.van.where.weight, std=0.5)
    vocabulary = torch.nn.functional.normalize(torch.randn(10, 384), dim=1)
    served = torch.jit.script(ServedRescorer(module, vocabulary).eval())
    n = 6
    queries = torch.nn.functional.normalize(torch.randn(2, 384), dim=1)
    query_index = torch.tensor([0, 0, 0, 1, 1, 1], dtype=torch.int32)
    quantized, scales = quantize_regions(torch.randn(n, 36, 128).numpy())
    table = torch.randn(2, 384).half()
    keyword_index = torch.zeros(n, 32, dtype=torch.int32)
    keyword_mask = torch.zeros(n, 32)
    keyword_index[:, :3] = torch.tensor([1, 4, 11], dtype=torch.int32)
    keyword_mask[:, :3] = torch.tensor([0.9, 0.5, 1.0])
    with torch.inference_mode():
        no_bias = torch.tensor([[1.0, 0.0, 1.0]] * 2)
        got = served(
            queries,
            query_index,
            torch.from_numpy(quantized),
            torch.from_numpy(scales),
            table,
            keyword_index,
            keyword_mask,
            no_bias,
        )
        dense_keywords = torch.cat([vocabulary, table.float()])[keyword_index.long()]
        expected = module(
            queries[query_index.long()],
            torch.from_numpy(dequantize_regions(quantized, scales)),
            dense_keywords,
            keyword_mask,
        )
        for a, b in zip(got[:4], expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[4], expected[1])  # learned == applied without a bias
        visual_only = served(
            queries,
            query_index,
            torch.from_numpy(quantized),
            torch.from_numpy(scales),
            table,
            keyword_index,
            keyword_mask,
            torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]),
        )
    weights = visual_only[1]
    torch.testing.assert_close(weights[:3], torch.tensor([[1.0, 0.0]] * 3))  # query 0: visual only
    torch.testing.assert_close(weights[3:], torch.tensor([[0.0, 1.0]] * 3))  # query 1: keywords only
    torch.testing.assert_close(visual_only[4], got[4])  # the learned weights are reported as learned
    assert not torch.allclose(visual_only[0], got[0])


def _one_object_grids(cells: list[int], object_feature: torch.Tensor) -> torch.Tensor:
    """Region grids [N, 36, 128]: faint noise, and the object's feature in region `cells[n]`."""
    grids = 0.01 * torch.randn(len(cells), 36, 128)
    for n, cell in enumerate(cells):
        grids[n, cell] = object_feature
    return grids


def test_a_uniform_where_head_changes_no_ranking() -> None:
    """The where head starts at zero (uniform p_q): the placement term is the same constant for
    every image, so AMC with the term ranks exactly as AMC without it."""
    torch.manual_seed(0)
    plain = AMCRescorer("full", layout="none").eval()
    with_term = AMCRescorer("full", layout="term").eval()
    with_term.load_state_dict(plain.state_dict())
    query, regions, keywords, mask = _inputs()
    with torch.no_grad():
        a, b = plain(query, regions, keywords, mask)[0], with_term(query, regions, keywords, mask)[0]
    torch.testing.assert_close(b - a, torch.full_like(a, float((b - a)[0])))
    assert torch.equal(torch.argsort(a.squeeze(1)), torch.argsort(b.squeeze(1)))


def test_the_placement_term_ranks_the_object_in_the_queried_cell_first() -> None:
    """The same object in three places: the content attention finds it in each, the unaided
    score cannot tell them apart, and a where head that names region 0 ranks region 0 first."""
    torch.manual_seed(0)
    module = AMCRescorer("img", layout="term").eval()
    query = torch.nn.functional.normalize(torch.randn(1, 384), dim=1)
    grids = _one_object_grids([14, 0, 35], 3.0 * torch.randn(128))
    with torch.no_grad():
        before = module(query.expand(3, -1), grids, torch.zeros(3, 32, 384), torch.zeros(3, 32))[0].squeeze(1)
        module.van.where.bias.zero_()
        module.van.where.bias[0] = 8.0  # p_q puts its mass on region 0
        after, _, attention, _ = module(query.expand(3, -1), grids, torch.zeros(3, 32, 384), torch.zeros(3, 32))
    assert float(before.max() - before.min()) < 0.05  # position-blind without the where head
    assert int(torch.argmax(after.squeeze(1))) == 1  # the image with the object in region 0
    assert int(attention[1].argmax()) == 0  # and its explanation shows the queried region


def test_the_attention_prior_pulls_the_van_to_the_queried_cell() -> None:
    torch.manual_seed(0)
    module = AMCRescorer("img", layout="prior").eval()
    query = torch.nn.functional.normalize(torch.randn(2, 384), dim=1)
    grids = _one_object_grids([14, 14], torch.zeros(128))
    with torch.no_grad():
        module.van.where.bias[20] = 6.0
        attention = module(query, grids, torch.zeros(2, 32, 384), torch.zeros(2, 32))[2]
    assert torch.all(attention.argmax(dim=1) == 20)


def test_unknown_layout_is_rejected() -> None:
    with pytest.raises(ValueError, match="layout is 'grid'"):
        AMCRescorer("full", layout="grid")


def test_where_target_names_the_queried_cell_and_nothing_else() -> None:
    from models.train.amc import where_target

    top_left = where_target({"kind": "layout", "attrs": {"color": "red"}, "cell": 0}).reshape(6, 6)
    assert top_left[:2, :2].sum() == pytest.approx(1.0) and top_left[2:].sum() == 0 and top_left[:, 2:].sum() == 0
    bottom_right = where_target({"kind": "layout", "attrs": {}, "cell": 8}).reshape(6, 6)
    assert bottom_right[4:, 4:].sum() == pytest.approx(1.0)
    for spec in ({"kind": "attribute", "attrs": {}}, {"kind": "count", "key": "color", "value": "red", "n": 2}):
        assert np.allclose(where_target(spec), 1 / 36)


def test_the_where_loss_teaches_the_head_to_read_the_place() -> None:
    """A few steps of where_loss alone move p_q's mass to the named cells; a model that does not
    use the where head gets no such loss."""
    from models.train.amc import QueryFeatures, where_loss, where_target

    torch.manual_seed(0)
    module = AMCRescorer("full", layout="term")
    cells = [0, 4, 8, 2]
    queries = QueryFeatures(
        embedding=torch.nn.functional.normalize(torch.randn(4, 384), dim=1),
        candidates=torch.zeros(4, 1, dtype=torch.long),
        relevance=torch.zeros(4, 1),
        valid=torch.ones(4, 1, dtype=torch.bool),
        families=["layout"] * 4,
        where_target=torch.from_numpy(np.stack([where_target({"kind": "layout", "cell": c}) for c in cells])),
    )
    rows = torch.arange(4)
    optimizer = torch.optim.Adam(module.van.where.parameters(), lr=1e-2)
    for _ in range(50):
        optimizer.zero_grad()
        where_loss(module, queries, rows).backward()
        optimizer.step()
    with torch.no_grad():
        p = module.van.where_logits(queries.embedding).exp()
    assert float((p * queries.where_target * 4).sum(dim=1).min()) > 0.9  # mass inside the named cell
    assert float(where_loss(AMCRescorer("full", layout="none"), queries, rows)) == 0.0
    assert float(where_loss(AMCRescorer("key", layout="term"), queries, rows)) == 0.0


def test_the_where_gate_keeps_a_named_place_and_drops_a_vague_one() -> None:
    """Out of training, a where head that puts less than WHERE_GATE of its mass in any 3 x 3 cell
    is read as uniform (the query names no place); a peaked one is kept; training sees the head
    as it is (its losses need the gradient); the scripted module does the same."""
    torch.manual_seed(0)
    module = AMCRescorer("img", layout="term").eval()
    van = module.van
    queries = torch.nn.functional.normalize(torch.randn(2, 384), dim=1)
    with torch.no_grad():
        van.where.weight.zero_()
        van.where.bias.copy_(torch.linspace(0, 0.5, 36))  # vague: the largest cell holds < 0.35
        vague = van.where_logits(queries[:1])
        van.train()
        raw = van.where_logits(queries[:1])
        van.eval()
        van.where.bias.zero_()
        van.where.bias[0] = 8.0  # region 0, in the top-left 2 x 2 block: most of the mass
        named = van.where_logits(queries[:1])
        inputs = (queries[:1].expand(3, -1), _one_object_grids([0, 14, 35], 3.0 * torch.randn(128)))
        inputs += (torch.zeros(3, 32, 384), torch.zeros(3, 32))
        eager, scripted = module(*inputs)[0], torch.jit.script(module)(*inputs)[0]
    torch.testing.assert_close(vague, torch.full_like(vague, -float(np.log(36))))
    assert not torch.allclose(raw, vague)
    assert float(named.exp()[0, 0]) > 0.9
    torch.testing.assert_close(scripted, eager)
    assert int(torch.argmax(eager.squeeze(1))) == 0  # the object in the named top-left cell
    assert 0 < WHERE_GATE < 1


def test_service_candidates_follow_the_own_ones_graded_by_the_corpus_rule() -> None:
    from models.corpus import TextQuery
    from models.train.amc import QueryFeatures, with_service_candidates

    split = _tiny_corpus().train  # image i: theme "festive" when i is even, else "sale"
    ids = [r.id for r in split.images]
    query = TextQuery("q", "festive images", "theme", ids[:3], [2, 0, 2], {"kind": "theme", "theme": "festive"})
    short = TextQuery("r", "sale", "theme", ids[:1], [0], {"kind": "theme", "theme": "sale"})
    features = QueryFeatures(
        torch.zeros(2, 384),
        torch.tensor([[0, 1, 2], [0, 0, 0]]),
        torch.tensor([[2.0, 0.0, 2.0], [0.0, 0.0, 0.0]]),
        torch.tensor([[True, True, True], [True, False, False]]),
        ["theme", "theme"],
    )
    # the lists repeat own candidates (skipped) and run past `extra` (cut)
    lists = [[ids[1], ids[4], ids[5], ids[6], ids[7]], [ids[0], ids[3], ids[8]]]
    out = with_service_candidates(split, [query, short], features, lists, extra=2)
    assert out.candidates[0].tolist() == [0, 1, 2, 4, 5]
    assert out.relevance[0].tolist() == [2.0, 0.0, 2.0, 2.0, 0.0]
    assert out.valid[0].all()
    assert out.candidates[1, :3].tolist() == [0, 3, 8]
    assert out.relevance[1, :3].tolist() == [0.0, 2.0, 0.0]
    assert out.valid[1].tolist() == [True, True, True, False, False]
    assert out.embedding is features.embedding

"""Composers: the shared contract, scriptability, masking, the Recall@K protocol, training plumbing."""

import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.eval.composed import evaluate_composed, ordering_table, paired_difference
from models.features.composed import composed_recall, precompute_features
from models.nets.composer import (
    COMPOSERS,
    TIRGGrid,
    build_composer,
    load_composers,
    region_map,
)
from models.train.composer import batch_classification_loss, holdout_rows, synthesize_queries, train_composers

B = 6


def _inputs(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, 32)
    mask[:, :5] = 1.0
    return (
        F.normalize(torch.randn(B, 384, generator=g), dim=1),
        torch.randn(B, 36, 128, generator=g),
        F.normalize(torch.randn(B, 384, generator=g), dim=1),
        torch.randn(B, 32, 384, generator=g),
        mask,
    )


@pytest.mark.parametrize("name", list(COMPOSERS))
def test_composer_contract_eager_equals_scripted_reloaded(name: str) -> None:
    torch.manual_seed(0)
    model = build_composer(name).eval()
    scripted = torch.jit.script(model)
    assert "cpu" not in scripted.code.lower()  # no tensor pinned to a device
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    with torch.no_grad():
        eager = model(*_inputs())
        again = loaded(*_inputs())
    assert eager.shape == (B, 384)
    assert torch.allclose(eager.norm(dim=1), torch.ones(B), atol=1e-5)
    assert torch.allclose(eager, again, atol=1e-5)


def test_image_only_returns_the_reference_embedding() -> None:
    x = _inputs()
    assert torch.allclose(build_composer("image_only")(*x), x[0], atol=1e-6)


@pytest.mark.parametrize("name", ["lbf"])
def test_padded_token_states_are_ignored(name: str) -> None:
    torch.manual_seed(0)
    model = build_composer(name).eval()
    x = list(_inputs())
    with torch.no_grad():
        before = model(*x)
        x[3] = x[3].clone()
        x[3][:, 10:] = 100.0
        after = model(*x)
        x[3][:, 2] = 100.0  # a real token does matter
        changed = model(*x)
    assert torch.allclose(before, after, atol=1e-5)
    assert not torch.allclose(before, changed, atol=1e-3)


def test_lbf_uses_region_positions() -> None:
    torch.manual_seed(0)
    model = build_composer("lbf").eval()
    x = list(_inputs())
    with torch.no_grad():
        before = model(*x)
        x[1] = x[1].flip(1)  # same regions, other places
        after = model(*x)
    assert not torch.allclose(before, after, atol=1e-4)


def test_region_map_is_row_major() -> None:
    regions = torch.randn(2, 36, 128)
    grid = region_map(regions)
    assert grid.shape == (2, 128, 6, 6)
    for r, c in [(0, 0), (0, 5), (2, 3), (5, 0)]:
        assert torch.equal(grid[:, :, r, c], regions[:, r * 6 + c])


def test_tirg_grid_leaves_the_image_embedding_when_the_grid_is_left_as_it_is() -> None:
    """x' = x (gate fully open, no residual) gives the reference's own embedding, whatever the text."""
    torch.manual_seed(0)
    model = build_composer("tirg_grid").eval()
    with torch.no_grad():
        model.a.copy_(torch.tensor([1.0, 0.0]))
        model.gate[-1].weight.zero_()
        model.gate[-1].bias.fill_(40.0)  # sigmoid = 1 in float32
        x = _inputs()
        assert torch.allclose(model(*x), x[0], atol=1e-6)
        other = list(_inputs(1))
        other[0] = x[0]
        assert torch.allclose(model(*other), x[0], atol=1e-6)


def test_tirg_grid_starts_as_the_image_only_composer() -> None:
    """Its read-out W starts at zero: before training, the composed query is the reference itself."""
    torch.manual_seed(0)
    model = build_composer("tirg_grid").eval()
    x = _inputs()
    with torch.no_grad():
        assert torch.allclose(model(*x), F.normalize(x[0], dim=1), atol=1e-6)


def test_tirg_grid_uses_region_positions_and_the_text() -> None:
    torch.manual_seed(0)
    model = build_composer("tirg_grid").eval()
    x = list(_inputs())
    with torch.no_grad():
        nn.init.normal_(model.out.weight, std=0.1)  # as after training: W no longer zero
        before = model(*x)
        flipped = model(x[0], x[1].flip(1), *x[2:])  # same regions, other places
        other_text = model(x[0], x[1], x[2].roll(1, 0), *x[3:])
    assert before.shape == (B, 384)
    assert not torch.allclose(before, flipped, atol=1e-4)
    assert not torch.allclose(before, other_text, atol=1e-4)


def test_tirg_grid_widths() -> None:
    """Default: text projected to the grid's 128 channels, z = C + D = 256 wide, hidden width 128
    (hidden=0 gives TIRGLastConv's C + D)."""
    model = TIRGGrid()
    assert model.res[1].in_channels == 256 and model.res[1].out_channels == 128
    assert TIRGGrid(hidden=0).res[1].out_channels == 256
    assert model.res[3].out_channels == 128 and model.gate[3].out_channels == 128
    assert model.out.bias is None
    wide = TIRGGrid(text_dim=384, hidden=512)
    assert wide.res[1].in_channels == 512 and wide.gate[3].out_channels == 128


def test_composed_recall_excludes_source_and_matches_labels() -> None:
    gallery = torch.eye(4)
    labels = torch.tensor([0, 1, 2, 1])
    queries = torch.tensor([[1.0, 0.1, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    # query 0: its source is row 0 (the nearest, excluded); then row 1 (label 1): hit at 1.
    # query 1: target label 0, nearest is row 2 (label 2), row 0 ties with the rest.
    recall = composed_recall(queries, gallery, labels, torch.tensor([0, 3]), torch.tensor([1, 0]), ks=(1, 3))
    assert recall[1] == 0.5 and recall[3] == 1.0


def test_batch_loss_masks_other_targets_of_the_same_scene() -> None:
    targets = F.normalize(torch.randn(3, 8), dim=1)
    composed = targets[[0, 0, 2]]  # query 1 composes exactly query 0's target
    scale = torch.tensor(10.0)
    distinct = batch_classification_loss(composed, targets, torch.tensor([0, 1, 2]), scale)
    same = batch_classification_loss(composed, targets[[0, 0, 2]], torch.tensor([0, 0, 2]), scale)
    assert same < distinct


class _StandInImageEncoder(nn.Module):
    """Random tiny conv net with the ImageEncoder signature (uint8 NHWC -> embedding, regions)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, kernel_size=8, stride=8)
        self.region = nn.Linear(8, 128)
        self.embed = nn.Linear(8, 384)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.conv(image.permute(0, 3, 1, 2).float() / 255.0)
        regions = F.adaptive_avg_pool2d(fmap, 6).flatten(2).transpose(1, 2)
        return F.normalize(self.embed(fmap.mean((2, 3))), dim=1), self.region(regions)


def _fake_split(name: str, n: int, seed: int) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    images = [SimpleNamespace(id=f"{name}-{i}", label=i // 2) for i in range(n)]
    mods = ["make top-left object red", "add small blue circle to middle-center", "remove bottom-right object"]
    queries = []
    for q in range(n):
        src, tgt = rng.choice(n, size=2, replace=False)
        queries.append(
            SimpleNamespace(
                source_id=f"{name}-{src}",
                target_id=f"{name}-{tgt}",
                modification=mods[q % 3],
                target_label=int(tgt) // 2,
            )
        )
    index = {r.id: i for i, r in enumerate(images)}
    return SimpleNamespace(
        images=images,
        pixels=rng.integers(0, 256, size=(n, 128, 128, 3), dtype=np.uint8),
        composed_queries=queries,
        index_of=index.__getitem__,
    )


@pytest.fixture(scope="module")
def text_parts():
    from amcsearch.query_encoder.tokenize import Tokenizer

    from models.nets.text_encoder import load_text_encoder

    torch.set_num_threads(1)
    return load_text_encoder(), Tokenizer.default()


def test_holdout_targets_are_never_training_targets(text_parts) -> None:
    torch.manual_seed(0)
    feats = precompute_features(_fake_split("train", 60, 1), _StandInImageEncoder(), *text_parts)
    train, held = holdout_rows(feats, 0.2, seed=0)
    assert len(train) + len(held) == feats.n_queries and len(held) > 0
    assert not set(feats.target_labels[held].tolist()) & set(feats.target_labels[train].tolist())


def test_train_composers_and_evaluate_end_to_end(text_parts) -> None:
    torch.manual_seed(0)
    corpus = SimpleNamespace(train=_fake_split("train", 64, 1), test=_fake_split("test", 32, 2))
    encoder, tok = text_parts
    image_encoder = _StandInImageEncoder()
    budget = {"composer_epochs": 1, "composer_batch_size": 16, "composer_synthetic_factor": 0, "epochs": 99}
    composers = train_composers(corpus, encoder, tok, image_encoder, seed=0, budget=budget)
    assert set(composers) == set(COMPOSERS) | {"composer"}
    chosen = next(name for name in COMPOSERS if composers[name] is composers["composer"])
    reloaded = load_composers({k: m.state_dict() for k, m in composers.items()})
    assert reloaded["composer"] is reloaded[chosen]  # recognised by its weights
    rows = evaluate_composed(corpus, composers, image_encoder, encoder, tok)
    assert [r["key"] for r in rows] == ["text_only", "image_only", "concat", "tirg", "tirg_grid", "lbf"]
    assert sum(r["exported"] for r in rows) == 1
    for r in rows:
        assert 0.0 <= r["R@1"] <= r["R@5"] <= r["R@10"] <= r["R@50"] <= 1.0
        assert r["hits@1"].shape == (r["queries"],) and r["hits@1"].mean() == pytest.approx(r["R@1"], abs=1e-4)
    assert ordering_table(rows).count("\n") == 4  # header, rule and the three orderings


def test_the_ordering_verdict_follows_the_paired_interval() -> None:
    rng = np.random.default_rng(0)
    weak = (rng.random(300) < 0.5).astype(np.int64)

    def verdict(stronger: np.ndarray) -> str:
        rows = [
            {"key": "concat", "method": "Concat", "hits@1": weak},
            {"key": "tirg", "method": "TIRG", "hits@1": stronger},
        ]
        return ordering_table(rows).splitlines()[-1].rsplit("|", 2)[1].strip()

    better = weak.copy()
    better[np.flatnonzero(weak == 0)[:60]] = 1  # 60 more hits of 300: clearly better
    assert verdict(better) == "holds"
    assert verdict(weak) == "holds within noise"  # identical answers: a tie
    worse_by_three = weak.copy()
    worse_by_three[np.flatnonzero(weak == 1)[:3]] = 0
    assert verdict(worse_by_three) == "reversed within noise"
    clearly_worse = weak.copy()
    clearly_worse[np.flatnonzero(weak == 1)[:60]] = 0
    assert verdict(clearly_worse) == "reversed"
    mean, low, high = paired_difference(better, weak)
    assert mean == pytest.approx(0.2) and low < mean < high


def test_synthetic_queries_follow_the_corpus_rules() -> None:
    from models.corpus import scenes
    from models.corpus.vocab import scene_key

    rng = np.random.default_rng(0)

    def split(n: int, offset: int) -> SimpleNamespace:
        images = [SimpleNamespace(objects=scenes.sample_scene(rng, True), label=offset + i) for i in range(n)]
        return SimpleNamespace(images=images)

    corpus = SimpleNamespace(train=split(30, 0), test=split(30, 100))
    extra = synthesize_queries(corpus, 40, seed=0)
    assert extra.pixels.shape == (40, 128, 128, 3) and extra.pixels.dtype == np.uint8
    test_keys = {scene_key(r.objects) for r in corpus.test.images}
    train_labels = {scene_key(r.objects): r.label for r in corpus.train.images}
    for src, text, label in zip(extra.source_rows, extra.modifications, extra.labels, strict=False):
        target = scenes.apply_modification(corpus.train.images[src].objects, scenes.parse_modification(text))
        assert scene_key(target) not in test_keys and scenes.respects_hold_out(target)
        assert train_labels.get(scene_key(target), label) == label
        if scene_key(target) not in train_labels:
            assert label > max(train_labels.values())  # a fresh label never reuses an existing one


def test_composer_seeds_offsets_and_table() -> None:
    from models.eval.composer_seeds import format_table, seed_offset

    # run 0 of each method is make models' own: train_composers seeds method i with seed + i
    assert [seed_offset(m) for m in ("concat", "tirg", "lbf", "tirg_grid")] == [2, 3, 4, 5]
    result = {
        "concat": [(0.9, 0.90, 8.0), (0.9, 0.92, 8.0)],
        "tirg_grid": [(0.9, 0.91, 100.0), (0.9, 0.92, 100.0)],
    }
    table = format_table(result, 216.0, 2)
    assert "| TIRG, region grid | 0.910, 0.920 | 0.915 (0.007) | 0.900 (0.000) | 100 |" in table
    assert "TIRG, region grid minus Concat, run by run: +0.010, +0.000 (ahead in 1 of 2 runs, level in 1)" in table

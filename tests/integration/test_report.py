"""The `--html` report of each query kind, made by the CLI from real replies and opened in
headless Chromium: the page draws its images, the query is on it (the query image's pixels are
in the screenshot where the page put it), attention is drawn where it was asked for, and the
legend names what is drawn and nothing else.

With AMCSEARCH_DOCS_SCREENSHOTS=1 the text and cross-domain screenshots are also written to
docs/report-text.png and docs/report-cross-domain.png (the README shows them).
"""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from amcsearch.cli import main
from amcsearch.launcher import ROOT
from PIL import Image

from models.corpus.street_shop import load_or_build_street_shop
from tests.integration.conftest import chromium_dom, png

pytestmark = pytest.mark.integration
IMAGES = 40
PRODUCTS = 40
WINDOW = (1200, 820)
PROBE = (
    "const imgs = [...document.images];"
    " const q = document.querySelector('img[data-role=query]');"
    " const box = q ? q.getBoundingClientRect() : null;"
    " const heats = [...document.querySelectorAll('.heat')].filter(h => [...h.children].some("
    "   c => parseFloat(getComputedStyle(c).opacity) > 0 && c.getBoundingClientRect().width > 0)).length;"
    " const legend = document.querySelector('.legend');"
    " document.title = JSON.stringify({"
    "   loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length, images: imgs.length,"
    "   query: box ? [box.left, box.top, box.width, box.height] : null, heatmaps: heats,"
    "   placeholders: document.querySelectorAll('.placeholder').length,"
    "   legend: legend ? legend.innerText : '', panel: document.querySelector('.query').innerText});"
)


def render(page: Path, profile: Path, screenshot: Path) -> dict:
    """Open `page` in headless Chromium: the probe's facts, and a screenshot of the window."""
    dom = chromium_dom(page, PROBE, profile, screenshot, WINDOW)
    title = re.search(r"<title>(.*?)</title>", dom, re.S)
    assert title, dom[:500]
    return json.loads(html.unescape(title.group(1)))


def check_screenshot(screenshot: Path, facts: dict, query: np.ndarray | None) -> None:
    """Not blank; where the page drew the query image, the query image's pixels."""
    shot = np.asarray(Image.open(screenshot).convert("RGB")).astype(np.int16)
    assert shot.shape[:2] == (WINDOW[1], WINDOW[0])
    assert (shot.reshape(-1, 3) != 255).any(axis=1).mean() > 0.1, "the screenshot is mostly white"
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 500, "the screenshot has too few colours to hold images"
    if query is None:
        return
    left, top, width, height = (round(v) for v in facts["query"])
    drawn = shot[top : top + height, left : left + width]
    expected = np.asarray(Image.fromarray(query).resize((width, height), Image.NEAREST)).astype(np.int16)
    assert np.abs(drawn - expected).mean() < 12, "the query image is not where the page says it drew it"


@pytest.fixture(scope="module")
def folders(real_stack, ci_corpus, tmp_path_factory):
    """Scenes (with keywords) and a tagged catalogue, each in its own collection, indexed
    through the CLI from folders that then serve as --thumbnails."""
    base = tmp_path_factory.mktemp("report")
    addr = ["--addr", real_stack.address("search")]
    scenes, catalogue = base / "scenes", base / "catalogue"
    scenes.mkdir()
    catalogue.mkdir()
    test = ci_corpus.test
    lines = []
    for record, pixels in zip(test.images[:IMAGES], test.pixels[:IMAGES], strict=True):
        (scenes / f"{record.id}.png").write_bytes(png(pixels))
        lines.append(json.dumps({"id": record.id, "title": record.caption, "keywords": record.noisy_keywords}))
    (scenes / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    shop = load_or_build_street_shop("ci", 0).test
    lines = []
    for row, product in enumerate(shop.products[:PRODUCTS]):
        (catalogue / f"{product.id}.png").write_bytes(png(shop.shop_pixels[row]))
        lines.append(json.dumps({"id": product.id, "title": " ".join(product.tags), "tags": product.tags}))
    (catalogue / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    names = {"scenes": "report_scenes", "catalogue": "report_catalogue"}  # shown in the docs' screenshots
    for folder, name in ((scenes, names["scenes"]), (catalogue, names["catalogue"])):
        main([*addr, "collections", "drop", name])  # left by an interrupted run, if any
        assert main([*addr, "collections", "create", name]) == 0
        assert main([*addr, "index", str(folder), "--skip-auto-tags", "--collection", name]) == 0
    snapshot = base / "snapshot.png"
    shot = int(np.flatnonzero(shop.street_product == 0)[0])
    snapshot.write_bytes(png(shop.street_pixels[shot]))
    yield {"addr": addr, "scenes": scenes, "catalogue": catalogue, "snapshot": snapshot, "names": names, "ids": test}
    for name in names.values():
        main([*addr, "collections", "drop", name])


def report(folders, tmp_path, kind: str, *argv: str, local: bool = True) -> tuple[dict, Path]:
    """`local`: also give the indexed folder as --thumbnails (otherwise the pictures are the
    thumbnails the service kept at index time)."""
    page, screenshot = tmp_path / f"{kind}.html", tmp_path / f"{kind}.png"
    collection = folders["names"]["catalogue" if kind == "cross-domain" else "scenes"]
    thumbnails = folders["catalogue" if kind == "cross-domain" else "scenes"]
    command = [*argv, "--html", str(page), "--top-k", "5", "--collection", collection]
    if local:
        command += ["--thumbnails", str(thumbnails)]
    assert main([*folders["addr"], "search", *command]) == 0
    facts = render(page, tmp_path / "profile", screenshot)
    return facts, screenshot


def keep_for_docs(screenshot: Path, name: str) -> None:
    """A small PNG (a 256-colour palette) in docs/ when asked for."""
    if os.environ.get("AMCSEARCH_DOCS_SCREENSHOTS") == "1":
        image = Image.open(screenshot).convert("RGB")
        rows = np.flatnonzero((np.asarray(image) != 255).any(axis=(1, 2)))
        image = image.crop((0, 0, image.width, min(image.height, int(rows[-1]) + 16)))
        image.quantize(256, method=Image.Quantize.FASTOCTREE).save(ROOT / "docs" / name, optimize=True)


def test_text_report_with_explain(folders, tmp_path):
    facts, screenshot = report(folders, tmp_path, "text", "large red circle top-left", "--explain")
    assert facts["images"] == facts["loaded"] == 5 and facts["placeholders"] == 0
    assert facts["heatmaps"] == 5  # attention over every result
    assert "large red circle top-left" in facts["panel"]
    for drawn in ("attention over the image", "visual", "keyword weight", "keyword attention"):
        assert drawn in facts["legend"], facts["legend"]
    assert "no thumbnail" not in facts["legend"]
    check_screenshot(screenshot, facts, None)
    keep_for_docs(screenshot, "report-text.png")


def test_report_pictures_come_from_the_service_for_images_indexed_through_the_api(folders, tmp_path):
    """No --thumbnails folder: every result still has its picture (the thumbnail kept at index
    time, read through Get), with the attention over it; no placeholder."""
    facts, screenshot = report(folders, tmp_path, "stored", "large red circle top-left", "--explain", local=False)
    assert facts["images"] == facts["loaded"] == 5 and facts["placeholders"] == 0
    assert facts["heatmaps"] == 5 and "no thumbnail" not in facts["legend"]
    check_screenshot(screenshot, facts, None)


def test_image_report_shows_the_query_image_and_no_legend_without_explain(folders, tmp_path):
    query = np.asarray(Image.open(folders["scenes"] / f"{folders['ids'].images[7].id}.png").convert("RGB"))
    image = folders["scenes"] / f"{folders['ids'].images[7].id}.png"
    facts, screenshot = report(folders, tmp_path, "image", "--image", str(image))
    assert facts["images"] == facts["loaded"] == 6  # the query and 5 results
    assert facts["heatmaps"] == 0 and facts["legend"] == ""  # nothing drawn that needs explaining
    check_screenshot(screenshot, facts, query)


def test_composed_report_shows_the_image_and_the_modification(folders, tmp_path):
    source = folders["ids"].images[3].id
    query = np.asarray(Image.open(folders["scenes"] / f"{source}.png").convert("RGB"))
    facts, screenshot = report(folders, tmp_path, "composed", "--id", source, "--modify", "make the circle blue")
    assert facts["images"] == facts["loaded"] == 6
    assert "make the circle blue" in facts["panel"] and source in facts["panel"]
    check_screenshot(screenshot, facts, query)


def test_cross_domain_report_shows_the_snapshot_and_both_attentions(folders, tmp_path):
    query = np.asarray(Image.open(folders["snapshot"]).convert("RGB"))
    facts, screenshot = report(
        folders, tmp_path, "cross-domain", "--image", str(folders["snapshot"]), "--cross-domain", "--explain"
    )
    assert facts["images"] == facts["loaded"] == 11  # the snapshot on top, then snapshot + catalogue image per result
    assert facts["heatmaps"] == 10  # the snapshot's attention for each match beside the candidate's tag attention
    assert "snapshot" in facts["panel"]
    assert "attention over the image" in facts["legend"] and "keyword" not in facts["legend"]
    check_screenshot(screenshot, facts, query)
    keep_for_docs(screenshot, "report-cross-domain.png")

"""The `amcsearch` command's arguments and its HTML report, without a server: every bad argument
is one line on stderr and a non-zero exit (never a traceback), and the report reads no file that
an indexed item names."""

from __future__ import annotations

import base64
import io
import re

import pytest
from amcsearch.cli import main, results_table
from amcsearch.report import thumbnails_from, write_html
from amcsearch.v1 import common_pb2, search_pb2
from PIL import Image

NOWHERE = ["--addr", "127.0.0.1:1"]
"""A closed port: argument errors must be found before anything is sent."""


def png(color: tuple[int, int, int], size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["search", "x", "--filter", "{bad json"], "--filter: not a MetadataFilter as JSON"),
        (["search", "x", "--filter", '{"combine": "SOME"}'], "--filter: not a MetadataFilter as JSON"),
        (["search", "x", "--range", "price=abc..5"], "'abc' is not a number"),
        (["search", "x", "--range", "price=5"], "is not KEY=LOW..HIGH"),
        (["search", "x", "--range", "price=9..2"], "the low bound 9 exceeds the high bound 2"),
        (["search", "x", "--range", "price=inf..2"], "not a finite number"),
        (["search", "x", "--where", "theme"], "'theme' is not KEY=VALUE"),
        (["search", "x", "--where-any", "theme="], "no values"),
        (["search", "x", "--keyword-weight", "0.9..0.5"], "need 0 <= MIN <= MAX <= 1"),
        (["search", "x", "--keyword-weight", "high"], "is not MIN..MAX"),
        (["search", "x", "--top-k", "ten"], "'ten' is not a whole number"),
        (["search", "x", "--top-k", "0"], "0 is less than 1"),
        (["search", "x", "--offset", "-3"], "-3 is less than 0"),
        (["search", "--image", "no-such-file.png"], "no-such-file.png: no such file"),
        (["search", "x", "--html", "out.html", "--thumbnails", "no-such-dir"], "no-such-dir: no such folder"),
        (["search"], "give one query"),
        (["search", "x", "--id", "img-1"], "got a text and --id"),
        (["search", "x", "--modify", "make it blue"], "--modify changes an image"),
        (["search", "--id", "img-1", "--cross-domain"], "--cross-domain needs the snapshot as --image FILE"),
        (["search", "x", "--visual-only", "--keyword-only"], "not allowed with argument --visual-only"),
        (["rerank", "x", "--images", "no-such-file.png"], "no-such-file.png: no such file"),
        (["index", "no-such-dir"], "no-such-dir: no such folder"),
        (["index", ".", "--batch-size", "0"], "0 is less than 1"),
        (["batch", "no-such-file.txt"], "no such file"),
        (["collections", "create"], "collections create needs a NAME"),
        (["collections", "rename", "x"], "invalid choice: 'rename'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_every_bad_argument_is_one_line_and_a_nonzero_exit(argv, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code = main([*NOWHERE, *argv])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert fragment in err and "Traceback" not in err, err
    assert err.startswith("amcsearch"), err


def test_a_bad_metadata_file_is_one_line_naming_the_line(tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(png((255, 0, 0)))
    (tmp_path / "metadata.jsonl").write_text('{"id": "a"}\n{oops\n')
    assert main([*NOWHERE, "index", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("metadata.jsonl:2: not JSON (Expecting property name enclosed in double quotes)"), err
    assert len(err.splitlines()[-1:]) == 1 and "Traceback" not in err


def test_an_unreachable_service_is_one_line(capsys):
    assert main([*NOWHERE, "search", "red circle", "--collection", "shoes"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: UNAVAILABLE: ") and len(err.strip().splitlines()) == 1, err


def result(result_id: str, path: str, **evidence) -> search_pb2.SearchResult:
    return search_pb2.SearchResult(
        id=result_id,
        score=0.5,
        ann_score=0.4,
        title=f"title of {result_id}",
        metadata={"path": path},
        evidence=common_pb2.Evidence(**evidence) if evidence else None,
    )


def regions(*weights: float) -> list[common_pb2.RegionAttention]:
    return [common_pb2.RegionAttention(index=i, row=i // 6, column=i % 6, weight=w) for i, w in enumerate(weights)]


def test_the_report_reads_no_file_an_indexed_item_names(tmp_path):
    """Issue 24 item 6: an indexer sets metadata["path"] to the reader's private files."""
    secret_png = tmp_path / "private.png"
    secret_png.write_bytes(png((1, 2, 3)))
    secret_text = tmp_path / "id_rsa"
    secret_text.write_text("-----BEGIN OPENSSH PRIVATE KEY-----")
    reply = search_pb2.SearchResponse(
        results=[
            result("evil-1", str(secret_png), visual_weight=0.6, keyword_weight=0.4, regions=regions(0.2, 0.1)),
            result("evil-2", str(secret_text)),
        ]
    )
    page = tmp_path / "page.html"
    write_html(page, search_pb2.SearchRequest(text="red circle", explain=True), reply)
    text = page.read_text()
    for secret in (secret_png.read_bytes(), secret_text.read_bytes()):
        assert base64.b64encode(secret).decode()[:40] not in text
    assert "no thumbnail" in text and "--thumbnails DIR" in text
    assert "<img" not in text  # nothing to draw: no image at all, and no heatmap over a placeholder
    assert 'class="heat"' not in text


def test_thumbnails_come_only_from_the_named_folder_and_never_leave_it(tmp_path):
    folder = tmp_path / "thumbs"
    folder.mkdir()
    (folder / "a.png").write_bytes(png((200, 0, 0)))
    (tmp_path / "outside.png").write_bytes(png((0, 0, 200)))
    (folder / "link.png").symlink_to(tmp_path / "outside.png")
    found = thumbnails_from(folder, ["a", "link", "../outside", "missing"])
    assert set(found) == {"a"}


def test_the_legend_explains_what_is_drawn_and_nothing_else(tmp_path):
    thumbs = {"a": png((200, 30, 30)), "b": png((30, 30, 200))}
    explained = search_pb2.SearchResponse(
        results=[
            result(
                "a",
                "",
                visual_weight=0.7,
                keyword_weight=0.3,
                regions=regions(0.5, 0.25),
                keywords=[common_pb2.KeywordAttention(keyword="festive", weight=0.8)],
            )
        ]
    )
    page = tmp_path / "explained.html"
    write_html(page, search_pb2.SearchRequest(text="festive", explain=True), explained, thumbs)
    text = page.read_text()
    assert "attention over the image" in text and "keyword attention" in text and "visual / " in text
    assert "0.70 / 0.30" in text and ">0.80<" in text and "(max 0.50)" in text
    assert "\u201cfestive\u201d" in text  # the query
    assert "no thumbnail" not in text
    plain = search_pb2.SearchResponse(results=[result("a", ""), result("b", "")])
    write_html(page, search_pb2.SearchRequest(image=search_pb2.ImageQuery(data=thumbs["b"])), plain, thumbs)
    text = page.read_text()
    assert 'class="legend"' not in text and 'class="heat"' not in text and 'class="bar"' not in text
    assert text.count("<img") == 3  # the query image and both results


def test_cross_domain_tables_show_tagynet_not_modality_weights():
    reply = search_pb2.SearchResponse(
        results=[result("shop-1", "", visual_weight=1.0, regions=regions(0.3), candidate_regions=regions(0.2))]
    )
    table = results_table(reply, "cross-domain")
    header = table.splitlines()[0]
    assert "tagynet" in header and "visual" not in header and "keyword" not in header
    assert re.search(r"shop-1\s+0\.500\s+0\.400", table)
    assert "visual" not in results_table(reply, "image").splitlines()[0]
    assert "visual" in results_table(reply, "text").splitlines()[0]

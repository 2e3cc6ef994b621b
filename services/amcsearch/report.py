"""A self-contained HTML page of search results: the query, each result's attention over its
thumbnail, its modality weights and keyword attention, with their numbers, and a legend of what
is drawn (only that).

Images come from two places only: the request itself (the query image's bytes) and `thumbnails`,
bytes per result id that the caller hands in. The CLI fills `thumbnails` from a folder named on
its own command line (`--thumbnails DIR`, see `thumbnails_from`); a stored thumbnail returned by
the service can fill it the same way. Nothing an indexed item says (its metadata, a path in it)
makes the page read a file: whoever can index must not be able to put their pick of the reader's
files into the reader's page. A result without a thumbnail is a grey box saying so, with its
attention as numbers, never a heatmap over nothing.

Attention is drawn in viridis (perceptually ordered, readable by colour-blind readers), with an
opacity that grows with the weight up to MAX_OPACITY, so the image's own colours stay visible.
Everything is inline (data URIs, CSS grids): the page opens anywhere without a server.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from amcsearch.runtime.contract import REGION_COUNT, REGION_GRID
from amcsearch.v1 import common_pb2, search_pb2

MAX_OPACITY = 0.5
"""Opacity of the strongest region's colour: the image stays visible under every cell."""
THUMBNAIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MAX_THUMBNAIL_BYTES = 4 << 20
VIRIDIS = (
    (68, 1, 84),
    (72, 40, 120),
    (62, 73, 137),
    (49, 104, 142),
    (38, 130, 142),
    (31, 158, 137),
    (53, 183, 121),
    (110, 206, 88),
    (253, 231, 37),
)
"""matplotlib's viridis at 0, 1/8, ..., 1."""

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 20px; margin: 0 0 8px; }
.query { display: flex; gap: 14px; align-items: center; border: 1px solid #ccc; padding: 8px;
         background: #f7f7f7; margin-bottom: 10px; }
.query .text { font-size: 18px; }
.legend { display: flex; flex-wrap: wrap; gap: 18px; align-items: center; font-size: 12px; margin: 8px 0; }
.legend .item { display: flex; align-items: center; gap: 6px; }
.swatch { display: inline-block; width: 14px; height: 10px; }
.scale { display: inline-block; width: 140px; height: 10px; }
.query img { width: 128px; height: 128px; image-rendering: pixelated; display: block; }
.result { display: inline-block; margin: 4px; vertical-align: top; border: 1px solid #ddd; padding: 6px;
          width: 196px; }
.result.wide { width: 330px; }
.pair { display: flex; gap: 6px; }
.thumb { position: relative; width: 160px; height: 160px; }
.thumb img { width: 160px; height: 160px; image-rendering: pixelated; display: block; }
.placeholder { width: 160px; height: 160px; display: flex; align-items: center; justify-content: center;
               text-align: center; font-size: 12px; color: #666; box-sizing: border-box;
               background: repeating-linear-gradient(45deg, #eee, #eee 8px, #e2e2e2 8px, #e2e2e2 16px);
               border: 1px dashed #aaa; }
.heat { position: absolute; inset: 0; display: grid; grid-template-columns: repeat(6, 1fr);
        grid-template-rows: repeat(6, 1fr); }
.caption { font-size: 11px; color: #555; width: 160px; }
.row { display: flex; align-items: center; gap: 4px; font-size: 12px; }
.bar { height: 10px; display: flex; width: 110px; }
.visual { background: #3b7dd8; } .keyword { background: #e8a33d; }
.kw span.name { width: 70px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.kw .fill { height: 8px; background: #e8a33d; }
.small { font-size: 12px; color: #444; }
"""


def viridis(t: float) -> tuple[int, int, int]:
    """The viridis colour at t in [0, 1], interpolated between VIRIDIS's anchors."""
    t = max(0.0, min(1.0, t)) * (len(VIRIDIS) - 1)
    low = min(int(t), len(VIRIDIS) - 2)
    f = t - low
    a, b = VIRIDIS[low], VIRIDIS[low + 1]
    return (round(a[0] + f * (b[0] - a[0])), round(a[1] + f * (b[1] - a[1])), round(a[2] + f * (b[2] - a[2])))


def image_mime(data: bytes) -> str | None:
    """The image type of `data` by its first bytes; None for anything that is not an image."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_uri(data: bytes) -> str:
    mime = image_mime(data) if data else None
    return f"data:{mime};base64,{base64.b64encode(data).decode()}" if mime else ""


def thumbnails_from(directory: Path, ids: Iterable[str]) -> dict[str, bytes]:
    """The hook's local source: DIR/<id>.png (or .jpg, .jpeg, .webp) for each id that has one, in
    a folder the user named. An id never leaves DIR: a file is taken only when it resolves to a
    regular file directly inside DIR (ids have no '/', a link out of DIR is refused)."""
    folder = directory.resolve()
    found: dict[str, bytes] = {}
    for image_id in ids:
        for suffix in THUMBNAIL_SUFFIXES:
            path = (folder / f"{image_id}{suffix}").resolve()
            if path.parent == folder and path.is_file() and path.stat().st_size <= MAX_THUMBNAIL_BYTES:
                found[image_id] = path.read_bytes()
                break
    return found


@dataclass
class Drawn:
    """What the page drew, so that the legend explains exactly that."""

    heatmap: bool = False
    placeholder: bool = False
    modality: bool = False
    keywords: bool = False
    notes: list[str] = field(default_factory=list)


def heatmap(regions: list[common_pb2.RegionAttention]) -> tuple[str, float]:
    """A 6 x 6 overlay: each region's viridis colour and opacity by its weight over the
    strongest one's; the overlay and the strongest weight."""
    weights = [0.0] * REGION_COUNT
    for r in regions:
        if 0 <= r.index < REGION_COUNT:
            weights[r.index] = max(0.0, r.weight)
    top = max(weights) or 1.0
    cells = []
    for i, w in enumerate(weights):
        red, green, blue = viridis(w / top)
        cells.append(
            f'<div data-w="{w:.3f}" title="region ({i // REGION_GRID},{i % REGION_GRID}) {w:.3f}" '
            f'style="background: rgb({red},{green},{blue}); opacity: {MAX_OPACITY * w / top:.3f}"></div>'
        )
    return f'<div class="heat">{"".join(cells)}</div>', max(weights)


def picture(
    image: bytes, alt: str, regions: list[common_pb2.RegionAttention], caption: str, drawn: Drawn, role: str = ""
) -> str:
    """An image with its attention over it, or the placeholder with the attention as numbers."""
    source = image_uri(image)
    role_attr = f' data-role="{role}"' if role else ""
    if not source:
        drawn.placeholder = True
        strongest = sorted(regions, key=lambda g: -g.weight)[:3]
        listed = ", ".join(f"({g.row},{g.column}) {g.weight:.2f}" for g in strongest)
        text = f"{html.escape(caption)}; strongest regions (row,col): {listed}" if listed else html.escape(caption)
        return f'<div><div class="placeholder"{role_attr}>no thumbnail</div><div class="caption">{text}</div></div>'
    overlay, strongest_weight = heatmap(regions) if regions else ("", 0.0)
    if regions:
        drawn.heatmap = True
        caption = f"{caption} (max {strongest_weight:.2f})"
    return (
        f'<div><div class="thumb"><img alt="{html.escape(alt)}"{role_attr} src="{source}">{overlay}</div>'
        f'<div class="caption">{html.escape(caption)}</div></div>'
    )


def modality_bar(evidence: common_pb2.Evidence, drawn: Drawn) -> str:
    drawn.modality = True
    visual = max(0.0, min(1.0, evidence.visual_weight))
    return (
        f'<div class="row" title="visual {visual:.2f} / keyword {1 - visual:.2f}">'
        f'<div class="bar"><div class="visual" style="width:{visual * 100:.0f}%"></div>'
        f'<div class="keyword" style="width:{(1 - visual) * 100:.0f}%"></div></div>'
        f"<span>{visual:.2f} / {1 - visual:.2f}</span></div>"
    )


def keyword_bars(keywords: list[common_pb2.KeywordAttention], drawn: Drawn) -> str:
    if keywords:
        drawn.keywords = True
    return "".join(
        f'<div class="row kw"><span class="name" title="{html.escape(k.keyword)}">{html.escape(k.keyword)}</span>'
        f'<span class="fill" style="width:{max(0.0, min(1.0, k.weight)) * 80:.0f}px"></span>'
        f"<span>{k.weight:.2f}</span></div>"
        for k in keywords
    )


def result_card(
    rank: int, result: search_pb2.SearchResult, kind: str, query_image: bytes, thumbnail: bytes, drawn: Drawn
) -> str:
    evidence = result.evidence if result.HasField("evidence") else None
    head = f"<div>#{rank} <b>{html.escape(result.id)}</b> score {result.score:.3f}</div>"
    if kind == "cross-domain":
        query_regions = list(evidence.regions) if evidence is not None else []
        candidate_regions = list(evidence.candidate_regions) if evidence is not None else []
        pictures = (
            '<div class="pair">'
            + picture(query_image, "query", query_regions, "snapshot's attention for this match", drawn)
            + picture(thumbnail, result.id, candidate_regions, "catalogue image's tag attention", drawn, "result")
            + "</div>"
        )
        details = f"<div class='small'>TagYNet cosine {result.ann_score:.3f}</div>"
        return f'<div class="result wide">{pictures}{head}{details}<div class="small">{html.escape(result.title)}</div></div>'
    regions = list(evidence.regions) if evidence is not None else []
    pictures = picture(thumbnail, result.id, regions, "attention" if regions else "", drawn, "result")
    details = ""
    if evidence is not None and kind == "text":
        details = modality_bar(evidence, drawn) + keyword_bars(list(evidence.keywords), drawn)
    return f'<div class="result">{pictures}{head}{details}<div class="small">{html.escape(result.title)}</div></div>'


def query_kind(request: search_pb2.SearchRequest) -> str:
    kind = request.WhichOneof("query") or "text"
    if kind == "image" and request.image_match == search_pb2.SearchRequest.CROSS_DOMAIN:
        return "cross-domain"
    return kind


def query_panel(request: search_pb2.SearchRequest, kind: str, image: bytes, drawn: Drawn) -> str:
    """The query as the user gave it: its text, or its image (and modification)."""
    if kind == "text":
        return f'<div class="query"><span class="text">\u201c{html.escape(request.text)}\u201d</span></div>'
    source = request.composed.image if kind == "composed" else request.image
    uri = image_uri(image)
    if uri:
        shown = f'<img alt="query" data-role="query" src="{uri}">'
    else:
        drawn.placeholder = True
        shown = '<div class="placeholder" data-role="query">no thumbnail</div>'
    label = {
        "image": "query image",
        "composed": "query image",
        "cross-domain": "snapshot: its clean catalogue image is sought (cross-domain)",
    }[kind]
    if source.id:
        label += f" {html.escape(source.id)}"
    if kind == "composed":
        label += f' + <span class="text">\u201c{html.escape(request.composed.modification)}\u201d</span>'
    return f'<div class="query">{shown}<span>{label}</span></div>'


def legend(drawn: Drawn) -> str:
    items = []
    if drawn.heatmap:
        stops = ", ".join(f"rgb{viridis(i / 8)}" for i in range(9))
        items.append(
            '<span class="item">attention over the image: 0 '
            f'<span class="scale" style="background: linear-gradient(to right, {stops})"></span> '
            f"the picture's max (the number under it), at up to {MAX_OPACITY:.0%} opacity</span>"
        )
    if drawn.placeholder:
        items.append(
            '<span class="item"><span class="swatch" style="background:#e2e2e2;border:1px dashed #aaa"></span>'
            "no thumbnail: the CLI draws results from a folder you name (--thumbnails DIR)</span>"
        )
    if drawn.modality:
        items.append(
            '<span class="item"><span class="swatch visual"></span>visual / '
            '<span class="swatch keyword"></span>keyword weight of the result (numbers: visual / keyword)</span>'
        )
    if drawn.keywords:
        items.append(
            '<span class="item"><span class="swatch keyword" style="height:8px"></span>'
            "keyword attention (weight beside each keyword)</span>"
        )
    return f'<div class="legend"><b>legend</b>{"".join(items)}</div>' if items else ""


def write_html(
    path: Path,
    request: search_pb2.SearchRequest,
    reply: search_pb2.SearchResponse,
    thumbnails: Mapping[str, bytes] | None = None,
) -> None:
    """The results page of `reply` to `request`. `thumbnails`: image bytes by result id (and by
    the query's id for a query by id), the only images besides the request's own bytes."""
    thumbnails = thumbnails or {}
    kind = query_kind(request)
    drawn = Drawn()
    source = request.composed.image if kind == "composed" else request.image
    query_image = b""
    if kind != "text":
        query_image = source.data or thumbnails.get(source.id, b"")
    panel = query_panel(request, kind, query_image, drawn)
    cards = "\n".join(
        result_card(i, r, kind, query_image, thumbnails.get(r.id, b""), drawn) for i, r in enumerate(reply.results, 1)
    )
    notes = "".join(
        f"<p><b>degraded</b> {html.escape(d.stage)}: {html.escape(d.reason)}</p>" for d in reply.degradations
    )
    if reply.explanation:
        notes += f"<p class='small'><b>explain:</b> {html.escape(reply.explanation)}</p>"
    collection = f", collection {html.escape(request.collection)}" if request.collection else ""
    title = {"text": "text search", "image": "search by image", "composed": "image + modification"}.get(
        kind, "cross-domain search"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>amcsearch: {html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>amcsearch: {html.escape(title)}{collection}</h1>{panel}"
        f"<p class='small'>{len(reply.results)} results; stages: {' &rarr; '.join(map(html.escape, reply.stages))}"
        f"</p>{legend(drawn)}{notes}<div>{cards or '<p>no results</p>'}</div></body></html>"
    )
    Path(path).write_text(page, encoding="utf-8")

"""A self-contained HTML page of search results: thumbnails, attention heatmaps and weight bars.

Text results: the candidate's region attention as a heatmap over its thumbnail, the modality
weights as a bar, the keyword attention as bars. Cross-domain image results: the query's
attention when matched to that result beside the candidate's own tag attention. Everything is
inline (data URIs, CSS grids), so the page opens anywhere without a server.
"""

from __future__ import annotations

import base64
import html
import mimetypes
from pathlib import Path

from amcsearch.runtime.contract import REGION_COUNT, REGION_GRID
from amcsearch.v1 import common_pb2, search_pb2

STYLE = """
body { font-family: sans-serif; margin: 2em; }
.result { display: inline-block; margin: 8px; vertical-align: top; border: 1px solid #ddd; padding: 6px;
          width: 160px; }
.result.wide { width: 326px; }
.pair { display: flex; gap: 6px; }
.thumb { position: relative; width: 160px; height: 160px; }
.thumb img { width: 160px; height: 160px; image-rendering: pixelated; display: block; }
.heat { position: absolute; inset: 0; display: grid; grid-template-columns: repeat(6, 1fr);
        grid-template-rows: repeat(6, 1fr); }
.heat div { background: rgb(255, 40, 0); }
.caption { font-size: 11px; color: #555; text-align: center; }
.bar { height: 10px; display: flex; width: 160px; }
.visual { background: #3b7dd8; } .keyword { background: #e8a33d; }
.kw { display: flex; align-items: center; gap: 4px; font-size: 12px; width: 160px; }
.kw span:first-child { width: 64px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.kw .fill { height: 8px; background: #e8a33d; }
.small { font-size: 12px; color: #444; }
"""
MAX_OPACITY = 0.7


def data_uri(path: str) -> str:
    file = Path(path)
    if not path or not file.is_file():
        return ""
    mime = mimetypes.guess_type(file.name)[0] or "image/png"
    return f"data:{mime};base64,{base64.b64encode(file.read_bytes()).decode()}"


def bytes_uri(data: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(data).decode()}" if data else ""


def describe(request: search_pb2.SearchRequest) -> str:
    kind = request.WhichOneof("query")
    if kind == "text":
        return f"text: {request.text}"
    if kind == "image":
        mode = " (cross-domain)" if request.image_match == search_pb2.SearchRequest.CROSS_DOMAIN else ""
        return f"image{mode}: {request.image.id or '(uploaded bytes)'}"
    return f"image {request.composed.image.id or '(uploaded bytes)'} + \u201c{request.composed.modification}\u201d"


def heatmap(regions: list[common_pb2.RegionAttention]) -> str:
    """A 6 x 6 overlay: each attended region's opacity in proportion to its weight (the strongest
    at MAX_OPACITY), the others clear."""
    weights = [0.0] * REGION_COUNT
    for r in regions:
        if 0 <= r.index < REGION_COUNT:
            weights[r.index] = max(0.0, r.weight)
    top = max(weights) or 1.0
    cells = "".join(
        f'<div data-w="{w:.3f}" title="region ({i // REGION_GRID},{i % REGION_GRID}) {w:.2f}" '
        f'style="opacity:{MAX_OPACITY * w / top:.3f}"></div>'
        for i, w in enumerate(weights)
    )
    return f'<div class="heat">{cells}</div>'


def thumbnail(source: str, alt: str, regions: list[common_pb2.RegionAttention], caption: str) -> str:
    image = f'<img alt="{html.escape(alt)}" src="{source}">' if source else "<div>(no image file)</div>"
    overlay = heatmap(regions) if regions else ""
    return f'<div><div class="thumb">{image}{overlay}</div><div class="caption">{html.escape(caption)}</div></div>'


def keyword_bars(keywords: list[common_pb2.KeywordAttention]) -> str:
    return "".join(
        f'<div class="kw" title="{html.escape(k.keyword)} {k.weight:.2f}"><span>{html.escape(k.keyword)}</span>'
        f'<span class="fill" style="width:{max(0.0, min(1.0, k.weight)) * 90:.0f}px"></span></div>'
        for k in keywords
    )


def result_card(rank: int, result: search_pb2.SearchResult, query_image: str = "") -> str:
    source = data_uri(result.metadata.get("path", ""))
    evidence = result.evidence if result.HasField("evidence") else None
    if evidence is not None and evidence.candidate_regions:
        pictures = (
            '<div class="pair">'
            + thumbnail(query_image, "query", list(evidence.regions), "query, attended for this match")
            + thumbnail(source, result.id, list(evidence.candidate_regions), "candidate, tag attention")
            + "</div>"
        )
        details, width = "", " wide"
    else:
        width = ""
        regions = list(evidence.regions) if evidence is not None else []
        pictures = thumbnail(source, result.id, regions, "region attention" if regions else "")
        details = ""
        if evidence is not None:
            visual = max(0.0, min(1.0, evidence.visual_weight)) * 100
            details = (
                f'<div class="bar" title="visual {visual:.0f}% / keyword {100 - visual:.0f}%">'
                f'<div class="visual" style="width:{visual:.0f}%"></div>'
                f'<div class="keyword" style="width:{100 - visual:.0f}%"></div></div>'
            ) + keyword_bars(list(evidence.keywords))
    return (
        f'<div class="result{width}">{pictures}<div>#{rank} <b>{html.escape(result.id)}</b> '
        f"{result.score:.3f}</div>{details}<div class='small'>{html.escape(result.title)}</div></div>"
    )


def write_html(path: Path, request: search_pb2.SearchRequest, reply: search_pb2.SearchResponse) -> None:
    query_image = bytes_uri(request.image.data) if request.WhichOneof("query") == "image" else ""
    cards = "\n".join(result_card(i, r, query_image) for i, r in enumerate(reply.results, 1))
    notes = "".join(
        f"<p><b>degraded</b> {html.escape(d.stage)}: {html.escape(d.reason)}</p>" for d in reply.degradations
    )
    if reply.explanation:
        notes += f"<p class='small'><b>explain:</b> {html.escape(reply.explanation)}</p>"
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>amcsearch results</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(describe(request))}</h1>"
        f"<p class='small'>stages: {' &rarr; '.join(reply.stages)}; red: attention (stronger is more opaque); "
        f"bars: <span style='color:#3b7dd8'>visual</span> / <span style='color:#e8a33d'>keyword</span> weight, "
        f"keyword attention</p>{notes}<div>{cards}</div></body></html>"
    )
    Path(path).write_text(page, encoding="utf-8")

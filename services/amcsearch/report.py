"""A self-contained HTML page of search results: thumbnails and modality weight bars."""

from __future__ import annotations

import base64
import html
import mimetypes
from pathlib import Path

from amcsearch.v1 import search_pb2

STYLE = """
body { font-family: sans-serif; margin: 2em; }
.result { display: inline-block; width: 180px; margin: 8px; vertical-align: top; }
.result img { width: 160px; height: 160px; image-rendering: pixelated; border: 1px solid #ccc; }
.bar { height: 10px; display: flex; width: 160px; }
.visual { background: #3b7dd8; } .keyword { background: #e8a33d; }
.small { font-size: 12px; color: #444; }
"""


def data_uri(path: str) -> str:
    file = Path(path)
    if not path or not file.is_file():
        return ""
    mime = mimetypes.guess_type(file.name)[0] or "image/png"
    return f"data:{mime};base64,{base64.b64encode(file.read_bytes()).decode()}"


def describe(request: search_pb2.SearchRequest) -> str:
    kind = request.WhichOneof("query")
    if kind == "text":
        return f"text: {request.text}"
    if kind == "image":
        return f"image: {request.image.id or '(uploaded bytes)'}"
    return f"image {request.composed.image.id or '(uploaded bytes)'} + \u201c{request.composed.modification}\u201d"


def result_card(rank: int, result: search_pb2.SearchResult) -> str:
    source = data_uri(result.metadata.get("path", ""))
    image = f'<img alt="{html.escape(result.id)}" src="{source}">' if source else "<div>(no image file)</div>"
    bar = ""
    if result.HasField("evidence"):
        visual = max(0.0, min(1.0, result.evidence.visual_weight)) * 100
        bar = (
            f'<div class="bar" title="visual {visual:.0f}% / keyword {100 - visual:.0f}%">'
            f'<div class="visual" style="width:{visual:.0f}%"></div>'
            f'<div class="keyword" style="width:{100 - visual:.0f}%"></div></div>'
        )
        keywords = ", ".join(html.escape(k.keyword) for k in result.evidence.keywords[:4])
        if keywords:
            bar += f'<div class="small">keywords: {keywords}</div>'
    return (
        f'<div class="result">{image}<div>#{rank} <b>{html.escape(result.id)}</b> '
        f'{result.score:.3f}</div>{bar}<div class="small">{html.escape(result.title)}</div></div>'
    )


def write_html(path: Path, request: search_pb2.SearchRequest, reply: search_pb2.SearchResponse) -> None:
    cards = "\n".join(result_card(i, r) for i, r in enumerate(reply.results, 1))
    degraded = "".join(
        f"<p><b>degraded</b> {html.escape(d.stage)}: {html.escape(d.reason)}</p>" for d in reply.degradations
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>amcsearch results</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(describe(request))}</h1>"
        f"<p class='small'>stages: {' &rarr; '.join(reply.stages)}; bars: "
        f"<span style='color:#3b7dd8'>visual</span> / <span style='color:#e8a33d'>keyword</span> weight</p>"
        f"{degraded}<div>{cards}</div></body></html>"
    )
    Path(path).write_text(page, encoding="utf-8")

"""`amcsearch`: index a folder of images and search it from the terminal.

    amcsearch index DIR                      (DIR/metadata.jsonl optional: id, title, tags, keywords)
    amcsearch search "large red circle top-left" [--explain] [--html results.html]
    amcsearch search --image FILE [--modify "make the circle blue"]
    amcsearch search --id IMAGE_ID [--modify ...]
    amcsearch stats | get ID... | delete ID...
    amcsearch search "red circle" --where theme=festive --range price=10..20 --has sku --offset 10
    amcsearch search "red circle" --filter '{"combine": "ANY", "conditions": [...]}' --keyword-only
    amcsearch rerank "red circle" --ids a b --images mine.png      (score candidates, index nothing)
    amcsearch batch queries.txt                                     (one text query per line)
    amcsearch collections [create NAME | drop NAME]
Every command takes --collection NAME (default: the default collection).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
from google.protobuf import json_format
from tqdm import tqdm

from amcsearch.report import write_html
from amcsearch.v1 import common_pb2, search_pb2, search_pb2_grpc

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def read_metadata(directory: Path) -> dict[str, dict]:
    path = directory / "metadata.jsonl"
    if not path.exists():
        return {}
    entries = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {entry["id"]: entry for entry in entries}


def image_items(directory: Path) -> Iterator[search_pb2.ImageItem]:
    """One ImageItem per image file, read lazily so large folders never sit in memory."""
    metadata = read_metadata(directory)
    for path in sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        entry = metadata.get(path.stem, {})
        yield search_pb2.ImageItem(
            id=path.stem,
            image=path.read_bytes(),
            title=entry.get("title", ""),
            tags=entry.get("tags", []),
            keywords=[common_pb2.Keyword(text=t, confidence=c) for t, c in entry.get("keywords", [])],
            metadata={"path": str(path.resolve()), **entry.get("metadata", {})},
        )


def batches(items: Iterator[search_pb2.ImageItem], size: int) -> Iterator[list[search_pb2.ImageItem]]:
    batch: list[search_pb2.ImageItem] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def auth_metadata() -> list[tuple[str, str]]:
    """The write token from $SEARCH_AUTH_TOKEN (the server's own setting name), if any."""
    token = os.environ.get("SEARCH_AUTH_TOKEN", "")
    return [("authorization", f"Bearer {token}")] if token else []


def index_directory(
    stub,
    directory: Path,
    batch_size: int = 32,
    skip_auto_tags: bool = False,
    progress: bool = True,
    collection: str = "",
) -> tuple[int, list[search_pb2.IndexItemResult]]:
    """Index every image of `directory`; returns (indexed count, failed results)."""
    total = sum(1 for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    indexed, failed = 0, list[search_pb2.IndexItemResult]()
    with tqdm(total=total, unit="img", disable=not progress, desc="indexing") as bar:
        for batch in batches(image_items(directory), batch_size):
            reply = stub.Index(
                search_pb2.IndexRequest(items=batch, skip_auto_tags=skip_auto_tags, collection=collection),
                timeout=300,
                metadata=auth_metadata(),
            )
            indexed += reply.indexed_count
            failed.extend(r for r in reply.results if not r.indexed)
            bar.update(len(batch))
    return indexed, failed


def metadata_filter(args: argparse.Namespace) -> search_pb2.MetadataFilter:
    """--filter (the MetadataFilter message as JSON) and the shorthands, combined by AND."""
    combined = search_pb2.MetadataFilter()
    if args.filter:
        combined.groups.append(json_format.Parse(args.filter, search_pb2.MetadataFilter()))
    for clause in args.where or []:
        key, _, value = clause.partition("=")
        combined.conditions.append(search_pb2.MetadataCondition(key=key, equals=value))
    for clause in args.where_any or []:
        key, _, values = clause.partition("=")
        combined.conditions.append(
            search_pb2.MetadataCondition(key=key, any_of=search_pb2.StringList(values=values.split(",")))
        )
    for clause in args.range or []:
        key, _, bounds = clause.partition("=")
        low, _, high = bounds.partition("..")
        number_range = search_pb2.NumberRange()
        if low:
            number_range.gte = float(low)
        if high:
            number_range.lte = float(high)
        combined.conditions.append(search_pb2.MetadataCondition(key=key, range=number_range))
    for key in args.has or []:
        combined.conditions.append(search_pb2.MetadataCondition(key=key, exists=True))
    return combined


def modality_bias(args: argparse.Namespace) -> search_pb2.ModalityBias:
    bias = search_pb2.ModalityBias(keyword_scale=args.keyword_scale or 0.0)
    if args.visual_only:
        bias.modalities = search_pb2.ModalityBias.VISUAL_ONLY
    elif args.keyword_only:
        bias.modalities = search_pb2.ModalityBias.KEYWORD_ONLY
    if args.keyword_weight:
        low, _, high = args.keyword_weight.partition("..")
        bias.min_keyword_weight, bias.max_keyword_weight = float(low or 0), float(high or 1)
    return bias


def search_request(args: argparse.Namespace) -> search_pb2.SearchRequest:
    request = search_pb2.SearchRequest(
        top_k=args.top_k,
        candidates=args.candidates,
        explain=args.explain,
        keyword_filter=args.keyword or [],
        collection=args.collection,
        offset=args.offset,
        metadata_filter=metadata_filter(args),
        modality=modality_bias(args),
    )
    if args.image or args.id:
        image = (
            search_pb2.ImageQuery(data=Path(args.image).read_bytes())
            if args.image
            else search_pb2.ImageQuery(id=args.id)
        )
        if args.modify:
            request.composed.CopyFrom(search_pb2.ComposedQuery(image=image, modification=args.modify))
        else:
            request.image.CopyFrom(image)
            if args.cross_domain:
                request.image_match = search_pb2.SearchRequest.CROSS_DOMAIN
    elif args.text:
        request.text = args.text
    else:
        raise SystemExit("give a text, --image FILE or --id ID")
    return request


def rerank_request(args: argparse.Namespace) -> search_pb2.RerankRequest:
    candidates = [search_pb2.RerankCandidate(id=i) for i in args.ids or []]
    candidates += [
        search_pb2.RerankCandidate(inline=search_pb2.InlineImage(id=path, image=Path(path).read_bytes()))
        for path in args.images or []
    ]
    return search_pb2.RerankRequest(
        text=args.text,
        candidates=candidates,
        top_k=args.top_k,
        explain=args.explain,
        collection=args.collection,
        modality=modality_bias(args),
    )


def results_table(reply: search_pb2.SearchResponse) -> str:
    lines = [f"{'#':>2}  {'id':<24} {'score':>7} {'visual':>7} {'keyword':>8}  title"]
    for rank, r in enumerate(reply.results, 1):
        weights = (
            f"{r.evidence.visual_weight:>7.2f} {r.evidence.keyword_weight:>8.2f}"
            if r.HasField("evidence")
            else f"{'-':>7} {'-':>8}"
        )
        lines.append(f"{rank:>2}  {r.id:<24} {r.score:>7.3f} {weights}  {r.title[:60]}")
        if r.HasField("evidence") and r.evidence.candidate_regions:
            query = ", ".join(f"({g.row},{g.column}) {g.weight:.2f}" for g in r.evidence.regions[:3])
            candidate = ", ".join(f"({g.row},{g.column}) {g.weight:.2f}" for g in r.evidence.candidate_regions[:3])
            lines.append(f"{'':>4}query regions(row,col): {query}   candidate regions: {candidate}")
        elif r.HasField("evidence") and (r.evidence.keywords or r.evidence.regions):
            keywords = ", ".join(f"{k.keyword} {k.weight:.2f}" for k in r.evidence.keywords[:4])
            regions = ", ".join(f"({g.row},{g.column}) {g.weight:.2f}" for g in r.evidence.regions[:3])
            lines.append(f"{'':>4}keywords: {keywords}   regions(row,col): {regions}")
    lines.append(f"stages: {' -> '.join(reply.stages)}")
    if reply.explanation:
        lines.append(f"explain: {reply.explanation}")
    lines.extend(f"DEGRADED {d.stage}: {d.reason}" for d in reply.degradations)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="amcsearch", description="Index and search images with amcsearch.")
    parser.add_argument(
        "--addr",
        default=os.environ.get("SEARCH_ADDR", "127.0.0.1:50050"),
        help="SearchService address (default $SEARCH_ADDR or 127.0.0.1:50050)",
    )
    parser.add_argument("--collection", default="", help="a named collection (default: the default one)")
    commands = parser.add_subparsers(dest="command", required=True)
    index = commands.add_parser("index", help="index every image of a folder")
    index.add_argument("directory", type=Path)
    index.add_argument("--batch-size", type=int, default=32)
    index.add_argument("--skip-auto-tags", action="store_true")
    search = commands.add_parser("search", help="search by text, image, or image + modification")
    search.add_argument("text", nargs="?")
    search.add_argument("--image", help="query image file")
    search.add_argument("--id", help="query by an indexed image id")
    search.add_argument("--modify", help="modification text for a composed query")
    search.add_argument("--top-k", type=int, default=10)
    search.add_argument("--candidates", type=int, default=0)
    search.add_argument("--keyword", action="append", help="keep results having this keyword (repeatable)")
    search.add_argument("--explain", action="store_true")
    search.add_argument("--html", type=Path, help="write a results page with thumbnails and attention heatmaps")
    search.add_argument(
        "--cross-domain",
        action="store_true",
        help="--image is a snapshot of a product: find its clean catalogue image (TagYNet + CtxYNet)",
    )
    search.add_argument("--offset", type=int, default=0, help="ranks to skip (paging)")
    search.add_argument("--where", action="append", metavar="KEY=VALUE", help="metadata equals (repeatable)")
    search.add_argument("--where-any", action="append", metavar="KEY=V1,V2", help="metadata is one of")
    search.add_argument("--range", action="append", metavar="KEY=LOW..HIGH", help="metadata number range")
    search.add_argument("--has", action="append", metavar="KEY", help="metadata key present")
    search.add_argument("--filter", help="a MetadataFilter as JSON (AND/OR groups), ANDed with the above")
    rerank = commands.add_parser("rerank", help="AMC-score caller-supplied candidates (nothing is indexed)")
    rerank.add_argument("text")
    rerank.add_argument("--ids", nargs="*", help="indexed image ids")
    rerank.add_argument("--images", nargs="*", help="image files, scored without indexing them")
    rerank.add_argument("--top-k", type=int, default=0)
    rerank.add_argument("--explain", action="store_true")
    for sub in (search, rerank):
        sub.add_argument("--visual-only", action="store_true", help="modality bias: the visual evidence only")
        sub.add_argument("--keyword-only", action="store_true", help="modality bias: the keyword evidence only")
        sub.add_argument("--keyword-scale", type=float, help="multiply the learned keyword weight")
        sub.add_argument("--keyword-weight", metavar="MIN..MAX", help="bounds of the applied keyword weight")
    batch = commands.add_parser("batch", help="BatchSearch: one text query per line of FILE")
    batch.add_argument("file", type=Path)
    batch.add_argument("--top-k", type=int, default=5)
    collections = commands.add_parser("collections", help="list, create or drop collections")
    collections.add_argument("action", nargs="?", choices=["list", "create", "drop"], default="list")
    collections.add_argument("name", nargs="?")
    commands.add_parser("stats", help="index size and model builds")
    for name in ("get", "delete"):
        sub = commands.add_parser(name, help=f"{name} images by id")
        sub.add_argument("ids", nargs="+")
    args = parser.parse_args(argv)

    with grpc.insecure_channel(args.addr, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        try:
            return run(args, stub)
        except grpc.RpcError as error:
            print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1


def index_command(args: argparse.Namespace, stub) -> int:
    indexed, failed = index_directory(
        stub, args.directory, args.batch_size, args.skip_auto_tags, collection=args.collection
    )
    print(f"indexed {indexed} images, {len(failed)} failed")
    for result in failed:
        print(f"  {result.id}: {result.error_code} {result.error}")
    return 0 if not failed else 3


def search_command(args: argparse.Namespace, stub) -> int:
    request = search_request(args)
    reply = stub.Search(request, timeout=60)
    print(results_table(reply))
    if args.html:
        write_html(args.html, request, reply)
        print(f"wrote {args.html}")
    return 0


def rerank_command(args: argparse.Namespace, stub) -> int:
    print(results_table(stub.Rerank(rerank_request(args), timeout=120)))
    return 0


def batch_command(args: argparse.Namespace, stub) -> int:
    texts = [line.strip() for line in args.file.read_text().splitlines() if line.strip()]
    searches = [search_pb2.SearchRequest(text=t, top_k=args.top_k, collection=args.collection) for t in texts]
    reply = stub.BatchSearch(search_pb2.BatchSearchRequest(searches=searches), timeout=120)
    for text, response in zip(texts, reply.responses, strict=True):
        print(f"== {text}\n{results_table(response)}")
    return 0


def stats_command(args: argparse.Namespace, stub) -> int:
    print(stub.Stats(search_pb2.StatsRequest(collection=args.collection), timeout=30))
    return 0


def get_command(args: argparse.Namespace, stub) -> int:
    reply = stub.Get(search_pb2.GetRequest(ids=args.ids, collection=args.collection), timeout=30)
    for image in reply.images:
        keywords = ", ".join(f"{k.text}:{k.confidence:.2f}" for k in image.keywords)
        print(f"{image.id}  {image.title}  [{keywords}]")
    for missing in reply.missing_ids:
        print(f"{missing}  (not in the index)")
    return 0


def delete_command(args: argparse.Namespace, stub) -> int:
    reply = stub.Delete(
        search_pb2.DeleteRequest(ids=args.ids, collection=args.collection), timeout=30, metadata=auth_metadata()
    )
    print(f"deleted {reply.deleted_count}; not found: {', '.join(reply.missing_ids) or 'none'}")
    return 0


def run(args: argparse.Namespace, stub) -> int:
    commands = {
        "index": index_command,
        "search": search_command,
        "rerank": rerank_command,
        "batch": batch_command,
        "collections": collections_command,
        "stats": stats_command,
        "get": get_command,
        "delete": delete_command,
    }
    return commands[args.command](args, stub)


def collections_command(args: argparse.Namespace, stub) -> int:
    if args.action == "list":
        for info in stub.ListCollections(search_pb2.ListCollectionsRequest(), timeout=30).collections:
            print(f"{info.name or '(default)':<40} {info.image_count:>10} images")
        return 0
    if not args.name:
        raise SystemExit(f"collections {args.action} needs a NAME")
    if args.action == "create":
        reply = stub.CreateCollection(
            search_pb2.CreateCollectionRequest(name=args.name), timeout=30, metadata=auth_metadata()
        )
        print("created" if reply.created else "exists already")
        return 0
    reply = stub.DropCollection(search_pb2.DropCollectionRequest(name=args.name), timeout=60, metadata=auth_metadata())
    print(f"dropped {args.name}: {reply.deleted_images} images deleted")
    return 0


if __name__ == "__main__":
    sys.exit(main())

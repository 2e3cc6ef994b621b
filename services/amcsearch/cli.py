"""`amcsearch`: index a folder of images and search it from the terminal.

    amcsearch index DIR                      (DIR/metadata.jsonl optional: id, title, tags, keywords, metadata)
    amcsearch search "large red circle top-left" [--explain] [--html results.html]
    amcsearch search --image FILE [--modify "make the circle blue"] [--html page.html --thumbnails DIR]
    amcsearch search --id IMAGE_ID [--modify ...]
    amcsearch search --image snapshot.jpg --cross-domain --collection catalogue
    amcsearch stats | get ID... | delete ID...
    amcsearch search "red circle" --where theme=festive --range price=10..20 --has sku --offset 10
    amcsearch search "red circle" --filter '{"combine": "ANY", "conditions": [...]}' --keyword-only
    amcsearch rerank "red circle" --ids a b --images mine.png      (score candidates, index nothing)
    amcsearch batch queries.txt                                     (one text query per line)
    amcsearch collections [create NAME | drop NAME]
Every command takes --collection NAME (default: the default collection) and --addr HOST:PORT
(default $SEARCH_ADDR), before or after the command's name. Reads send $SEARCH_READ_TOKEN (or
else $SEARCH_AUTH_TOKEN), writes $SEARCH_AUTH_TOKEN, as `authorization: Bearer <token>`.
A bad argument is one line on stderr and exit status 2; an error status of the service, one line
and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
from tqdm import tqdm

from amcsearch.cli_args import UsageError, build_parser, check_search
from amcsearch.report import query_kind, thumbnails_from, write_html
from amcsearch.v1 import common_pb2, search_pb2, search_pb2_grpc

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def read_metadata(directory: Path) -> dict[str, dict]:
    """DIR/metadata.jsonl by id; a line that is not a JSON object with an "id" is a UsageError."""
    path = directory / "metadata.jsonl"
    if not path.exists():
        return {}
    entries = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise UsageError(f"{path}:{number}: not JSON ({error.msg})") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            raise UsageError(f'{path}:{number}: expected an object with an "id" string')
        entries[entry["id"]] = entry
    return entries


def image_items(directory: Path) -> Iterator[search_pb2.ImageItem]:
    """One ImageItem per image file, read lazily so large folders never sit in memory. Its
    metadata is what metadata.jsonl gives, nothing of this machine's (no file path: every reader
    of the index would see it, and no reader's tool should open it)."""
    metadata = read_metadata(directory)
    for path in sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        entry = metadata.get(path.stem, {})
        yield search_pb2.ImageItem(
            id=path.stem,
            image=path.read_bytes(),
            title=entry.get("title", ""),
            tags=entry.get("tags", []),
            keywords=[common_pb2.Keyword(text=t, confidence=c) for t, c in entry.get("keywords", [])],
            metadata=entry.get("metadata", {}),
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


def auth_metadata(write: bool = False) -> list[tuple[str, str]]:
    """`authorization: Bearer <token>` with the token the call needs, named as the gateway's own
    settings: writes $SEARCH_AUTH_TOKEN; reads $SEARCH_READ_TOKEN, or else $SEARCH_AUTH_TOKEN
    (the write token reads too). None when the variable is unset (a gateway without tokens)."""
    token = os.environ.get("SEARCH_AUTH_TOKEN", "")
    if not write:
        token = os.environ.get("SEARCH_READ_TOKEN", "") or token
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
                metadata=auth_metadata(write=True),
            )
            indexed += reply.indexed_count
            failed.extend(r for r in reply.results if not r.indexed)
            bar.update(len(batch))
    return indexed, failed


def metadata_filter(args: argparse.Namespace) -> search_pb2.MetadataFilter:
    """--filter (the MetadataFilter message as JSON) and the shorthands, combined by AND."""
    combined = search_pb2.MetadataFilter()
    if args.filter:
        combined.groups.append(args.filter)
    for key, value in args.where or []:
        combined.conditions.append(search_pb2.MetadataCondition(key=key, equals=value))
    for key, values in args.where_any or []:
        combined.conditions.append(search_pb2.MetadataCondition(key=key, any_of=search_pb2.StringList(values=values)))
    for key, low, high in args.range or []:
        number_range = search_pb2.NumberRange()
        if low is not None:
            number_range.gte = low
        if high is not None:
            number_range.lte = high
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
        bias.min_keyword_weight, bias.max_keyword_weight = args.keyword_weight
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
        image = search_pb2.ImageQuery(data=args.image.read_bytes()) if args.image else search_pb2.ImageQuery(id=args.id)
        if args.modify is not None:
            request.composed.CopyFrom(search_pb2.ComposedQuery(image=image, modification=args.modify))
        else:
            request.image.CopyFrom(image)
            if args.cross_domain:
                request.image_match = search_pb2.SearchRequest.CROSS_DOMAIN
    else:
        request.text = args.text
    return request


def rerank_request(args: argparse.Namespace) -> search_pb2.RerankRequest:
    candidates = [search_pb2.RerankCandidate(id=i) for i in args.ids or []]
    candidates += [
        search_pb2.RerankCandidate(inline=search_pb2.InlineImage(id=str(path), image=path.read_bytes()))
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


def _regions(regions) -> str:
    return ", ".join(f"({g.row},{g.column}) {g.weight:.2f}" for g in regions[:3])


def results_table(reply: search_pb2.SearchResponse, kind: str = "text") -> str:
    """The results with the columns that mean something for `kind`: text (and Rerank) results
    carry AMC's modality weights; cross-domain ones TagYNet's cosine (`ann_score`) beside the
    fused score; same-domain image and composed results only their cosine."""
    columns = {"text": f" {'visual':>7} {'keyword':>8}", "cross-domain": f" {'tagynet':>8}"}.get(kind, "")
    lines = [f"{'#':>2}  {'id':<24} {'score':>7}{columns}  title"]
    for rank, r in enumerate(reply.results, 1):
        evidence = r.evidence if r.HasField("evidence") else None
        if kind == "text":
            weights = (
                f" {evidence.visual_weight:>7.2f} {evidence.keyword_weight:>8.2f}"
                if evidence is not None
                else f" {'-':>7} {'-':>8}"
            )
        elif kind == "cross-domain":
            weights = f" {r.ann_score:>8.3f}"
        else:
            weights = ""
        lines.append(f"{rank:>2}  {r.id:<24} {r.score:>7.3f}{weights}  {r.title[:60]}")
        if evidence is None:
            continue
        if kind == "cross-domain" and evidence.candidate_regions:
            lines.append(
                f"{'':>4}query regions(row,col): {_regions(evidence.regions)}"
                f"   candidate regions: {_regions(evidence.candidate_regions)}"
            )
        elif kind == "text" and (evidence.keywords or evidence.regions):
            keywords = ", ".join(f"{k.keyword} {k.weight:.2f}" for k in evidence.keywords[:4])
            lines.append(f"{'':>4}keywords: {keywords}   regions(row,col): {_regions(evidence.regions)}")
    if not reply.results:
        lines.append("    (no results)")
    lines.append(f"stages: {' -> '.join(reply.stages)}")
    if reply.explanation:
        lines.append(f"explain: {reply.explanation}")
    lines.extend(f"DEGRADED {d.stage}: {d.reason}" for d in reply.degradations)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "search":
            check_search(args)
        with grpc.insecure_channel(args.addr, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
            return run(args, search_pb2_grpc.SearchServiceStub(channel))
    except UsageError as error:
        print(f"amcsearch {args.command}: error: {error}", file=sys.stderr)
        return 2
    except grpc.RpcError as error:
        details = " ".join(str(error.details()).split())
        print(f"error: {error.code().name}: {details}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"amcsearch {args.command}: error: {error}", file=sys.stderr)
        return 1


def index_command(args: argparse.Namespace, stub) -> int:
    indexed, failed = index_directory(
        stub, args.directory, args.batch_size, args.skip_auto_tags, collection=args.collection
    )
    print(f"indexed {indexed} images, {len(failed)} failed")
    for result in failed:
        print(f"  {result.id}: {result.error_code} {result.error}")
    return 0 if not failed else 3


def stored_thumbnails(stub, ids: list[str], collection: str) -> dict[str, bytes]:
    """The thumbnails the service kept when it indexed these images (none on engines that keep
    none): the report's pictures, never a file an indexed item names."""
    if not ids:
        return {}
    reply = stub.Get(
        search_pb2.GetRequest(ids=list(dict.fromkeys(ids)), collection=collection, include_thumbnails=True),
        timeout=60,
        metadata=auth_metadata(),
    )
    return {image.id: image.thumbnail for image in reply.images if image.thumbnail}


def search_command(args: argparse.Namespace, stub) -> int:
    request = search_request(args)
    reply = stub.Search(request, timeout=60, metadata=auth_metadata())
    print(results_table(reply, query_kind(request)))
    if args.html:
        ids = [r.id for r in reply.results] + ([args.id] if args.id else [])
        thumbnails = stored_thumbnails(stub, ids, request.collection)
        if args.thumbnails:
            thumbnails.update(thumbnails_from(args.thumbnails, ids))
        write_html(args.html, request, reply, thumbnails)
        print(f"wrote {args.html}")
    return 0


def rerank_command(args: argparse.Namespace, stub) -> int:
    print(results_table(stub.Rerank(rerank_request(args), timeout=120, metadata=auth_metadata())))
    return 0


def batch_command(args: argparse.Namespace, stub) -> int:
    texts = [line.strip() for line in args.file.read_text().splitlines() if line.strip()]
    searches = [search_pb2.SearchRequest(text=t, top_k=args.top_k, collection=args.collection) for t in texts]
    reply = stub.BatchSearch(search_pb2.BatchSearchRequest(searches=searches), timeout=120, metadata=auth_metadata())
    for text, response in zip(texts, reply.responses, strict=True):
        print(f"== {text}\n{results_table(response, 'text')}")
    return 0


def stats_command(args: argparse.Namespace, stub) -> int:
    print(stub.Stats(search_pb2.StatsRequest(collection=args.collection), timeout=30, metadata=auth_metadata()))
    return 0


def get_command(args: argparse.Namespace, stub) -> int:
    reply = stub.Get(
        search_pb2.GetRequest(ids=args.ids, collection=args.collection), timeout=30, metadata=auth_metadata()
    )
    for image in reply.images:
        keywords = ", ".join(f"{k.text}:{k.confidence:.2f}" for k in image.keywords)
        print(f"{image.id}  {image.title}  [{keywords}]")
    for missing in reply.missing_ids:
        print(f"{missing}  (not in the index)")
    return 0


def delete_command(args: argparse.Namespace, stub) -> int:
    reply = stub.Delete(
        search_pb2.DeleteRequest(ids=args.ids, collection=args.collection),
        timeout=30,
        metadata=auth_metadata(write=True),
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
        listed = stub.ListCollections(search_pb2.ListCollectionsRequest(), timeout=30, metadata=auth_metadata())
        for info in listed.collections:
            print(f"{info.name or '(default)':<40} {info.image_count:>10} images")
        return 0
    if not args.name:
        raise UsageError(f"collections {args.action} needs a NAME")
    if args.action == "create":
        reply = stub.CreateCollection(
            search_pb2.CreateCollectionRequest(name=args.name), timeout=30, metadata=auth_metadata(write=True)
        )
        print("created" if reply.created else "exists already")
        return 0
    reply = stub.DropCollection(
        search_pb2.DropCollectionRequest(name=args.name), timeout=60, metadata=auth_metadata(write=True)
    )
    print(f"dropped {args.name}: {reply.deleted_images} images deleted")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `amcsearch` command line: its parser, and every argument checked as it is read.

A bad argument is one line, `amcsearch <command>: error: <what is wrong>`, and exit status 2:
each value with a format (KEY=VALUE, LOW..HIGH, JSON, a file) has an argparse `type` that says
what it expected, and the combinations argparse cannot see are checked in `check_search`.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import NoReturn

from google.protobuf import json_format

from amcsearch.v1 import search_pb2


class UsageError(Exception):
    """A bad argument found after parsing; main prints it as one line and exits with 2."""


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (no usage block above them)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def key_values(text: str) -> tuple[str, list[str]]:
    key, values = key_value(text)
    listed = [v for v in values.split(",") if v]
    if not listed:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=V1,V2,... (no values)")
    return key, listed


def _number(text: str, clause: str) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{clause!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{clause!r}: {text!r} is not a finite number")
    return value


def number_range(text: str) -> tuple[str, float | None, float | None]:
    """KEY=LOW..HIGH, either bound may be left out (price=10.., price=..20)."""
    key, bounds = key_value(text)
    low, sep, high = bounds.partition("..")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=LOW..HIGH (e.g. price=10..20, price=10..)")
    lower, upper = _number(low, text), _number(high, text)
    if lower is None and upper is None:
        raise argparse.ArgumentTypeError(f"{text!r} has neither a low nor a high bound")
    if lower is not None and upper is not None and lower > upper:
        raise argparse.ArgumentTypeError(f"{text!r}: the low bound {lower:g} exceeds the high bound {upper:g}")
    return key, lower, upper


def weight_bounds(text: str) -> tuple[float, float]:
    """MIN..MAX of the keyword weight, each in [0, 1] (a missing bound: 0 or 1)."""
    low, sep, high = text.partition("..")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not MIN..MAX (e.g. 0.2..0.8)")
    lower, upper = _number(low, text), _number(high, text)
    lower, upper = 0.0 if lower is None else lower, 1.0 if upper is None else upper
    if not 0 <= lower <= upper <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= MIN <= MAX <= 1")
    return lower, upper


def metadata_filter_json(text: str) -> search_pb2.MetadataFilter:
    try:
        return json_format.Parse(text, search_pb2.MetadataFilter())
    except json_format.ParseError as error:
        reason = " ".join(str(error).split())
        raise argparse.ArgumentTypeError(f"not a MetadataFilter as JSON: {reason}") from None


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text}: not readable")
    return path


def existing_directory(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no such folder")
    return path


def at_least(low: int):
    """A whole number >= low (the gateway checks the upper limits, which its settings choose)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is less than {low}")
        return value

    return parse


def check_search(args: argparse.Namespace) -> None:
    """The combinations of search arguments that cannot mean anything."""
    given = [name for name, value in (("a text", args.text), ("--image", args.image), ("--id", args.id)) if value]
    if len(given) != 1:
        raise UsageError(f"give one query: a text, --image FILE or --id ID (got {' and '.join(given) or 'none'})")
    if args.modify is not None and not (args.image or args.id):
        raise UsageError("--modify changes an image: give --image FILE or --id ID with it")
    if args.cross_domain and not args.image:
        raise UsageError("--cross-domain needs the snapshot as --image FILE")
    if args.cross_domain and args.modify is not None:
        raise UsageError("--cross-domain and --modify do not combine")


def build_parser() -> Parser:
    common = Parser(add_help=False)
    common.add_argument("--addr", default=argparse.SUPPRESS, help="SearchService address, also before the command")
    common.add_argument("--collection", default=argparse.SUPPRESS, help="a named collection (default: the default one)")
    parser = Parser(prog="amcsearch", description="Index and search images with amcsearch.")
    parser.add_argument(
        "--addr",
        default=os.environ.get("SEARCH_ADDR", "127.0.0.1:50050"),
        help="SearchService address (default $SEARCH_ADDR or 127.0.0.1:50050)",
    )
    parser.add_argument("--collection", default="", help="a named collection (default: the default one)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    index = commands.add_parser("index", parents=[common], help="index every image of a folder")
    index.add_argument("directory", type=existing_directory)
    index.add_argument(
        "--batch-size", type=at_least(1), default=32, help="items a request (the gateway takes up to 64)"
    )
    index.add_argument("--skip-auto-tags", action="store_true")
    search = commands.add_parser("search", parents=[common], help="search by text, image, or image + modification")
    search.add_argument("text", nargs="?")
    search.add_argument("--image", type=existing_file, help="query image file")
    search.add_argument("--id", help="query by an indexed image id")
    search.add_argument("--modify", help="modification text for a composed query")
    search.add_argument("--top-k", type=at_least(1), default=10)
    search.add_argument("--candidates", type=at_least(0), default=0)
    search.add_argument("--keyword", action="append", help="keep results having this keyword (repeatable)")
    search.add_argument("--explain", action="store_true")
    search.add_argument("--html", type=Path, help="write a results page (attention, weights, the query)")
    search.add_argument(
        "--thumbnails",
        type=existing_directory,
        metavar="DIR",
        help="for --html: draw each result from DIR/<id>.png|.jpg|.jpeg|.webp (nothing else is read)",
    )
    search.add_argument(
        "--cross-domain",
        action="store_true",
        help="--image is a snapshot of a product: find its clean catalogue image (TagYNet + CtxYNet)",
    )
    search.add_argument("--offset", type=at_least(0), default=0, help="ranks to skip (paging)")
    search.add_argument("--where", type=key_value, action="append", metavar="KEY=VALUE", help="metadata equals")
    search.add_argument("--where-any", type=key_values, action="append", metavar="KEY=V1,V2", help="one of")
    search.add_argument("--range", type=number_range, action="append", metavar="KEY=LOW..HIGH", help="number range")
    search.add_argument("--has", action="append", metavar="KEY", help="metadata key present")
    search.add_argument(
        "--filter", type=metadata_filter_json, help="a MetadataFilter as JSON (AND/OR groups), ANDed with the above"
    )
    rerank = commands.add_parser("rerank", parents=[common], help="AMC-score given candidates (nothing is indexed)")
    rerank.add_argument("text")
    rerank.add_argument("--ids", nargs="*", help="indexed image ids")
    rerank.add_argument("--images", type=existing_file, nargs="*", help="image files, scored without indexing them")
    rerank.add_argument("--top-k", type=at_least(0), default=0)
    rerank.add_argument("--explain", action="store_true")
    for sub in (search, rerank):
        only = sub.add_mutually_exclusive_group()
        only.add_argument("--visual-only", action="store_true", help="modality bias: the visual evidence only")
        only.add_argument("--keyword-only", action="store_true", help="modality bias: the keyword evidence only")
        sub.add_argument("--keyword-scale", type=float, help="multiply the learned keyword weight")
        sub.add_argument("--keyword-weight", type=weight_bounds, metavar="MIN..MAX", help="applied keyword weight")
    batch = commands.add_parser("batch", parents=[common], help="BatchSearch: one text query per line of FILE")
    batch.add_argument("file", type=existing_file)
    batch.add_argument("--top-k", type=at_least(1), default=5)
    collections = commands.add_parser("collections", parents=[common], help="list, create or drop collections")
    collections.add_argument("action", nargs="?", choices=["list", "create", "drop"], default="list")
    collections.add_argument("name", nargs="?")
    commands.add_parser("stats", parents=[common], help="index size and model builds")
    for name in ("get", "delete"):
        sub = commands.add_parser(name, parents=[common], help=f"{name} images by id")
        sub.add_argument("ids", nargs="+")
    return parser

"""SearchService request fields -> plain values, with INVALID_ARGUMENT saying which field and why.

Kept apart from the servicer so that each conversion is one short function: collection names,
metadata filters, modality bias.
"""

from __future__ import annotations

import math
import re

from amcsearch.runtime.errors import InvalidArgument, limit, require
from amcsearch.search.records import MetadataClause, MetadataFilter
from amcsearch.v1 import search_pb2

COLLECTION_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}")
"""Collection names: valid Milvus collection names too (letters, digits, underscores)."""
COLLECTION_SEPARATOR = "__"
MAX_FILTER_DEPTH = 4
MAX_FILTER_CONDITIONS = 64
MAX_FILTER_GROUPS = 64
MAX_ANY_OF = 100
MAX_KEY_CHARS = 128
MAX_VALUE_CHARS = 4096
COMBINES = {value: name for name, value in search_pb2.MetadataFilter.Combine.items()}
MODALITIES = {value: name for name, value in search_pb2.ModalityBias.Modalities.items()}


def known(value: int, names: dict[int, str], what: str) -> None:
    """INVALID_ARGUMENT for an enum value this server does not know (proto3 lets any integer
    through: without this it would be taken as the default)."""
    allowed = ", ".join(f"{name} ({number})" for number, name in sorted(names.items()))
    require(value in names, f"{what} {value} is not a known value: {allowed}")


def collection_name(name: str, default: str, what: str = "collection") -> str:
    """The engine's name of a collection: the default one for "", else <default>__<name>."""
    if not name:
        return default
    require(
        bool(COLLECTION_PATTERN.fullmatch(name)),
        f"{what} {name[:70]!r} must be 1..63 characters of [A-Za-z0-9_] starting with a letter",
    )
    return f"{default}{COLLECTION_SEPARATOR}{name}"


def public_collection_name(internal: str, default: str) -> str | None:
    """The API name of an engine collection ("" for the default), None for someone else's."""
    if internal == default:
        return ""
    prefix = f"{default}{COLLECTION_SEPARATOR}"
    return internal[len(prefix) :] if internal.startswith(prefix) else None


def metadata_filter(message: search_pb2.MetadataFilter, what: str = "metadata_filter") -> MetadataFilter | None:
    """The filter, or None when it has no conditions at all."""
    counter = [0, 0]
    converted = _group(message, what, 1, counter)
    return converted if counter[0] else None


def _group(message: search_pb2.MetadataFilter, what: str, depth: int, counter: list[int]) -> MetadataFilter:
    """`counter`: [conditions, groups] seen so far in the whole filter."""
    require(depth <= MAX_FILTER_DEPTH, f"{what}: groups nest more than {MAX_FILTER_DEPTH} levels")
    known(message.combine, COMBINES, f"{what}.combine")
    counter[0] += len(message.conditions)
    limit(counter[0], MAX_FILTER_CONDITIONS, f"{what}: number of metadata conditions")
    counter[1] += len(message.groups)
    limit(counter[1], MAX_FILTER_GROUPS, f"{what}: number of metadata groups")
    clauses = tuple(_condition(c, f"{what}.conditions[{i}]") for i, c in enumerate(message.conditions))
    groups = tuple(_group(g, f"{what}.groups[{i}]", depth + 1, counter) for i, g in enumerate(message.groups))
    op = "or" if message.combine == search_pb2.MetadataFilter.ANY else "and"
    return MetadataFilter(op, clauses, groups)


def _condition(message: search_pb2.MetadataCondition, what: str) -> MetadataClause:
    key = message.key
    require(bool(key), f"{what}: key is empty")
    limit(len(key), MAX_KEY_CHARS, f"{what} key length", "characters")
    what = f"{what} (key {key[:40]!r})"
    test = message.WhichOneof("test")
    if test == "equals":
        limit(len(message.equals), MAX_VALUE_CHARS, f"{what} value length", "characters")
        return MetadataClause(key, "eq", (message.equals,))
    if test == "any_of":
        values = tuple(message.any_of.values)
        require(bool(values), f"{what}: any_of has no values")
        limit(len(values), MAX_ANY_OF, f"{what} number of any_of values")
        limit(max(len(v) for v in values), MAX_VALUE_CHARS, f"{what} value length", "characters")
        return MetadataClause(key, "in", values)
    if test == "exists":
        require(message.exists, f"{what}: exists must be true (to exclude a key, filter on the others)")
        return MetadataClause(key, "exists")
    if test == "range":
        return _range(key, message.range, what)
    raise InvalidArgument(f"{what}: set one of equals, any_of, range, exists")


def _range(key: str, message: search_pb2.NumberRange, what: str) -> MetadataClause:
    bounds = {name: getattr(message, name) for name in ("gt", "gte", "lt", "lte") if message.HasField(name)}
    require(bool(bounds), f"{what}: range needs at least one of gt, gte, lt, lte")
    require(not ("gt" in bounds and "gte" in bounds), f"{what}: range sets both gt and gte")
    require(not ("lt" in bounds and "lte" in bounds), f"{what}: range sets both lt and lte")
    require(all(math.isfinite(v) for v in bounds.values()), f"{what}: range bounds must be finite numbers")
    lower = bounds.get("gt", bounds.get("gte"))
    upper = bounds.get("lt", bounds.get("lte"))
    if lower is not None and upper is not None:
        require(lower <= upper, f"{what}: range is empty (lower bound {lower} > upper bound {upper})")
    return MetadataClause(
        key, "range", lower=lower, upper=upper, lower_inclusive="gt" not in bounds, upper_inclusive="lt" not in bounds
    )


def modality_bias(message: search_pb2.ModalityBias, what: str = "modality") -> tuple[float, float, float] | None:
    """(keyword scale, min, max keyword weight), or None for the learned weights unchanged."""
    known(message.modalities, MODALITIES, f"{what}.modalities")
    if message.modalities == search_pb2.ModalityBias.VISUAL_ONLY:
        return (1.0, 0.0, 0.0)
    if message.modalities == search_pb2.ModalityBias.KEYWORD_ONLY:
        return (1.0, 1.0, 1.0)
    scale = message.keyword_scale or 1.0
    low, high = message.min_keyword_weight, message.max_keyword_weight or 1.0
    require(math.isfinite(scale) and 0 <= scale <= 100, f"{what}.keyword_scale must be in [0, 100]")
    require(math.isfinite(low) and 0 <= low <= 1, f"{what}.min_keyword_weight must be in [0, 1]")
    require(math.isfinite(high) and 0 <= high <= 1, f"{what}.max_keyword_weight must be in [0, 1]")
    require(low <= high, f"{what}: min_keyword_weight {low:g} exceeds max_keyword_weight {high:g}")
    bias = (float(scale), float(low), float(high))
    return None if bias == (1.0, 0.0, 1.0) else bias

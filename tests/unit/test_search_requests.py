"""SearchService request conversion: enums a server does not know and lists past their bounds are
refused with the field named, never taken as the default (proto3 lets any integer through)."""

from __future__ import annotations

import pytest
from amcsearch.runtime.errors import InvalidArgument, ResourceExhausted
from amcsearch.search import requests
from amcsearch.v1 import search_pb2


def condition(i: int) -> search_pb2.MetadataCondition:
    return search_pb2.MetadataCondition(key=f"k{i}", equals=str(i))


def test_unknown_enum_values_are_invalid_arguments():
    with pytest.raises(InvalidArgument, match=r"modality.modalities 3 is not a known value: BOTH \(0\)"):
        requests.modality_bias(search_pb2.ModalityBias(modalities=3))
    with pytest.raises(InvalidArgument, match=r"metadata_filter.combine 7 is not a known value: ALL \(0\), ANY \(1\)"):
        requests.metadata_filter(search_pb2.MetadataFilter(combine=7, conditions=[condition(0)]))
    nested = search_pb2.MetadataFilter(groups=[search_pb2.MetadataFilter(combine=-1, conditions=[condition(0)])])
    with pytest.raises(InvalidArgument, match=r"metadata_filter.groups\[0\].combine -1"):
        requests.metadata_filter(nested)
    assert requests.modality_bias(search_pb2.ModalityBias(modalities=2)) == (1.0, 1.0, 1.0)


def test_metadata_filter_counts_are_bounded_before_conversion():
    sixty_four = search_pb2.MetadataFilter(
        conditions=[condition(i) for i in range(32)],
        groups=[search_pb2.MetadataFilter(combine=1, conditions=[condition(i) for i in range(32, 64)])],
    )
    assert requests.metadata_filter(sixty_four) is not None
    with pytest.raises(ResourceExhausted, match="number of metadata conditions is 65, the limit is 64"):
        requests.metadata_filter(search_pb2.MetadataFilter(conditions=[condition(i) for i in range(65)]))
    groups = search_pb2.MetadataFilter(conditions=[condition(0)], groups=[search_pb2.MetadataFilter()] * 65)
    with pytest.raises(ResourceExhausted, match="number of metadata groups is 65, the limit is 64"):
        requests.metadata_filter(groups)

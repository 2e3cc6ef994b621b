"""Fixtures shared by the unit tests."""

from __future__ import annotations

import asyncio

import pytest
from amcsearch.search.embedded_index import EmbeddedIndex


@pytest.fixture
def store(tmp_path):
    """An embedded index engine on a fresh store file (HNSW from 300 rows), closed afterwards."""

    async def build():
        index = EmbeddedIndex(tmp_path / "index.sqlite", "images", hnsw_min_rows=300)
        await index.open()
        return index

    index = asyncio.run(build())
    yield index
    asyncio.run(index.close())

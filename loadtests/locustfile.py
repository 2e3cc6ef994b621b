"""Load profiles for amcsearch: text, image and composed search, and indexing, over gRPC.

    python -m loadtests.run                      # prepares data, starts a stack, runs headless
    locust -f loadtests/locustfile.py --host 127.0.0.1:50050   # with LOADTEST_DATA prepared

The mix (by users): text search 6, image search 2 (by indexed id 3 : by new bytes 1), composed
search 2, filtered text search 2 (a metadata filter on one shop of ten and a price range, as a
marketplace backend sends), batched text search 1 (BatchSearch of 8 queries), and one indexing
user. Queries follow a Zipf law over fixed pools (loadtests/data.py),
so popular queries repeat and the query cache matters. Wait times: LOADTEST_WAIT_MIN and
LOADTEST_WAIT_MAX seconds (0.2 and 1.0) between a searcher's calls.
"""

from __future__ import annotations

import itertools
import os
import random

from amcsearch.v1 import search_pb2, search_pb2_grpc
from locust import between, task

from loadtests.auth import write_metadata
from loadtests.data import LoadData, Zipf, data_path
from loadtests.grpc_user import GrpcUser

DATA = LoadData.load(data_path())
WAIT = between(float(os.environ.get("LOADTEST_WAIT_MIN", "0.2")), float(os.environ.get("LOADTEST_WAIT_MAX", "1.0")))
INDEX_BATCH = 4
BATCH_QUERIES = 8
_user_seeds = itertools.count(int(os.environ.get("LOADTEST_SEED", "0")))


class SearchUser(GrpcUser):
    abstract = True
    stub_class = search_pb2_grpc.SearchServiceStub
    wait_time = WAIT

    def on_start(self) -> None:
        self.rng = random.Random(next(_user_seeds))
        self.texts = Zipf(DATA.texts, rng=self.rng)
        self.modifications = Zipf(DATA.modifications, rng=self.rng)
        self.images = Zipf(DATA.seeded, rng=self.rng)

    def search(self, name: str, **query) -> None:
        self.call("Search", search_pb2.SearchRequest(top_k=10, explain=self.rng.random() < 0.2, **query), name)


class TextSearchUser(SearchUser):
    weight = 6

    @task
    def text(self) -> None:
        self.search("Search text", text=self.texts.draw())


class ImageSearchUser(SearchUser):
    weight = 2

    @task(3)
    def by_indexed_id(self) -> None:
        self.search("Search image id", image=search_pb2.ImageQuery(id=self.images.draw().id))

    @task(1)
    def by_bytes(self) -> None:
        self.search("Search image bytes", image=search_pb2.ImageQuery(data=self.images.draw().png))


class ComposedSearchUser(SearchUser):
    weight = 2

    @task
    def composed(self) -> None:
        query = search_pb2.ComposedQuery(
            image=search_pb2.ImageQuery(id=self.images.draw().id), modification=self.modifications.draw()
        )
        self.search("Search composed", composed=query)


class FilteredSearchUser(SearchUser):
    """Text search within one shop (10% of the seeded images) and a price range."""

    weight = 2

    @task
    def filtered(self) -> None:
        shop = f"shop-{self.rng.randrange(10)}"
        metadata_filter = search_pb2.MetadataFilter(
            conditions=[
                search_pb2.MetadataCondition(key="shop", equals=shop),
                search_pb2.MetadataCondition(key="price", range=search_pb2.NumberRange(lte=50)),
            ]
        )
        self.search("Search text filtered", text=self.texts.draw(), metadata_filter=metadata_filter)


class BatchSearchUser(SearchUser):
    """BatchSearch of BATCH_QUERIES text queries in one call."""

    weight = 1

    @task
    def batch(self) -> None:
        searches = [search_pb2.SearchRequest(text=self.texts.draw(), top_k=10) for _ in range(BATCH_QUERIES)]
        self.call("BatchSearch", search_pb2.BatchSearchRequest(searches=searches), f"BatchSearch {BATCH_QUERIES}")


class IndexUser(GrpcUser):
    """One user indexes batches, cycling through a fixed pool of ids (upserts keep the index bounded)."""

    fixed_count = 1
    stub_class = search_pb2_grpc.SearchServiceStub
    wait_time = between(1.0, 3.0)

    def on_start(self) -> None:
        self.batches = itertools.cycle(
            [DATA.to_index[i : i + INDEX_BATCH] for i in range(0, len(DATA.to_index), INDEX_BATCH)]
        )

    @task
    def index(self) -> None:
        items = [search_pb2.ImageItem(id=i, image=p, title="load test") for i, p in next(self.batches)]
        self.call("Index", search_pb2.IndexRequest(items=items), "Index", write_metadata())

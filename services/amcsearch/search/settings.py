"""SearchService settings: SEARCH_* plus INDEX_* (the index engine) and the services' addresses."""

from __future__ import annotations

from dataclasses import dataclass

from amcsearch.runtime.settings import (
    ClientTLSSettings,
    ImageLimits,
    ServerSettings,
    SettingsError,
    TritonSettings,
    env,
    from_env,
    nested,
)

PREFIX = "SEARCH"


@dataclass(frozen=True)
class SearchSettings:
    server: ServerSettings = nested(ServerSettings)
    images: ImageLimits = nested(ImageLimits)
    triton: TritonSettings = nested(TritonSettings)
    """Read for Stats only: the build_id of every model (the gateway never infers)."""
    """SEARCH_MAX_IMAGE_BYTES, _MAX_IMAGE_PIXELS, ...: the gateway decodes Index and Rerank images
    once (with the decode budget) and sends the pixels to FeatureExtractor and KeywordTagger."""
    client_tls: ClientTLSSettings = nested(ClientTLSSettings)
    index_uri: str = env("INDEX_URI", default="var/index.sqlite")
    """A file path: the embedded engine (SQLite + HNSW in this process); http://host:19530: a
    Milvus server or cluster. (Not named MILVUS_URI: pymilvus reads that variable itself.)"""
    index_token: str = env("INDEX_TOKEN", default="")
    """Milvus credentials ("user:password" or an API key) for a Milvus server."""
    collection: str = env("INDEX_COLLECTION", default="amcsearch_images")
    """The default collection (requests that name none)."""
    hnsw_min_rows: int = env("INDEX_HNSW_MIN_ROWS", default=20_000)
    """Embedded engine: exact search below this many images in a collection, HNSW from here on."""
    ef_search: int = env("INDEX_EF_SEARCH", default=256)
    """HNSW search breadth (both engines): higher is better recall and slower."""
    read_cache_mib: int = env("INDEX_READ_CACHE_MIB", default=128)
    """Embedded engine: SQLite page cache of the read connection (candidate columns), MiB."""
    feature_cache_mib: int = env("INDEX_FEATURE_CACHE_MIB", default=1024)
    """Embedded engine: candidates' packed columns kept in memory (loaded in the background at
    start, and on first read), MiB: about 5 KB an image, so 1024 holds ~210,000 images; 0 reads
    every Search's from SQLite."""
    reads_on_loop: bool = env("INDEX_READS_ON_LOOP", default=True)
    """Embedded engine: run reads on the event loop (fewer thread hand-offs) or in a reader thread."""
    rescorer_max_candidates: int = env("ATTENTION_RESCORER_MAX_CANDIDATES", default=8192)
    """AttentionRescorer's limit per Rescore (its own setting, read here too): larger batches of
    candidates go in several calls."""
    query_encoder_max_batch: int = env("QUERY_ENCODER_MAX_BATCH", default=256)
    """Texts per Encode call (QueryEncoder's own limit): longer lists go in several calls."""
    keyword_tagger_max_batch: int = env("KEYWORD_TAGGER_MAX_BATCH", default=64)
    """Images per Tag call (KeywordTagger's own limit, read here too)."""
    feature_extractor_max_batch: int = env("FEATURE_EXTRACTOR_MAX_BATCH", default=64)
    """Images per Extract call (FeatureExtractor's own limit, read here too): Rerank's inline
    images go in calls of at most the smaller of the two."""
    query_encoder_addr: str = env("QUERY_ENCODER_ADDR", default="127.0.0.1:50051")
    keyword_tagger_addr: str = env("KEYWORD_TAGGER_ADDR", default="127.0.0.1:50052")
    feature_extractor_addr: str = env("FEATURE_EXTRACTOR_ADDR", default="127.0.0.1:50053")
    attention_rescorer_addr: str = env("ATTENTION_RESCORER_ADDR", default="127.0.0.1:50054")
    default_candidates: int = 100
    """ANN candidates rescored per text search when the request leaves it 0."""
    max_candidates: int = 500
    max_top_k: int = 100
    max_index_batch: int = 64
    max_get_ids: int = 1000
    max_text_chars: int = 2000
    max_tags: int = 64
    max_title_chars: int = 1024
    max_metadata_keys: int = 64
    """Metadata per item: keys (each at most 128 characters, values at most 4,096) and bytes in all."""
    max_metadata_bytes: int = 16 * 1024
    candidate_source: str = "hybrid"
    """Where text searches get their candidates when the request leaves it unset: vector,
    keyword or hybrid (benchmarks/QUALITY.md compares them)."""
    keyword_share: str = "full"
    """How many candidates the keyword route gives (embedded engine): full (as many as asked) or
    coverage (that many times the share of the query the collection's keywords know, so the
    vector route fills the rest; keyword_index.py KeywordIndex.coverage, benchmarks/LAYOUT.md)."""
    hybrid_merge: str = "rrf"
    """How hybrid merges the two lists: rrf (reciprocal rank fusion, N candidates) or union (up to 2N)."""
    rescore_budget_share: float = 0.5
    """Share of a Search's remaining deadline for the rescore stage; past it the Search answers
    in ANN order, flagged as degraded."""
    max_batch_searches: int = 32
    """Searches per BatchSearch."""
    coalesce_max_batch: int = 16
    """Concurrent Search RPCs answered together at most (coalescer.py); 1 answers each alone."""
    coalesce_in_flight: int = 2
    """Batches of Searches running at once: a Search arriving while this many run waits for one
    to finish and joins the next batch with the others that arrived meanwhile."""
    max_rerank_candidates: int = 200
    """Candidates per Rerank (indexed ids and inline images)."""
    max_keyword_chars: int = 64
    """Characters per tag or keyword (after normalisation)."""
    max_keyword_filter: int = 64
    """Keywords per keyword_filter (an image holds at most max_tags keywords, so more can never match)."""
    read_token: str = ""
    """SEARCH_READ_TOKEN: when set, Search, BatchSearch, Rerank, Get, Stats and ListCollections
    need 'authorization: Bearer <read token or write token>'."""
    auth_token: str = ""
    """SEARCH_AUTH_TOKEN: when set, Index and Delete need 'authorization: Bearer <token>'."""
    tagger_threshold: float = 0.5
    """Automatic keywords below this probability are not stored."""

    def validate(self) -> None:
        if not 1 <= self.default_candidates <= self.max_candidates:
            raise SettingsError("SEARCH_DEFAULT_CANDIDATES must be in 1..SEARCH_MAX_CANDIDATES")
        if self.max_candidates > self.rescorer_max_candidates:
            raise SettingsError(
                "SEARCH_MAX_CANDIDATES must not exceed ATTENTION_RESCORER_MAX_CANDIDATES "
                "(one search's candidates go to the rescorer in one call)"
            )
        if self.candidate_source not in ("vector", "keyword", "hybrid"):
            raise SettingsError("SEARCH_CANDIDATE_SOURCE must be vector, keyword or hybrid")
        if self.keyword_share not in ("full", "coverage"):
            raise SettingsError("SEARCH_KEYWORD_SHARE must be full or coverage")
        if self.hybrid_merge not in ("rrf", "union"):
            raise SettingsError("SEARCH_HYBRID_MERGE must be rrf or union")
        if not 1 <= self.coalesce_max_batch <= self.max_batch_searches:
            raise SettingsError("SEARCH_COALESCE_MAX_BATCH must be in 1..SEARCH_MAX_BATCH_SEARCHES")
        if self.coalesce_in_flight < 1:
            raise SettingsError("SEARCH_COALESCE_IN_FLIGHT must be 1 or more")
        if self.feature_cache_mib < 0:
            raise SettingsError("INDEX_FEATURE_CACHE_MIB must be 0 (off) or more")
        if not 0 < self.rescore_budget_share <= 1:
            raise SettingsError("SEARCH_RESCORE_BUDGET_SHARE must be in (0, 1]")
        if self.max_index_batch > self.analyse_max_batch:
            raise SettingsError(
                "SEARCH_MAX_INDEX_BATCH must not exceed KEYWORD_TAGGER_MAX_BATCH and FEATURE_EXTRACTOR_MAX_BATCH "
                "(an Index batch goes to each in one call)"
            )
        if self.max_rerank_candidates > self.rescorer_max_candidates:
            raise SettingsError("SEARCH_MAX_RERANK_CANDIDATES must not exceed ATTENTION_RESCORER_MAX_CANDIDATES")

    @property
    def analyse_max_batch(self) -> int:
        """Images per KeywordTagger and FeatureExtractor call."""
        return min(self.keyword_tagger_max_batch, self.feature_extractor_max_batch)


def load_settings() -> SearchSettings:
    return from_env(SearchSettings, PREFIX)

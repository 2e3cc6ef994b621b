"""The tensor contract of the Triton models: one torch-free source for names, shapes and dtypes.

Services build their requests from it, `make models` exports with it (models/export), and
model_repository/README.md's table is generated from it (tests/unit/test_contract.py fails when
they disagree). A dimension of -1 is variable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

EMBEDDING_DIM = 384
REGION_GRID = 6
REGION_COUNT = REGION_GRID * REGION_GRID
REGION_DIM = 128
TEXT_TOKENS = 32
"""Longest tokenised text; requests are padded to the batch's longest (TOKEN_BUCKET multiple)."""
TOKEN_BUCKET = 8
KEYWORD_SLOTS = 32
IMAGE_SIZE = 128
YNET_DIM = 64
"""Channels C of the cross-domain (street-to-shop) models' vectors and maps."""
CROSS_DOMAIN_TAG_WEIGHT = 1.0
"""The cross-domain re-rank sorts TagYNet's candidates by d_ctx + w * d_tag: CtxYNet's squared
distance plus w times TagYNet's (squared distances of unit vectors). With w = 1 that is the
squared distance between the two nets' vectors concatenated, and the score, 1 - d / (2 (1 + w)),
the mean of the two cosines. Chosen on the validation products (models/train/ynet.py): w in
(0, 0.5, 1, 2, 4) gave top-1 0.184, 0.359, 0.381, 0.376, 0.364 (demo size, 16 street shots per
train product; 0.168, 0.226, 0.242, 0.228 for w = 0, 0.5, 1, 2 at 4 shots); CtxYNet alone is
w = 0."""

TEXT_ENCODER = "text_encoder"
IMAGE_ENCODER = "image_encoder"
KEYWORD_TAGGER = "keyword_tagger"
AMC_RESCORER = "amc_rescorer"
COMPOSER = "composer"
YNET_SHOP = "ynet_shop"
YNET_STREET = "ynet_street"
CTX_YNET = "ctx_ynet"

EMBEDDING_OUT = "embedding__0"
TOKENS_OUT = "tokens__1"
REGIONS_OUT = "regions__1"
PROBABILITIES_OUT = "probabilities__0"
PLACEMENTS_OUT = "placements__1"
SCORE_OUT = "score__0"
MODALITY_WEIGHTS_OUT = "modality_weights__1"
REGION_ATTENTION_OUT = "region_attention__2"
KEYWORD_ATTENTION_OUT = "keyword_attention__3"
ATTENTION_OUT = "attention__1"
CONTEXT_OUT = "context__2"
LOCATIONS_OUT = "locations__1"
DISTANCE_OUT = "distance__0"
LEARNED_WEIGHTS_OUT = "learned_weights__4"
NO_BIAS = (1.0, 0.0, 1.0)
"""amc_rescorer's modality_bias row that keeps the learned weights."""

DTYPES = ("FP32", "FP16", "INT64", "INT32", "INT8", "UINT8", "BOOL")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output. With a batched model, dims exclude the batch dimension."""

    name: str
    dtype: str
    dims: tuple[int, ...]
    doc: str = ""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"tensor {self.name}: dtype {self.dtype} is not one of {DTYPES}")


@dataclass(frozen=True)
class ModelSpec:
    """A model's inputs and outputs. max_batch_size 0 means no batch dimension and no dynamic
    batching: the request's shapes are the model's (amc_rescorer, whose inputs have different
    leading dimensions)."""

    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int = 64
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 100
    """Dynamic batching: how long a request may wait for others. Requests that arrive while the
    model is busy are batched anyway; a long delay only slows a lone request."""
    cpu_instances: int = 1
    labels: dict[str, str] = field(default_factory=dict)
    """Output name -> label file name (Triton's label_filename), e.g. keywords.txt."""
    doc: str = ""

    def __post_init__(self) -> None:
        for index, tensor in enumerate(self.outputs):
            if not tensor.name.endswith(f"__{index}"):
                raise ValueError(f"output {tensor.name} must be named <name>__{index} (libtorch rule)")

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0


def model_specs(vocab_size: int, placement_size: int = -1) -> dict[str, ModelSpec]:
    """The eight models; `vocab_size` is the keyword tagger's vocabulary (keywords.txt), which is
    also ynet_shop's tag vocabulary (tags.txt); `placement_size` the lines of its placements.txt
    (-1: any)."""
    emb, regions, slots = EMBEDDING_DIM, REGION_COUNT, KEYWORD_SLOTS
    image = TensorSpec("image", "UINT8", (IMAGE_SIZE, IMAGE_SIZE, 3), "RGB, normalised inside the model")
    return {
        TEXT_ENCODER: ModelSpec(
            TEXT_ENCODER,
            inputs=[
                TensorSpec("input_ids", "INT64", (-1,), f"WordPiece ids, at most {TEXT_TOKENS}"),
                TensorSpec("attention_mask", "INT64", (-1,), "1 = token, 0 = padding"),
            ],
            outputs=[
                TensorSpec(EMBEDDING_OUT, "FP32", (emb,), "mean-pooled, L2-normalised"),
                TensorSpec(TOKENS_OUT, "FP32", (-1, emb), "last hidden states"),
            ],
            doc="all-MiniLM-L6-v2; sequences padded to the batch's longest",
        ),
        IMAGE_ENCODER: ModelSpec(
            IMAGE_ENCODER,
            inputs=[image],
            outputs=[
                TensorSpec(EMBEDDING_OUT, "FP32", (emb,), "L2-normalised"),
                TensorSpec(REGIONS_OUT, "FP32", (regions, REGION_DIM), "row-major 6 x 6 grid"),
            ],
        ),
        KEYWORD_TAGGER: ModelSpec(
            KEYWORD_TAGGER,
            inputs=[image],
            outputs=[
                TensorSpec(PROBABILITIES_OUT, "FP32", (vocab_size,), "V = lines of keywords.txt"),
                TensorSpec(PLACEMENTS_OUT, "FP32", (placement_size,), "P = lines of placements.txt: red@top-left, ..."),
            ],
            labels={PROBABILITIES_OUT: "keywords.txt", PLACEMENTS_OUT: "placements.txt"},
        ),
        AMC_RESCORER: ModelSpec(
            AMC_RESCORER,
            inputs=[
                TensorSpec("query", "FP32", (-1, emb), "Q query embeddings"),
                TensorSpec("query_index", "INT32", (-1,), "per candidate: its query's row"),
                TensorSpec("regions", "INT8", (-1, regions, REGION_DIM), "N candidates' region grids"),
                TensorSpec("region_scales", "FP32", (-1, regions), "x = regions * scale, per region"),
                TensorSpec("keyword_table", "FP16", (-1, emb), "U distinct keyword vectors"),
                TensorSpec("keyword_index", "INT32", (-1, slots), "per slot: a row of keyword_table"),
                TensorSpec("keyword_mask", "FP32", (-1, slots), "confidence, 0 = empty slot"),
                TensorSpec("modality_bias", "FP32", (-1, 3), "per query: keyword scale, min, max keyword weight"),
            ],
            outputs=[
                TensorSpec(SCORE_OUT, "FP32", (-1, 1), "with the applied weights"),
                TensorSpec(MODALITY_WEIGHTS_OUT, "FP32", (-1, 2), "applied: visual, keyword"),
                TensorSpec(REGION_ATTENTION_OUT, "FP32", (-1, regions)),
                TensorSpec(KEYWORD_ATTENTION_OUT, "FP32", (-1, slots)),
                TensorSpec(LEARNED_WEIGHTS_OUT, "FP32", (-1, 2), "learned, before the bias"),
            ],
            max_batch_size=0,
            doc="one request scores N candidates of Q queries; the query is broadcast inside",
        ),
        COMPOSER: ModelSpec(
            COMPOSER,
            inputs=[
                TensorSpec("image_embedding", "FP32", (emb,)),
                TensorSpec("regions", "FP32", (regions, REGION_DIM)),
                TensorSpec("text_embedding", "FP32", (emb,)),
                TensorSpec("tokens", "FP32", (-1, emb)),
                TensorSpec("token_mask", "FP32", (-1,)),
            ],
            outputs=[TensorSpec(EMBEDDING_OUT, "FP32", (emb,), "L2-normalised")],
        ),
        YNET_SHOP: ModelSpec(
            YNET_SHOP,
            inputs=[image, TensorSpec("tags", "FP32", (vocab_size,), "multi-hot, V = lines of tags.txt")],
            outputs=[
                TensorSpec(EMBEDDING_OUT, "FP32", (YNET_DIM,), "TagYNet, tag-attended, L2-normalised"),
                TensorSpec(ATTENTION_OUT, "FP32", (regions,), "tag attention over the 6 x 6 grid"),
                TensorSpec(CONTEXT_OUT, "FP32", (YNET_DIM,), "CtxYNet context, stored per item"),
            ],
            doc="index time, per shop image with its tags",
        ),
        YNET_STREET: ModelSpec(
            YNET_STREET,
            inputs=[image],
            outputs=[
                TensorSpec(EMBEDDING_OUT, "FP32", (YNET_DIM,), "TagYNet, average-pooled, L2-normalised"),
                TensorSpec(LOCATIONS_OUT, "FP32", (regions, YNET_DIM), "CtxYNet street map, row-major"),
            ],
            doc="query time, per street image",
        ),
        CTX_YNET: ModelSpec(
            CTX_YNET,
            inputs=[
                TensorSpec("locations", "FP32", (-1, regions, YNET_DIM), "Q street maps"),
                TensorSpec("query_index", "INT32", (-1,), "per candidate: its query's row"),
                TensorSpec("context", "FP32", (-1, YNET_DIM), "N candidates' contexts"),
            ],
            outputs=[
                TensorSpec(DISTANCE_OUT, "FP32", (-1,), "squared L2, smaller is closer"),
                TensorSpec(ATTENTION_OUT, "FP32", (-1, regions), "street attention per candidate"),
            ],
            max_batch_size=0,
            doc="re-ranks the N candidates of Q street queries (TagYNet's top 100)",
        ),
    }


def contract_table() -> str:
    """The markdown table of model_repository/README.md."""

    def dims(spec: ModelSpec, tensor: TensorSpec) -> str:
        shown = (["B"] if spec.batched else []) + ["*" if d == -1 else str(d) for d in tensor.dims]
        return "[" + ", ".join(shown) + "]"

    def cell(spec: ModelSpec, tensors: list[TensorSpec]) -> str:
        return "<br>".join(f"`{t.name}` {t.dtype} {dims(spec, t)}" + (f" {t.doc}" if t.doc else "") for t in tensors)

    rows = ["| model | batching | inputs | outputs |", "| --- | --- | --- | --- |"]
    for spec in model_specs(-1).values():
        batching = f"dynamic, max {spec.max_batch_size}" if spec.batched else "none: one request, explicit shapes"
        rows.append(f"| {spec.name} | {batching} | {cell(spec, spec.inputs)} | {cell(spec, spec.outputs)} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(contract_table())

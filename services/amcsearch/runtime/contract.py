"""Names and shapes of the Triton models, as model_repository/README.md specifies them."""

EMBEDDING_DIM = 384
REGION_GRID = 6
REGION_COUNT = REGION_GRID * REGION_GRID
REGION_DIM = 128
TEXT_TOKENS = 32
KEYWORD_SLOTS = 32

TEXT_ENCODER = "text_encoder"
IMAGE_ENCODER = "image_encoder"
KEYWORD_TAGGER = "keyword_tagger"
AMC_RESCORER = "amc_rescorer"
COMPOSER = "composer"

EMBEDDING_OUT = "embedding__0"
TOKENS_OUT = "tokens__1"
REGIONS_OUT = "regions__1"
PROBABILITIES_OUT = "probabilities__0"
SCORE_OUT = "score__0"
MODALITY_WEIGHTS_OUT = "modality_weights__1"
REGION_ATTENTION_OUT = "region_attention__2"
KEYWORD_ATTENTION_OUT = "keyword_attention__3"

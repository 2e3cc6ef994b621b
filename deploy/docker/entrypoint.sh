#!/bin/sh
# The image's entrypoint: the first argument names the service (search, query_encoder,
# keyword_tagger, feature_extractor, attention_rescorer; dashes work too); anything else runs as
# a command (`amcsearch stats`, `python -m ...`). The ports and the 0.0.0.0 default come from
# services/amcsearch/ports.py, through amcsearch/container.py.
set -eu
exec python -m amcsearch.container "$@"

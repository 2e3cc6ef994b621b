#!/bin/sh
# The image's entrypoint: the first argument names the service (search, query_encoder,
# keyword_tagger, feature_extractor, attention_rescorer; dashes work too); anything else runs as
# a command (`amcsearch stats`, `python -m ...`).
#
# Inside a container, loopback is unreachable from other containers and port 0 means "a free
# port", so unless the environment says otherwise a service binds 0.0.0.0 on the launcher's
# default ports (services/amcsearch/launcher.py SERVICES).
set -eu

service="${1:-search}"
case "$service" in
  search)                                 module=search;             prefix=SEARCH;             port=50050; metrics=9100 ;;
  query_encoder|query-encoder)            module=query_encoder;      prefix=QUERY_ENCODER;      port=50051; metrics=9101 ;;
  keyword_tagger|keyword-tagger)          module=keyword_tagger;     prefix=KEYWORD_TAGGER;     port=50052; metrics=9102 ;;
  feature_extractor|feature-extractor)    module=feature_extractor;  prefix=FEATURE_EXTRACTOR;  port=50053; metrics=9103 ;;
  attention_rescorer|attention-rescorer)  module=attention_rescorer; prefix=ATTENTION_RESCORER; port=50054; metrics=9104 ;;
  *) exec "$@" ;;
esac
[ "$#" -gt 0 ] && shift

export_default() {
  eval "current=\${$1:-}"
  if [ -z "$current" ]; then export "$1=$2"; fi
}
export_default "${prefix}_HOST" 0.0.0.0
export_default "${prefix}_PORT" "$port"
export_default "${prefix}_METRICS_PORT" "$metrics"
export AMCSEARCH_SERVICE="$module"
exec python -m "amcsearch.${module}" "$@"

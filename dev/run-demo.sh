#!/usr/bin/env bash
# `make run`: the local broker, the topics, one worker and demo traffic, with a live tail of
# stage changes. Ctrl-C stops the worker and the demo (the broker keeps running: `make kafka-stop`).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
port="${KAFKA_PORT:-9092}"
export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:$port}"
# MODEL=journey (make run MODEL=journey): config/models/demo-journey.yaml and journey traffic
model="${MODEL:-}"
demo_args=()
if [[ -n "$model" ]]; then
  [[ -f "config/models/demo-$model.yaml" ]] || { echo "run: no config/models/demo-$model.yaml" >&2; exit 2; }
  export ENGAGEMENT_INDEX_MODEL_FILE="config/models/demo-$model.yaml"
  if [[ "$model" == journey ]]; then demo_args+=(--journey); fi
fi
export ENGAGEMENT_INDEX_MODEL_FILE="${ENGAGEMENT_INDEX_MODEL_FILE:-config/models/demo.yaml}"
export ENGAGEMENT_INDEX_DATA_DIR="${ENGAGEMENT_INDEX_DATA_DIR:-var/demo-worker}"
web_port="${ENGAGEMENT_INDEX_WEB_PORT:-6066}"
mkdir -p var
# the query API needs a bearer token: make one for this run, readable for the demo tenant only
# (the worker is given its digest; ENGAGEMENT_INDEX_API_AUTH=false turns auth off instead)
api_token="${DEMO_API_TOKEN:-demo-$(head -c 24 /dev/urandom | base64 | tr -d '+/=\n')}"
export ENGAGEMENT_INDEX_API_TOKENS="{\"sha256:$(printf %s "$api_token" | sha256sum | cut -d' ' -f1)\": [\"demo\"]}"

dev/kafka/kafka.sh start
"$bin/engagement-index" topics create

worker_pid=""
cleanup() {
  trap - INT TERM EXIT
  if [[ -n "$worker_pid" ]] && kill -0 "$worker_pid" 2>/dev/null; then
    echo "run: stopping the worker (graceful: finishes the batch, flushes, commits)"
    kill -TERM "$worker_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$worker_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$worker_pid" 2>/dev/null || true
  fi
  echo "run: stopped. The broker is still running on $KAFKA_BOOTSTRAP_SERVERS ('make kafka-stop')."
}
trap cleanup INT TERM EXIT

echo "run: starting the worker (log: var/worker.log, model: $ENGAGEMENT_INDEX_MODEL_FILE)"
"$bin/engagement-index" worker --no-create-topics --web-port "$web_port" > var/worker.log 2>&1 &
worker_pid=$!
for _ in $(seq 1 300); do
  if curl -fsS "http://127.0.0.1:$web_port/readyz" >/dev/null 2>&1; then break; fi
  kill -0 "$worker_pid" 2>/dev/null || { echo "run: the worker exited; see var/worker.log" >&2; tail -20 var/worker.log >&2; exit 1; }
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$web_port/readyz" >/dev/null || { echo "run: the worker is not ready after 60s; see var/worker.log" >&2; exit 1; }

cat <<MSG

  Engagement Index is running.
    console       http://127.0.0.1:$web_port/console   (tenant: demo, token: $api_token)
    contact API   curl -H "Authorization: Bearer $api_token" \\
                    http://127.0.0.1:$web_port/v1/contacts/demo/demo-0001
    metrics       http://127.0.0.1:$web_port/metrics
    health        http://127.0.0.1:$web_port/healthz   readiness http://127.0.0.1:$web_port/readyz
    topics        engagement.stage-changes, engagement.scores, engagement.dlq on $KAFKA_BOOTSTRAP_SERVERS
  Demo traffic for 300 contacts starts now; stage changes appear below (decay ones within minutes).
  Press Ctrl-C to stop.

MSG
"$bin/engagement-index" demo ${demo_args[@]+"${demo_args[@]}"} "$@"

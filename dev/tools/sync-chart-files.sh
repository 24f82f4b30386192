#!/usr/bin/env bash
# Copy the files the Helm chart ships into helm/engagement-index/files/ (Helm can only read
# files inside the chart). Run after changing any source below; tests/deploy fails on drift.
#
#   streams/topology.yaml                -> files/topology.yaml
#   config/models/*.yaml                 -> files/models/
#   config/collector/*.yaml              -> files/collector/
#   deploy/prometheus/alerts.yaml        -> files/prometheus/alerts.yaml
#   deploy/grafana/engagement-index.json -> files/grafana/engagement-index.json
#
# --check: change nothing, list the differences and exit 1 if there are any.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="$ROOT/helm/engagement-index/files"
CHECK=0
[[ "${1:-}" == "--check" ]] && CHECK=1

# destination (relative to files/) and source (relative to the repository), one pair a line
pairs() {
    echo "topology.yaml streams/topology.yaml"
    local f
    for f in "$ROOT"/config/models/*.yaml; do echo "models/$(basename "$f") config/models/$(basename "$f")"; done
    for f in "$ROOT"/config/collector/*.yaml; do
        [[ "$f" == *.example.yaml ]] && continue
        [[ -e "$f" ]] && echo "collector/$(basename "$f") config/collector/$(basename "$f")"
    done
    echo "prometheus/alerts.yaml deploy/prometheus/alerts.yaml"
    echo "grafana/engagement-index.json deploy/grafana/engagement-index.json"
}

drift=0
declare -A wanted=()
while read -r dest src; do
    wanted["$dest"]=1
    if ! cmp -s "$ROOT/$src" "$DEST/$dest"; then
        drift=1
        if [[ "$CHECK" == 1 ]]; then
            echo "differs: helm/engagement-index/files/$dest (from $src)"
        else
            mkdir -p "$(dirname "$DEST/$dest")"
            cp "$ROOT/$src" "$DEST/$dest"
            echo "copied $src -> helm/engagement-index/files/$dest"
        fi
    fi
done < <(pairs)

# copies whose source is gone (a model file removed)
while IFS= read -r -d '' file; do
    rel="${file#"$DEST"/}"
    [[ -n "${wanted[$rel]:-}" ]] && continue
    drift=1
    if [[ "$CHECK" == 1 ]]; then
        echo "stale: helm/engagement-index/files/$rel (no source)"
    else
        rm -f "$file"
        echo "removed stale helm/engagement-index/files/$rel"
    fi
done < <(find "$DEST" -type f -print0 2>/dev/null)

if [[ "$CHECK" == 1 && "$drift" == 1 ]]; then
    echo "chart files are out of date: run dev/tools/sync-chart-files.sh" >&2
    exit 1
fi
[[ "$drift" == 0 ]] && echo "chart files up to date"
exit 0

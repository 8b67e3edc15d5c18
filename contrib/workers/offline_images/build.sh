#!/usr/bin/env bash
# Build, from Debian's packages, stand-ins for the images docker/compose.workers.yml pulls
# from registries (python:3.11-slim, postgres:16, redis:7, nginx, MinIO and mc), for a
# machine with a Docker engine but no route to Docker Hub or quay.io. Needs root (for
# debootstrap) and a Debian mirror. compose.offline.yml points the stack at them:
#
#   contrib/workers/offline_images/build.sh
#   docker compose -f docker/compose.workers.yml \
#       -f contrib/workers/offline_images/compose.offline.yml up -d --build
#
# The stand-ins keep the official images' contracts that the compose files use (see each
# Dockerfile), with Debian bookworm's versions: PostgreSQL 15, Redis 7.0, nginx 1.22,
# Python 3.11; moto's S3 server stands in for MinIO (in memory, any access key).
#
# Environment: MIRROR [http://deb.debian.org/debian], MOTO_VERSION [the test venv's].
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
P=parley-offline
if [[ -z ${MOTO_VERSION:-} ]]; then
    MOTO_VERSION=$("$REPO/.venv/bin/python" -c 'import moto; print(moto.__version__)' 2>/dev/null \
                   || echo 5.1.18)
fi

if ! docker image inspect "$P/debian:bookworm" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || { echo "missing: debootstrap (apt-get install debootstrap)" >&2; exit 2; }
    root=$(mktemp -d /tmp/parley-rootfs.XXXXXX)
    chmod 0755 "$root"   # the image's /, which every user must traverse
    trap 'rm -rf "$root" "$root.log"' EXIT
    echo "== debootstrap bookworm (minbase) from $MIRROR"
    debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$root.log" 2>&1 \
        || { tail -20 "$root.log"; exit 1; }
    rm -f "$root.log"
    printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$MIRROR" "$MIRROR" \
        >"$root/etc/apt/sources.list"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | docker import - "$P/debian:bookworm" >/dev/null
    rm -rf "$root"
fi
echo "ok   $P/debian:bookworm"

cp /etc/ssl/certs/ca-certificates.crt "$HERE/python/ca-certificates.crt"
trap 'rm -f "$HERE/python/ca-certificates.crt"' EXIT
build() {  # TAG DIR [BUILD-ARG...]
    local tag=$1 dir=$2; shift 2
    local args=()
    for a in "$@"; do args+=(--build-arg "$a"); done
    docker build -q "${args[@]}" -t "$P/$tag" "$HERE/$dir" >/dev/null
    echo "ok   $P/$tag"
}
build python:3.11 python
build postgres:15 postgres
build redis:7 redis
build nginx:1.22 nginx
build mc:bookworm mc
build s3:moto s3 "MOTO_VERSION=$MOTO_VERSION"

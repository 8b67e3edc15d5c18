#!/usr/bin/env bash
# An operator's trial with containers: a SQLite deployment running in Parley's image is
# filled with users, rooms, messages (encrypted ones with matrix-nio), media, profiles and
# account data, then moved into docker/compose.workers.yml (PostgreSQL, Redis, MinIO,
# nginx, main + 2 client readers + 2 event persisters) by the steps of docker/README.md
# "Bringing an existing deployment into the stack", run as written. Every check prints its
# HTTP answer; the first failed one stops the trial with exit status 1. The containers,
# volumes and network it made are removed on exit (KEEP=1 keeps them and the temp dir).
# See contrib/workers/README.md.
#
#   contrib/workers/compose_trial.sh            # from the repository root
#
# Environment (defaults in brackets):
#   OFFLINE     1: the images of contrib/workers/offline_images (built from Debian's
#               packages when missing), for a machine that cannot pull from Docker Hub or
#               quay.io; 0: the stack's own images; auto: 1 when postgres:16 cannot be
#               pulled [auto]
#   BASE_PORT   host ports on 127.0.0.1: BASE+8 (the SQLite server), +80 (nginx), +91
#               (MinIO console) [28700]
#   NIO_PYTHON  a python with matrix-nio[e2e] for trial_nio.py [.venv/bin/python if it
#               imports nio; "none" to skip]
#   MESSAGES    messages sent before the move [300]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
B=${BASE_PORT:-28700}
MESSAGES=${MESSAGES:-300}
OFFLINE=${OFFLINE:-auto}
if [[ -z ${NIO_PYTHON:-} ]]; then
    NIO_PYTHON=none
    "$REPO/.venv/bin/python" -c "import nio" 2>/dev/null && NIO_PYTHON=$REPO/.venv/bin/python
fi
PY=python3
"$REPO/.venv/bin/python" -c "import yaml" 2>/dev/null && PY=$REPO/.venv/bin/python
for tool in docker curl jq openssl; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
done
docker compose version >/dev/null 2>&1 || { echo "missing: docker compose (the v2 plugin)" >&2; exit 2; }
docker info >/dev/null 2>&1 || { echo "no Docker engine answers (docker info)" >&2; exit 2; }
"$PY" -c "import yaml" 2>/dev/null || { echo "missing: PyYAML for $PY" >&2; exit 2; }

T=$(mktemp -d /tmp/parley-compose-trial.XXXXXX)
P=parley-trial-$(basename "$T" | cut -d. -f2 | tr 'A-Z' 'a-z')   # compose project name
OLD=$P-old                       # the SQLite deployment's data volume
IMAGE=parley:dev
OK=0
# shellcheck source=contrib/workers/trial_lib.sh
source "$HERE/trial_lib.sh"   # step, check, fill, verify, through_workers, ...

cleanup() {
    local rc=$?
    if [[ $OK == 1 && ${KEEP:-0} != 1 ]]; then
        docker rm -f "$P-sqlite" >/dev/null 2>&1 || true
        "${DC[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
        docker volume rm "$OLD" >/dev/null 2>&1 || true
        rm -rf "$T"
    else
        [[ $OK == 1 ]] || "${DC[@]}" logs --no-color >"$T/compose.log" 2>&1 || true
        echo "kept: $T (compose.log), the containers and volumes of project $P and volume $OLD;"
        echo "remove with: docker rm -f $P-sqlite; ${DC[*]} down -v; docker volume rm $OLD"
    fi
    exit $rc
}
DC=(docker compose -p "$P" --env-file "$T/.env" -f "$REPO/docker/compose.workers.yml")
trap cleanup EXIT
trap 'exit 130' INT TERM

metric() {  # NAME METHOD ROUTE: that process's 200s of the route, from its /metrics (9009)
    "${DC[@]}" exec -T "parley-$1" python -c 'import sys, urllib.request
sys.stdout.write(urllib.request.urlopen("http://127.0.0.1:9009/metrics", timeout=10).read().decode())' \
        | count_requests "$2" "$3"
}

direct_status() {  # NAME PATH TOKEN: the status that process itself answers, in its container
    "${DC[@]}" exec -T -e TRIAL_TOKEN="$3" "parley-$1" python -c 'import os, sys, urllib.error, urllib.request
r = urllib.request.Request("http://127.0.0.1:8008" + sys.argv[1],
                           headers={"Authorization": "Bearer " + os.environ["TRIAL_TOKEN"]})
try:
    print(urllib.request.urlopen(r, timeout=60).status)
except urllib.error.HTTPError as e:
    print(e.code)' "$2" || echo 000
}

wait_http() {  # NAME URL: up to 240 s for 200 from URL (images may still be starting)
    for _ in $(seq 1 480); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' -m 2 "$2") == 200 ]] && {
            echo "  ok   $1 ready: $(curl -s -m 2 "$2" | tr -d "\n" | cut -c1-90)"; return 0; }
        sleep 0.5
    done
    die "$1 not ready at $2"
}

S=http://127.0.0.1:$((B + 8))          # the SQLite server
N=http://127.0.0.1:$((B + 80))         # nginx, in front of the stack
ALICE_PW="alice-trial-$(openssl rand -hex 6)" BOB_PW="bob-trial-$(openssl rand -hex 6)"

# The stack's secrets (docker/README.md: each a separate random value).
umask 077
{
    for v in POSTGRES_PASSWORD PARLEY_SIGNING_KEY PARLEY_AT_REST_KEY MINIO_ROOT_PASSWORD \
             PARLEY_REPLICATION_SECRET; do
        echo "$v=$(openssl rand -hex 32)"
    done
    echo "PARLEY_HTTP_PORT=$((B + 80))"
    echo "MINIO_CONSOLE_PORT=$((B + 91))"
} >"$T/.env"
umask 022

# ---- 0. images --------------------------------------------------------------------------

step "0. Images"
if [[ $OFFLINE == auto ]]; then
    OFFLINE=0
    timeout 60 docker pull -q postgres:16 >/dev/null 2>&1 || OFFLINE=1
fi
if [[ $OFFLINE == 1 ]]; then
    for img in python:3.11 postgres:15 redis:7 nginx:1.22 mc:bookworm s3:moto; do
        docker image inspect "parley-offline/$img" >/dev/null 2>&1 && continue
        "$HERE/offline_images/build.sh"; break
    done
    DC+=(-f "$HERE/offline_images/compose.offline.yml")
    echo "  ok   no registry: the stand-ins of contrib/workers/offline_images (Debian's packages)"
fi
t0=$(now_ms)
"${DC[@]}" build parley-main >"$T/build.log" 2>&1 || { tail -30 "$T/build.log"; die "image build"; }
echo "  ok   $IMAGE built from docker/Dockerfile in $(secs_since "$t0") s"
echo "project $P   temp dir $T   nio: $NIO_PYTHON   load: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"

# ---- 1. a running SQLite deployment, in the image ------------------------------------------

step "1. SQLite: the image alone (docker/README.md 'The image'), filled"
docker volume create "$OLD" >/dev/null
docker run --rm -v "$OLD:/data" "$IMAGE" parley generate-config --dev --server-name localhost \
    --data-dir /data --bind-address 0.0.0.0 --port 8008 --output /data/parley.yaml >/dev/null
docker run -d --name "$P-sqlite" -p "127.0.0.1:$((B + 8)):8008" -v "$OLD:/data" "$IMAGE" >/dev/null
wait_http sqlite "$S/ready"
printf '%s\n' "$ALICE_PW" | docker exec -i "$P-sqlite" \
    parley create-user -c /data/parley.yaml alice --admin --password-file /dev/stdin 2>&1 \
    | grep -v at_rest_key | sed 's/^/  /'
register_bob "$S"
fill "$S"
OLD_TOKEN=$Bt

# ---- 2. into the stack ----------------------------------------------------------------------

step "2. Into the workers stack (docker/README.md 'Bringing an existing deployment into the stack')"
# Step 1: the stack's config, with the old server's name (localhost, as the sample's) and
# its token signing key kept for verification; mounted over the sample's.
docker run --rm -v "$OLD:/old:ro" "$IMAGE" cat /old/parley.yaml >"$T/old.yaml"
"$PY" - "$REPO/docker/parley.workers.yaml" "$T/old.yaml" "$T/parley.yaml" "$T/old-token-key.pem" <<'EOF'
import sys, yaml
new = yaml.safe_load(open(sys.argv[1]))
old = yaml.safe_load(open(sys.argv[2]))
assert old["server_name"] == new["server_name"], "the sample's server_name is not the old one"
for key in old["auth"]["signing_keys"]:
    if key.get("verify_only"):
        continue
    open(sys.argv[4], "w").write(key["key"])
    new["auth"]["signing_keys"].append({"kid": key["kid"], "algorithm": key["algorithm"],
                                        "key": {"file": "/config/old-token-key.pem"},
                                        "verify_only": True})
with open(sys.argv[3], "w") as f:
    yaml.safe_dump(new, f, sort_keys=False)
EOF
chmod 0644 "$T/parley.yaml"
chmod 0600 "$T/old-token-key.pem"; chown 10001:10001 "$T/old-token-key.pem"
{
    echo "services:"
    for s in parley-main parley-client1 parley-client2 parley-persister1 parley-persister2; do
        echo "  $s:"
        echo "    volumes:"
        echo "      - $T/parley.yaml:/config/parley.yaml:ro"
        echo "      - $T/old-token-key.pem:/config/old-token-key.pem:ro"
    done
} >"$T/compose.trial.yml"
DC+=(-f "$T/compose.trial.yml")
echo "  ok   parley.workers.yaml + the old token key (verify_only, from a file), mounted over the sample's"

# Step 3 first half, while the old server still runs: the port must refuse its open file.
"${DC[@]}" up -d --wait postgres >"$T/up-postgres.log" 2>&1 || { cat "$T/up-postgres.log"; die "postgres"; }
echo "  ok   postgres healthy"
if "${DC[@]}" run --rm --no-deps -v "$OLD:/old" parley-main \
        parley port-db --sqlite /old/parley.db -c /config/parley.yaml >"$T/port-live.out" 2>&1; then
    die "port-db accepted a database the running server (another container) has open"
fi
echo "  ok   port-db refused while the old container runs: $(grep -m1 error: "$T/port-live.out" | cut -c1-150)"
docker stop -t 30 "$P-sqlite" >/dev/null
echo "  ok   old server stopped (docker stop: SIGTERM)"

# Step 2: the server's federation key and audit key into the stack's data volume.
"${DC[@]}" run --rm --no-deps -v "$OLD:/old:ro" parley-main \
    sh -c 'cp -p /old/signing.key /old/audit_id.key /data/ && ls -ln /data' >"$T/keys.out" 2>&1 \
    || { cat "$T/keys.out"; die "copying the keys"; }
echo "  ok   signing.key and audit_id.key copied into the parley-data volume (uid 10001)"

# Step 3: the port.
t0=$(now_ms)
"${DC[@]}" run --rm --no-deps -v "$OLD:/old" parley-main \
    parley port-db --sqlite /old/parley.db -c /config/parley.yaml >"$T/port.out" 2>&1 \
    || { tail -30 "$T/port.out"; die "port-db"; }
PORT_S=$(secs_since "$t0")
sed -n '/^stream\/sequence/,$p' "$T/port.out" | sed 's/^/  /'
echo "  ok   port-db: $(tail -1 "$T/port.out" | cut -d: -f1) (wall $PORT_S s, with the container's start)"

# Step 4: the media into MinIO, as they are.
"${DC[@]}" run --rm -v "$OLD:/old:ro" minio-init \
    'mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null && mc mb --ignore-existing local/parley-media && mc mirror /old/media local/parley-media' \
    >"$T/mirror.out" 2>&1 || { cat "$T/mirror.out"; die "mc mirror"; }
echo "  ok   media mirrored into MinIO: $(grep -c -- '->' "$T/mirror.out") files"

# Step 5: the whole stack.
t0=$(now_ms)
"${DC[@]}" up -d >"$T/up.log" 2>&1 || { tail -30 "$T/up.log"; die "docker compose up"; }
wait_http nginx "$N/health"
echo "  ok   the stack is up in $(secs_since "$t0") s (nginx starts once all five Parley containers are healthy):"
"${DC[@]}" ps --format '{{.Service}}: {{.Status}}' | sed 's/^/         /'

check "a token issued by the SQLite server still works" 200 GET "$N/_matrix/client/v3/account/whoami" "" "$OLD_TOKEN"
through_workers "$N" "S3 (MinIO)"
logout_everywhere "$N"

step "3. The stack's hardening"
for s in parley-main parley-client1 parley-persister1; do
    out=$("${DC[@]}" exec -T "$s" sh -c 'id -u; touch /opt/x 2>&1; grep CapEff /proc/self/status')
    grep -q '^10001$' <<<"$out" && grep -q 'Read-only file system' <<<"$out" \
        && grep -q 'CapEff:.*0000000000000000' <<<"$out" || die "$s: $out"
    echo "  ok   $s runs as uid 10001, read-only root, no capabilities"
done
OK=1
echo
echo "ALL CHECKS PASSED (port-db: $(tail -1 "$T/port.out" | cut -d: -f1))"

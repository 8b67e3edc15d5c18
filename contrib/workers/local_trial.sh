#!/usr/bin/env bash
# An operator's trial, with local processes: a running SQLite deployment is filled with
# users, rooms, messages, media, profiles and account data; moved to PostgreSQL with
# `parley port-db` (README "Moving from SQLite to PostgreSQL"); given Redis; then run as
# the topology of docker/compose.workers.yml (main, two client readers, two event
# persisters) behind nginx with docker/nginx.workers.conf's routing, media on S3 (moto's
# server standing in for MinIO) or on the file store. Every check prints its HTTP answer;
# the first failed one stops the trial with exit status 1. Everything runs under a fresh
# temp dir; the processes it started are stopped by PID on exit, its PostgreSQL database
# dropped and its Redis keys deleted. See contrib/workers/README.md.
#
#   contrib/workers/local_trial.sh            # from the repository root
#
# Environment (defaults in brackets):
#   PARLEY            the parley command to test [parley on PATH, else .venv/bin/parley]
#   PG_HOST/PG_PORT/PG_USER   a PostgreSQL superuser that can create roles and databases
#                     [127.0.0.1/5432/postgres, trust or PGPASSWORD]
#   REDIS_HOST/REDIS_PORT/REDIS_DB   [127.0.0.1/6379/5]
#   BASE_PORT         ports used: BASE+8 (main), +80 (nginx), +81/+82 (readers),
#                     +101/+102 (persisters), +93/+111/+112 (replication), +50 (moto),
#                     +9/+121..+124 (metrics) [28600]
#   MOTO_SERVER       moto_server to run as the S3 endpoint [.venv/bin/moto_server if
#                     present; "none" keeps the file media store]
#   NIO_PYTHON        a python with matrix-nio[e2e]: also runs trial_nio.py (encrypted
#                     messages that must still decrypt after each move) [.venv/bin/python
#                     if it imports nio; "none" to skip]
#   MESSAGES          messages sent before the port (more rows for port-db) [300]
#   KEEP=1            keep the temp dir (logs, configs) after a successful run
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PARLEY=${PARLEY:-$(command -v parley || echo "$REPO/.venv/bin/parley")}
PY=$(dirname "$(readlink -f "$PARLEY")")/python        # the interpreter parley runs on
PG_HOST=${PG_HOST:-127.0.0.1} PG_PORT=${PG_PORT:-5432} PG_USER=${PG_USER:-postgres}
REDIS_HOST=${REDIS_HOST:-127.0.0.1} REDIS_PORT=${REDIS_PORT:-6379} REDIS_DB=${REDIS_DB:-5}
B=${BASE_PORT:-28600}
MESSAGES=${MESSAGES:-300}
if [[ -z ${MOTO_SERVER:-} ]]; then
    MOTO_SERVER=none; [[ -x $REPO/.venv/bin/moto_server ]] && MOTO_SERVER=$REPO/.venv/bin/moto_server
fi
if [[ -z ${NIO_PYTHON:-} ]]; then
    NIO_PYTHON=none
    "$REPO/.venv/bin/python" -c "import nio" 2>/dev/null && NIO_PYTHON=$REPO/.venv/bin/python
fi
for tool in curl jq nginx psql createdb dropdb redis-cli openssl; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
done
[[ -x $PARLEY ]] || { echo "no parley at $PARLEY (set PARLEY)" >&2; exit 2; }

T=$(mktemp -d /tmp/parley-trial.XXXXXX)
TAG=parley_trial_$(basename "$T" | cut -d. -f2 | tr 'A-Z' 'a-z')
DB=$TAG ROLE=$TAG PREFIX="$TAG:"
declare -A PIDS=()
OK=0
# shellcheck source=contrib/workers/trial_lib.sh
source "$HERE/trial_lib.sh"   # step, check, fill, verify, through_workers, ...

# ---- plumbing ------------------------------------------------------------------------

stop() {  # NAME: SIGTERM, then SIGKILL after 15 s; only a PID this script started
    local pid=${PIDS[$1]:-}
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "PIDS[$1]"
}

cleanup() {
    local rc=$?
    for name in "${!PIDS[@]}"; do stop "$name"; done
    dropdb -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" --if-exists "$DB" 2>/dev/null || true
    psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -qc "DROP ROLE IF EXISTS $ROLE" \
        2>/dev/null || true
    redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" -n "$REDIS_DB" --scan --pattern "$PREFIX*" \
        | xargs -r redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" -n "$REDIS_DB" del >/dev/null || true
    if [[ $OK == 1 && ${KEEP:-0} != 1 ]]; then
        rm -rf "$T"
    else
        echo "logs and configs kept in $T"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() {  # NAME ARGS...: a background process, its output in $T/NAME.log
    local name=$1; shift
    (cd "$T" && exec "$@" >"$T/$name.log" 2>&1 </dev/null) &
    PIDS[$name]=$!
}

wait_ready() {  # NAME URL: up to 120 s for 200 from URL (the machine may be busy)
    local name=$1 url=$2
    for _ in $(seq 1 240); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' -m 2 "$url") == 200 ]] && {
            echo "  ok   $name ready: $(curl -s -m 2 "$url" | tr -d "\n" | cut -c1-90)"; return 0; }
        kill -0 "${PIDS[$name]}" 2>/dev/null || { tail -20 "$T/$name.log"; die "$name exited"; }
        sleep 0.5
    done
    tail -20 "$T/$name.log"; die "$name not ready at $url"
}

metric() {  # NAME METHOD ROUTE: that process's 200s of the route, from its /metrics
    local port
    case $1 in
        main) port=$((B + 9)) ;; client1) port=$((B + 121)) ;; client2) port=$((B + 122)) ;;
        persister1) port=$((B + 123)) ;; persister2) port=$((B + 124)) ;;
    esac
    curl -s "http://127.0.0.1:$port/metrics" | count_requests "$2" "$3"
}

direct_status() {  # NAME PATH TOKEN: the status that process itself answers
    local port
    case $1 in
        main) port=$((B + 8)) ;; client1) port=$((B + 81)) ;; client2) port=$((B + 82)) ;;
        persister1) port=$((B + 101)) ;; persister2) port=$((B + 102)) ;;
    esac
    curl -s -o /dev/null -w '%{http_code}' -m 60 -H "Authorization: Bearer $3" \
        "http://127.0.0.1:$port$2" || echo 000
}

edit_config() {  # IN OUT PYTHON: OUT is IN with the Python statements applied to `c`
    "$PY" - "$1" "$2" "$3" <<'EOF'
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
exec(sys.argv[3])
with open(sys.argv[2], "w") as f:
    yaml.safe_dump(c, f, sort_keys=False)
EOF
    chmod 600 "$2"
}

S=http://127.0.0.1:$((B + 8))          # the server (one process, then main)
N=http://127.0.0.1:$((B + 80))         # nginx
ALICE_PW="alice-trial-$(openssl rand -hex 6)" BOB_PW="bob-trial-$(openssl rand -hex 6)"

echo "parley: $PARLEY   temp dir: $T   database: $DB   redis db $REDIS_DB prefix $PREFIX"
echo "S3: $MOTO_SERVER   nio: $NIO_PYTHON   load: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"

# ---- 1. a running SQLite deployment ---------------------------------------------------

step "1. SQLite: parley generate-config --dev, parley run, fill it"
(cd "$T" && "$PARLEY" generate-config --dev --port $((B + 8)) --output parley.yaml)
start sqlite "$PARLEY" run -c parley.yaml
wait_ready sqlite "$S/ready"
printf '%s\n' "$ALICE_PW" >"$T/alice.pw"
(cd "$T" && "$PARLEY" create-user -c parley.yaml alice --admin --password-file alice.pw) \
    2>&1 | grep -v at_rest_key | sed 's/^/  /'
register_bob "$S"
fill "$S"

# ---- 2. to PostgreSQL --------------------------------------------------------------------

step "2. PostgreSQL (README 'Moving from SQLite to PostgreSQL'), prepared while SQLite runs"
createuser -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" "$ROLE"
createdb -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -O "$ROLE" -E UTF8 --locale=C -T template0 "$DB"
echo "  ok   createuser $ROLE; createdb -O $ROLE -E UTF8 --locale=C -T template0 $DB"
edit_config "$T/parley.yaml" "$T/pg.yaml" "c['database'] = {'engine': 'postgres', \
'host': '$PG_HOST', 'port': $PG_PORT, 'user': '$ROLE', 'database': '$DB'}"
echo "  ok   pg.yaml: parley.yaml with database switched to PostgreSQL"
if (cd "$T" && "$PARLEY" port-db --from parley.yaml --to pg.yaml >"$T/port-live.out" 2>&1); then
    die "port-db accepted a database a running server has open"
fi
echo "  ok   port-db refused while the server runs: $(grep -m1 error: "$T/port-live.out" | cut -c1-150)"
stop sqlite
cp "$T/data/parley.db" "$T/parley.db.before-port"   # README step 1: keep a copy
echo "  ok   SQLite server stopped (SIGTERM), copy of data/parley.db kept"
t0=$(now_ms)
(cd "$T" && "$PARLEY" port-db --from parley.yaml --to pg.yaml >"$T/port.out" 2>"$T/port.err") \
    || { cat "$T/port.out" "$T/port.err" | tail -30; die "port-db"; }
PORT_S=$(secs_since "$t0")
sed -n '/^stream\/sequence/,$p' "$T/port.out" | sed 's/^/  /'
echo "  ok   port-db: $(tail -1 "$T/port.out" | cut -d: -f1) (wall $PORT_S s)"
start pg "$PARLEY" run -c pg.yaml
wait_ready pg "$S/ready"
check "a token issued on SQLite still works" 200 GET "$S/_matrix/client/v3/account/whoami" "" "$Bt"
A=$(login "$S" alice "$ALICE_PW"); Bt=$(login "$S" bob "$BOB_PW")
echo "  ok   alice and bob log in on PostgreSQL"

verify "$S" postgres
nio after-postgres "$S"

# ---- 3. Redis, still one process --------------------------------------------------------------

step "3. Redis (README 'When and how to move to workers' step 2): one process"
edit_config "$T/pg.yaml" "$T/redis.yaml" "c['redis'] = {'host': '$REDIS_HOST', \
'port': $REDIS_PORT, 'db': $REDIS_DB, 'key_prefix': '$PREFIX'}
c['rate_limits']['backend'] = 'redis'"
stop pg
start redis1 "$PARLEY" run -c redis.yaml
wait_ready redis1 "$S/ready"
check "/ready names redis" 200 GET "$S/ready"
expect "redis ok" '.checks.redis == "ok"'
A=$(login "$S" alice "$ALICE_PW")
KEYS=$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" -n "$REDIS_DB" --scan --pattern "$PREFIX*" | wc -l)
[[ $KEYS -gt 0 ]] || die "no rate-limit keys under $PREFIX in redis db $REDIS_DB"
echo "  ok   $KEYS rate-limit keys under $PREFIX in redis db $REDIS_DB"
stop redis1

# ---- 4. workers ---------------------------------------------------------------------------------

step "4. Workers as docker/compose.workers.yml: main, 2 client readers, 2 event persisters, nginx"
S3=""
if [[ $MOTO_SERVER != none ]]; then
    start moto "$MOTO_SERVER" -H 127.0.0.1 -p $((B + 50))
    wait_ready moto "http://127.0.0.1:$((B + 50))/"
    export PARLEY_S3_SECRET_ACCESS_KEY=trial-secret
    # The file store's keys are the S3 object keys: moving media is copying the tree.
    "$PY" - "http://127.0.0.1:$((B + 50))" "$T/data/media" <<'EOF'
import os, sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="trial", aws_secret_access_key="trial-secret")
s3.create_bucket(Bucket="parley-media")
n = 0
for d, _, files in os.walk(sys.argv[2]):
    for f in files:
        if not f.startswith(".tmp-"):
            p = os.path.join(d, f)
            s3.upload_file(p, "parley-media", os.path.relpath(p, sys.argv[2]))
            n += 1
print(f"  ok   copied {n} media files from data/media into s3://parley-media/")
EOF
    mv "$T/data/media" "$T/data/media.moved-to-s3"     # so nothing can still read them
    S3="c['media'] = {'store': 's3', 's3': {'bucket': 'parley-media', \
'endpoint_url': 'http://127.0.0.1:$((B + 50))', 'region': 'us-east-1', \
'access_key_id': 'trial', 'secret_access_key': {'env': 'PARLEY_S3_SECRET_ACCESS_KEY'}, \
'presigned_redirect': False}}"
else
    echo "  note media stays on the file store (data/media, shared by every process): no moto"
fi
export PARLEY_REPLICATION_SECRET=$(openssl rand -hex 24)
L="'bind_addresses': ['127.0.0.1']"
edit_config "$T/redis.yaml" "$T/workers.yaml" "c['listeners'] = [
    {'port': $((B + 8)), $L, 'resources': ['client'], 'x_forwarded': True},
    {'port': $((B + 93)), $L, 'resources': ['replication']},
    {'port': $((B + 9)), $L, 'resources': ['metrics']}]
c['stream_writers'] = {'events': ['persister1', 'persister2']}
def reader(n):
    return {'role': 'client', 'listeners': [
        {'port': $((B + 80)) + n, $L, 'x_forwarded': True},
        {'port': $((B + 120)) + n, $L, 'resources': ['metrics']}]}
def persister(n):
    return {'role': 'event_persister', 'replication': {'host': '127.0.0.1', 'port': $((B + 110)) + n},
        'listeners': [{'port': $((B + 100)) + n, $L, 'x_forwarded': True},
                      {'port': $((B + 110)) + n, $L, 'resources': ['replication']},
                      {'port': $((B + 122)) + n, $L, 'resources': ['metrics']}]}
c['workers'] = {'main': {'role': 'main', 'replication': {'host': '127.0.0.1', 'port': $((B + 93)),
                         'secret': {'env': 'PARLEY_REPLICATION_SECRET'}}},
                'client1': reader(1), 'client2': reader(2),
                'persister1': persister(1), 'persister2': persister(2)}
$S3"
start main "$PARLEY" run -c workers.yaml
wait_ready main "$S/ready"
for w in client1 client2 persister1 persister2; do
    start "$w" "$PARLEY" run -c workers.yaml --worker "$w"
done
wait_ready client1 "http://127.0.0.1:$((B + 81))/ready"
wait_ready client2 "http://127.0.0.1:$((B + 82))/ready"
wait_ready persister1 "http://127.0.0.1:$((B + 101))/ready"
wait_ready persister2 "http://127.0.0.1:$((B + 102))/ready"
mkdir -p "$T/nginx"
# docker/nginx.workers.conf with the compose services replaced by local ports, and an
# access log naming the upstream each request went to.
sed -e "s#parley-main:8008#127.0.0.1:$((B + 8))#" \
    -e "s#parley-client1:8008#127.0.0.1:$((B + 81))#" \
    -e "s#parley-client2:8008#127.0.0.1:$((B + 82))#" \
    -e "s#listen 8008;#listen 127.0.0.1:$((B + 80));#" \
    -e "s#/tmp/#$T/nginx/#" \
    -e "s#access_log off;#log_format up '\$request_method \$uri \$status \$upstream_addr'; access_log $T/nginx/access.log up;#" \
    "$REPO/docker/nginx.workers.conf" >"$T/nginx/nginx.conf"
nginx -t -q -c "$T/nginx/nginx.conf" -p "$T/nginx" -e stderr || die "nginx -t"
start nginx nginx -c "$T/nginx/nginx.conf" -p "$T/nginx" -e stderr -g 'daemon off;'
wait_ready nginx "$N/health"

through_workers "$N" "$([[ -n $S3 ]] && echo S3 || echo file store)"
logout_everywhere "$N"
echo
echo "nginx upstreams used: $(awk '{print $4}' "$T/nginx/access.log" | sort | uniq -c | tr '\n' ' ')"
OK=1
echo "ALL CHECKS PASSED (port-db: $(tail -1 "$T/port.out" | cut -d: -f1))"

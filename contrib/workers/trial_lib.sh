# The checks an operator's trial makes over HTTP, shared by local_trial.sh (local
# processes) and compose_trial.sh (containers): fill a running server, verify that what
# was filled is all there after each move, and check the workers behind the proxy.
# Sourced, not run. The trial sets T (its temp dir), HERE, MESSAGES and NIO_PYTHON, and
# defines two functions for the processes it runs:
#   metric NAME METHOD ROUTE   that process's parley_http_requests_total{status=200} sum
#                              for the route (NAME: main, client1, client2, persister1,
#                              persister2)
#   direct_status NAME PATH TOKEN   the HTTP status that process itself answers for a GET
#                              of PATH (bypassing the proxy)

step() { printf '\n== %s  (%s)\n' "$*" "$(date -u +%T)"; }
die() { echo "  FAIL $*" >&2; exit 1; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
secs_since() { awk -v a="$1" -v b="$(now_ms)" 'BEGIN { printf "%.1f", (b - a) / 1000 }'; }

CODE='' BODY=''
req() {  # METHOD URL [JSON] [TOKEN]: sets CODE and BODY
    local args=(-s -o "$T/resp" -w '%{http_code}' -m 60 -X "$1")
    [[ -n ${4:-} ]] && args+=(-H "Authorization: Bearer $4")
    [[ -n ${3:-} ]] && args+=(-H 'Content-Type: application/json' --data-binary "$3")
    CODE=$(curl "${args[@]}" "$2") || CODE=000
    BODY=$(cat "$T/resp")
}

check() {  # DESCRIPTION STATUS METHOD URL [JSON] [TOKEN]: the answer must have STATUS
    local desc=$1 want=$2; shift 2
    req "$@"
    [[ $CODE == "$want" ]] || die "$desc -> $CODE (expected $want) ${BODY:0:400}"
    echo "  ok   $desc -> $CODE ${BODY:0:110}"
}

expect() {  # DESCRIPTION JQ-FILTER: the last answer's body satisfies the filter
    jq -e "$2" <<<"$BODY" >/dev/null || die "$1: $(head -c 400 <<<"$BODY")"
    echo "  ok   $1"
}

login() {  # BASE USER PASSWORD -> prints the access token
    req POST "$1/_matrix/client/v3/login" "{\"type\":\"m.login.password\",\
\"identifier\":{\"type\":\"m.id.user\",\"user\":\"$2\"},\"password\":\"$3\"}"
    [[ $CODE == 200 ]] || die "login $2 at $1 -> $CODE $BODY"
    jq -r .access_token <<<"$BODY"
}

count_requests() {  # METHOD ROUTE < /metrics text: the 200s of that route
    awk -v m="method=\"$1\"" -v r="route=\"$2\"" \
        'index($0, "parley_http_requests_total{") == 1 && index($0, m) && index($0, r) \
         && index($0, "status=\"200\"") { s += $NF } END { print s + 0 }'
}

writer_of() {  # ROOM_ID: its event persister, as homeserver/replication/multi_writer.py
    python3 -c 'import hashlib, sys
d = hashlib.sha256(sys.argv[1].encode()).digest()
print(["persister1", "persister2"][int.from_bytes(d[:8], "big") % 2])' "$1"
}

nio() {  # PHASE BASE: the optional matrix-nio client (encrypted rooms)
    [[ $NIO_PYTHON == none ]] && { echo "  skip nio ($1): no NIO_PYTHON"; return 0; }
    if ! "$NIO_PYTHON" "$HERE/trial_nio.py" "$1" "$2" "$T/nio" >"$T/nio-$1.log" 2>&1; then
        grep -v '^Got 429' "$T/nio-$1.log" | tail -20; die "nio $1"
    fi
    grep '^ok' "$T/nio-$1.log" | sed 's/^/  /'
}

MEDIA_BYTES="$T/upload.bin"
head -c 40000 /dev/urandom >"$MEDIA_BYTES"

register_bob() {  # BASE: bob registers with BOB_PW (UIA, m.login.dummy)
    local session
    check "register bob (UIA: first call)" 401 POST "$1/_matrix/client/v3/register" \
        "{\"username\":\"bob\",\"password\":\"$BOB_PW\"}"
    session=$(jq -r .session <<<"$BODY")
    check "register bob (m.login.dummy)" 200 POST "$1/_matrix/client/v3/register" \
        "{\"username\":\"bob\",\"password\":\"$BOB_PW\",\"auth\":{\"type\":\"m.login.dummy\",\"session\":\"$session\"}}"
}

fill() {  # BASE: alice (an admin) and bob exist; sets A Bt ROOM EROOM MXC MEDIA_PATH
    local S=$1 i t0
    A=$(login "$S" alice "$ALICE_PW"); Bt=$(login "$S" bob "$BOB_PW")
    echo "  ok   alice and bob logged in"
    check "alice createRoom (invites bob)" 200 POST "$S/_matrix/client/v3/createRoom" \
        '{"name":"trial","invite":["@bob:localhost"]}' "$A"
    ROOM=$(jq -r .room_id <<<"$BODY")
    check "bob joins" 200 POST "$S/_matrix/client/v3/join/$ROOM" '{}' "$Bt"
    check "encrypted room (m.room.encryption)" 200 POST "$S/_matrix/client/v3/createRoom" \
        '{"name":"secret","invite":["@bob:localhost"],"initial_state":[{"type":"m.room.encryption","state_key":"","content":{"algorithm":"m.megolm.v1.aes-sha2"}}]}' "$A"
    EROOM=$(jq -r .room_id <<<"$BODY")
    check "bob joins it" 200 POST "$S/_matrix/client/v3/join/$EROOM" '{}' "$Bt"
    check "bob sends" 200 PUT "$S/_matrix/client/v3/rooms/$ROOM/send/m.room.message/b1" \
        '{"msgtype":"m.text","body":"hello from bob"}' "$Bt"
    t0=$(now_ms)
    for i in $(seq 1 "$MESSAGES"); do   # alice is an admin: exempt from the message rate limit
        req PUT "$S/_matrix/client/v3/rooms/$ROOM/send/m.room.message/a$i" \
            "{\"msgtype\":\"m.text\",\"body\":\"message $i\"}" "$A"
        [[ $CODE == 200 ]] || die "send $i -> $CODE $BODY"
    done
    echo "  ok   alice sent $MESSAGES messages in $(secs_since "$t0") s"
    CODE=$(curl -s -o "$T/resp" -w '%{http_code}' -X POST -H "Authorization: Bearer $A" \
        -H 'Content-Type: application/octet-stream' --data-binary "@$MEDIA_BYTES" \
        "$S/_matrix/media/v3/upload?filename=trial.bin"); BODY=$(cat "$T/resp")
    [[ $CODE == 200 ]] || die "upload -> $CODE $BODY"
    MXC=$(jq -r .content_uri <<<"$BODY"); MEDIA_PATH=${MXC#mxc://}
    echo "  ok   media upload -> $CODE $MXC"
    check "displayname" 200 PUT "$S/_matrix/client/v3/profile/@alice:localhost/displayname" \
        '{"displayname":"Alice Trial"}' "$A"
    check "avatar_url" 200 PUT "$S/_matrix/client/v3/profile/@alice:localhost/avatar_url" \
        "{\"avatar_url\":\"$MXC\"}" "$A"
    check "account data" 200 PUT "$S/_matrix/client/v3/user/@alice:localhost/account_data/org.example.trial" \
        '{"kept":[1,2,3]}' "$A"
    check "room tag" 200 PUT "$S/_matrix/client/v3/user/@bob:localhost/rooms/$ROOM/tags/u.work" \
        '{"order":0.5}' "$Bt"
    nio before "$S"
}

verify() {  # BASE LABEL: what fill wrote is all there
    check "[$2] bob's joined rooms" 200 GET "$1/_matrix/client/v3/joined_rooms" "" "$Bt"
    expect "[$2] bob is in both rooms" "(.joined_rooms | index(\"$ROOM\")) and (.joined_rooms | index(\"$EROOM\"))"
    local from="" n=0 pages=0
    while :; do  # /messages, backwards, page by page to the room's start
        req GET "$1/_matrix/client/v3/rooms/$ROOM/messages?dir=b&limit=500${from:+&from=$from}" "" "$Bt"
        [[ $CODE == 200 ]] || die "[$2] /messages -> $CODE ${BODY:0:300}"
        n=$((n + $(jq '[.chunk[] | select(.type == "m.room.message")] | length' <<<"$BODY")))
        pages=$((pages + 1)); from=$(jq -r '.end // empty' <<<"$BODY")
        [[ -n $from && $(jq '.chunk | length' <<<"$BODY") -gt 0 && $pages -lt 100 ]] || break
    done
    [[ $n == $((MESSAGES + 1)) ]] || die "[$2] /messages: $n messages, expected $((MESSAGES + 1))"
    echo "  ok   [$2] /messages: all $n messages ($pages pages)"
    CODE=$(curl -s -o "$T/download" -w '%{http_code}' -H "Authorization: Bearer $Bt" \
        "$1/_matrix/client/v1/media/download/$MEDIA_PATH")
    [[ $CODE == 200 ]] && cmp -s "$T/download" "$MEDIA_BYTES" || die "[$2] media download -> $CODE"
    echo "  ok   [$2] media download -> 200, same bytes"
    check "[$2] profile" 200 GET "$1/_matrix/client/v3/profile/@alice:localhost" "" "$Bt"
    expect "[$2] displayname and avatar" ".displayname == \"Alice Trial\" and .avatar_url == \"$MXC\""
    check "[$2] account data" 200 GET "$1/_matrix/client/v3/user/@alice:localhost/account_data/org.example.trial" "" "$A"
    expect "[$2] account data kept" '.kept == [1,2,3]'
    check "[$2] tags" 200 GET "$1/_matrix/client/v3/user/@bob:localhost/rooms/$ROOM/tags" "" "$Bt"
    expect "[$2] tag kept" '.tags["u.work"].order == 0.5'
}

through_workers() {  # PROXY MEDIA-STORE: the workers topology, checked through the proxy
    local N=$1 store=$2 SYNC=/_matrix/client/v3/sync
    local SEND='/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}'
    local R1 R2 M0 R1b R2b SINCE i r w before EV found
    A=$(login "$N" alice "$ALICE_PW"); Bt=$(login "$N" bob "$BOB_PW")
    echo "  ok   alice and bob log in through the proxy"
    verify "$N" workers
    R1=$(metric client1 GET $SYNC); R2=$(metric client2 GET $SYNC); M0=$(metric main GET $SYNC)
    check "initial /sync through the proxy" 200 GET "$N$SYNC?timeout=0" "" "$Bt"
    expect "bob's rooms in /sync" ".rooms.join | has(\"$ROOM\") and has(\"$EROOM\")"
    SINCE=$(jq -r .next_batch <<<"$BODY")
    for i in 1 2 3; do
        check "incremental /sync $i" 200 GET "$N$SYNC?timeout=0&since=$SINCE" "" "$Bt"
    done
    R1b=$(metric client1 GET $SYNC); R2b=$(metric client2 GET $SYNC)
    [[ $(metric main GET $SYNC) == "$M0" ]] || die "main served a /sync"
    [[ $((R1b + R2b - R1 - R2)) == 4 ]] || die "readers served $((R1b + R2b - R1 - R2)) of 4 syncs"
    echo "  ok   4 syncs served by the readers (client1 +$((R1b - R1)), client2 +$((R2b - R2)), sticky), none by main"

    # Rooms until each persister has one (a room's writer is a hash of its id).
    declare -A ROOM_OF=()
    for i in $(seq 1 12); do
        check "createRoom $i" 200 POST "$N/_matrix/client/v3/createRoom" \
            '{"invite":["@bob:localhost"]}' "$A"
        r=$(jq -r .room_id <<<"$BODY"); w=$(writer_of "$r")
        [[ -z ${ROOM_OF[$w]:-} ]] && ROOM_OF[$w]=$r && echo "       $r is written by $w"
        [[ ${#ROOM_OF[@]} == 2 ]] && break
    done
    [[ ${#ROOM_OF[@]} == 2 ]] || die "12 rooms and all on one persister"
    for w in persister1 persister2; do
        r=${ROOM_OF[$w]}
        before=$(metric "$w" PUT "$SEND")
        check "bob joins the $w room" 200 POST "$N/_matrix/client/v3/join/$r" '{}' "$Bt"
        check "alice sends to the $w room" 200 PUT "$N/_matrix/client/v3/rooms/$r/send/m.room.message/w-$w" \
            "{\"msgtype\":\"m.text\",\"body\":\"to $w\"}" "$A"
        EV=$(jq -r .event_id <<<"$BODY")
        [[ $(metric "$w" PUT "$SEND") == $((before + 1)) ]] || die "$w did not persist the send"
        echo "  ok   $w persisted it (its send counter +1)"
        found=""
        for _ in $(seq 1 20); do
            req GET "$N$SYNC?timeout=1000&since=$SINCE" "" "$Bt"
            [[ $CODE == 200 ]] || die "/sync -> $CODE $BODY"
            SINCE=$(jq -r .next_batch <<<"$BODY")
            jq -e --arg r "$r" --arg e "$EV" '.rooms.join[$r].timeline.events // [] | map(.event_id) | index($e)' \
                <<<"$BODY" >/dev/null && { found=1; break; }
        done
        [[ -n $found ]] || die "bob's /sync on a reader never showed $EV"
        echo "  ok   bob's /sync (reader) shows the $w room's message"
    done
    check "upload through the proxy (main, $store)" 200 \
        POST "$N/_matrix/media/v3/upload?filename=x.txt" '{"not":"json, just bytes"}' "$A"
    local mxc2; mxc2=$(jq -r .content_uri <<<"$BODY")
    check "download it through the proxy" 200 GET "$N/_matrix/client/v1/media/download/${mxc2#mxc://}" "" "$Bt"
    nio after-workers "$N"
}

logout_everywhere() {  # PROXY: bob logs out; his token is refused by every process and the proxy
    local N=$1 name
    check "bob logs out (through the proxy)" 200 POST "$N/_matrix/client/v3/logout" '{}' "$Bt"
    sleep 1.5   # auth.session_cache_ttl is 1 s with workers; the Redis message is usually faster
    for name in main client1 client2 persister1 persister2; do
        for path in /_matrix/client/v3/account/whoami "/_matrix/client/v3/sync?timeout=0"; do
            CODE=$(direct_status "$name" "$path" "$Bt")
            [[ $CODE == 401 ]] || die "old token at $name $path -> $CODE (expected 401)"
            echo "  ok   old token refused by $name ($path) -> 401"
        done
    done
    check "old token refused through the proxy (whoami)" 401 GET "$N/_matrix/client/v3/account/whoami" "" "$Bt"
    check "old token refused through the proxy (/sync)" 401 GET "$N/_matrix/client/v3/sync?timeout=0" "" "$Bt"
}

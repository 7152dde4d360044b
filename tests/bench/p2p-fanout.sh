#!/usr/bin/env bash
# Benchmark: one image fanned out to the nodes of a site, and peer-to-peer throughput.
#
#   sudo tests/bench/p2p-fanout.sh                                   # 8 nodes, 1 GiB, 100 Mbit/s
#   sudo IMAGE_MIB=64 PEER_MIB=64 NODES=4 tests/bench/p2p-fanout.sh  # a quick check
#
# Part 1: a site in network namespaces made here and deleted on exit, as in
# tests/e2e/harness/netns.rs: NODES nodes on a LAN bridge (each node's veth shaped by tbf to
# LAN_MBIT both ways; 0: unshaped) and an origin running docker-registry behind a WAN veth shaped
# to WAN_MBIT both ways (tbf on the origin's end; its ingress redirected to an ifb with htb).
# All nodes pull one image (LAYERS random layers, IMAGE_MIB in all, config, OCI manifest) at once,
# each client fetching the manifest then the blobs one by one, checking every sha256:
#   (a) direct from the origin; (b) each through its own `ferry node` (P2P swarm, cluster key,
#   bootstrap to node 0); (c) lower bound: image bytes / WAN rate.
# Origin bytes: tx_bytes of the origin's WAN veth (headers included), read outside ferry.
# Part 2, on loopback: node A caches a PEER_MIB blob; node B, whose only upstream is dead,
# bootstraps to A and serves the blob (every byte from A); its rate is compared with iperf3's.
#
# Targets: ferry wall <= 1.5x the lower bound, ferry origin bytes <= 1.1x the image. A missed
# target prints MISSED but does not fail the script; errors and failed fetches do, after all
# results are printed. Last line:
#   RESULT wall_vs_bound=.. origin_vs_image=.. direct_vs_ferry=.. p2p_vs_iperf3=..
#
# Environment: NODES=8 IMAGE_MIB=1024 LAYERS=4 WAN_MBIT=100 LAN_MBIT=1000 PEER_MIB=1024
#   PEER_WAIT=30 (s to wait for the swarm), FERRY=path (instead of building target/release/ferry),
#   KEEP_TMP=1 (keep logs and stores), BENCH_TMP=/var/tmp/ferry-bench-p2p: cache/ (image and
#   registry storage, reused across runs) and the run's temp dir; needs (NODES+2) x IMAGE_MIB free.
# Runs as root on Debian 12, installing what it needs with apt-get. The host's network is not
# touched: links live in namespaces named fbenchXXX-*, and part 2 uses loopback only.
set -euo pipefail

NODES=${NODES:-8} IMAGE_MIB=${IMAGE_MIB:-1024} LAYERS=${LAYERS:-4}
WAN_MBIT=${WAN_MBIT:-100} LAN_MBIT=${LAN_MBIT:-1000}
PEER_MIB=${PEER_MIB:-1024} PEER_WAIT=${PEER_WAIT:-30}
BENCH_TMP=${BENCH_TMP:-/var/tmp/ferry-bench-p2p}
CACHE=$BENCH_TMP/cache
REPO=bench/fanout UPSTREAM=registry.local
WALL_TARGET=1.5 ORIGIN_TARGET=1.1
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=deploy/lib.sh
. "$REPO_ROOT/deploy/lib.sh"

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }
fail() { FAILURES+=("$*"); log "FAILED: $*"; } # a fetch failed: go on, exit non-zero at the end
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}'; }
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b/1048576}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0 ? a/b : 0)}'; }
mark() { awk -v a="$1" -v b="$2" 'BEGIN {print (a == "FAIL" ? "FAILED" : a <= b ? "ok" : "MISSED")}'; }

# ----------------------------------------------------------------- cleanup ----

PIDS=() NETNS=() FAILURES=() TMP=""
forget_pid() {
    local p keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
# Kills every process in our namespaces (all started by this script), then deletes them.
teardown_site() {
    local full pids p i
    for full in "${NETNS[@]}"; do
        for _ in $(seq 50); do
            pids=$(ip netns pids "$full" 2>/dev/null) || break
            [[ -n $pids ]] || break
            for p in $pids; do
                # Our own children are reaped at once, so bash prints no "Killed" notice.
                { kill -KILL "$p"; [[ " ${PIDS[*]} " != *" $p "* ]] || wait "$p"; } 2>/dev/null || true
                forget_pid "$p"
            done
            sleep 0.1
        done
    done
    for ((i = ${#NETNS[@]} - 1; i >= 0; i--)); do
        ip netns delete "${NETNS[i]}" 2>/dev/null || log "WARNING: cannot delete netns ${NETNS[i]}"
    done
    NETNS=()
}
cleanup() {
    local rc=$?
    set +e
    stop_pids "${PIDS[@]}"
    teardown_site
    if [[ -n $TMP && -d $TMP ]]; then
        if [[ ${KEEP_TMP:-0} == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# -------------------------------------------------------------------- site ----

ns() { echo "$TAG-$1"; } # full name of namespace lan, origin or n<i>
in_ns() { local n=$1; shift; ip netns exec "$(ns "$n")" "$@"; }
node_ip() { echo "$NET.$((10 + $1))"; }
burst() { local b=$(($1 * 1000000 / 8 / 100)); echo $((b > 65536 ? b : 65536)); } # 10 ms, >= 64 KiB
tbf() { tc -n "$(ns "$1")" qdisc replace dev "$2" root tbf rate "${3}mbit" burst "$(burst "$3")" latency 50ms; }

# veth NS BRIDGE_PORT NIC ADDR: a veth from the LAN bridge into NS (its peer born there).
veth() {
    ip -n "$(ns lan)" link add "$2" type veth peer name "$3" netns "$(ns "$1")"
    ip -n "$(ns lan)" link set "$2" master "${TAG}br" up
    ip -n "$(ns "$1")" addr add "$4/24" dev "$3"
    ip -n "$(ns "$1")" link set "$3" up
}

make_site() {
    TAG=fbench$(printf %03x $((RANDOM % 4096)))
    while [[ -e /run/netns/$TAG-lan ]]; do TAG=fbench$(printf %03x $((RANDOM % 4096))); done
    NET=10.78.$((1 + RANDOM % 254)) && ORIGIN_IP=$NET.1
    log "site $TAG: $NODES nodes on $NET.0/24, origin $ORIGIN_IP, WAN $WAN_MBIT Mbit/s, LAN $LAN_MBIT Mbit/s"
    local n i ports=() wan=${TAG}w ifb=${TAG}ifb
    for n in lan origin $(seq -f 'n%g' 0 $((NODES - 1))); do
        ip netns add "$(ns "$n")"
        NETNS+=("$(ns "$n")")
        ip -n "$(ns "$n")" link set lo up
    done
    ip -n "$(ns lan)" link add "${TAG}br" type bridge
    ip -n "$(ns lan)" link set "${TAG}br" up
    for ((i = 0; i < NODES; i++)); do veth "n$i" "${TAG}b$i" "${TAG}n$i" "$(node_ip "$i")" && ports+=("${TAG}b$i"); done
    veth origin "${TAG}wb" "$wan" "$ORIGIN_IP" && ports+=("${TAG}wb")
    # Wait (5 s at most) until every bridge port has carrier (so has its peer) and forwards.
    for _ in $(seq 100); do
        n=0
        for i in "${ports[@]}"; do
            ip -n "$(ns lan)" -d -o link show dev "$i" | grep LOWER_UP | grep -q 'state forwarding' || n=1
        done
        ((n)) || break
        sleep 0.05
    done
    ((!n)) || die "site links not up and forwarding within 5 s"
    # WAN: origin -> site by tbf on the origin's veth; site -> origin through an ifb (no matchall).
    tbf origin "$wan" "$WAN_MBIT"
    ip -n "$(ns origin)" link add "$ifb" type ifb
    ip -n "$(ns origin)" link set "$ifb" txqueuelen 1000 up
    tc -n "$(ns origin)" qdisc add dev "$wan" handle ffff: ingress
    tc -n "$(ns origin)" filter add dev "$wan" parent ffff: protocol all u32 match u32 0 0 \
        action mirred egress redirect dev "$ifb"
    tc -n "$(ns origin)" qdisc add dev "$ifb" root handle 1: htb default 1
    tc -n "$(ns origin)" class add dev "$ifb" parent 1: classid 1:1 htb rate "${WAN_MBIT}mbit" \
        ceil "${WAN_MBIT}mbit" burst "$(burst "$WAN_MBIT")" cburst "$(burst "$WAN_MBIT")" quantum 60000
    # LAN: each node's upload (its end of the veth) and download (the bridge's end).
    for ((i = 0; LAN_MBIT > 0 && i < NODES; i++)); do
        tbf "n$i" "${TAG}n$i" "$LAN_MBIT" && tbf lan "${TAG}b$i" "$LAN_MBIT"
    done
}

# Bytes the origin has sent into the site: its WAN veth's tx_bytes (after tbf, on the wire).
origin_tx() { ip -n "$(ns origin)" -s -j link show dev "${TAG}w" | jq '.[0].stats64.tx.bytes'; }

# ------------------------------------------------------------------- image ----

# The image, generated once into $IMG: layer files, config.json, manifest.json and blobs.list
# ("digest size file", config first). Writes $TMP/fetch.list ("path-under-/v2/REPO/ digest"
# per request of a pull) and sets IMAGE_BYTES (blobs + manifest).
make_image() {
    IMG=$CACHE/image-${IMAGE_MIB}m-${LAYERS}l
    if [[ ! -f $IMG/blobs.list ]]; then
        log "generating a $IMAGE_MIB MiB image ($LAYERS layers of random bytes) in $IMG"
        local tmp=$IMG.tmp.$$ size=$((IMAGE_MIB * 1048576 / LAYERS)) i hex layers="" diffs="" cfg
        rm -rf "$tmp" && mkdir -p "$tmp"
        for ((i = 0; i < LAYERS; i++)); do
            hex=$(head -c "$size" /dev/urandom | tee "$tmp/layer$i" | sha256sum | cut -d' ' -f1)
            echo "sha256:$hex $size layer$i" >>"$tmp/layers"
            layers+="${layers:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$hex\",\"size\":$size}"
            diffs+="${diffs:+,}\"sha256:$hex\""
        done
        printf '{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
            "$diffs" >"$tmp/config.json"
        cfg="sha256:$(sha256sum "$tmp/config.json" | cut -d' ' -f1) $(stat -c %s "$tmp/config.json")"
        printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[%s]}' \
            "${cfg% *}" "${cfg#* }" "$layers" >"$tmp/manifest.json"
        { echo "$cfg config.json"; cat "$tmp/layers"; } >"$tmp/blobs.list"
        rm -rf "$IMG" && mv "$tmp" "$IMG"
    fi
    IMAGE_BYTES=$(awk -v m="$(stat -c %s "$IMG/manifest.json")" '{s += $2} END {print s + m}' "$IMG/blobs.list")
    { echo "manifests/latest sha256:$(sha256sum "$IMG/manifest.json" | cut -d' ' -f1)"
      awk '{print "blobs/" $1, $1}' "$IMG/blobs.list"; } >"$TMP/fetch.list"
}

# -------------------------------------------------------------- registries ----

# start_registry WHERE ADDR: docker-registry on ADDR with the cached storage, in namespace WHERE
# ("-": the host). Sets REG (its URL) and REG_RUN (the command prefix that reaches it).
start_registry() {
    local pid
    REG_RUN=() REG=http://$2
    [[ $1 == - ]] || REG_RUN=(ip netns exec "$(ns "$1")")
    printf 'version: 0.1\nlog: { level: warn, accesslog: { disabled: true } }\nstorage: { filesystem: { rootdirectory: %s } }\nhttp: { addr: "%s", secret: ferry-bench }\n' \
        "$CACHE/registry-data" "$2" >"$TMP/registry$1.yml"
    "${REG_RUN[@]}" docker-registry serve "$TMP/registry$1.yml" >"$TMP/registry$1.log" 2>&1 &
    pid=$! && PIDS+=("$pid")
    wait_up "$pid" "$TMP/registry$1.log" "docker-registry on $2" registry_ready
}
registry_ready() { [[ $("${REG_RUN[@]}" curl -s -o /dev/null -w '%{http_code}' "$REG/v2/") == 200 ]]; }

# wait_up PID LOG WHAT CMD...: waits (30 s) until CMD succeeds, as long as PID lives.
wait_up() {
    local pid=$1 logf=$2 what=$3
    shift 3
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || die "$what exited during startup: $(tail -n 20 "$logf")"
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "$what not ready after 30 s (log: $logf)"
}

# push_blob REPO FILE DIGEST: POST then one monolithic PUT, unless the registry has it already.
push_blob() {
    local loc sep code
    [[ $("${REG_RUN[@]}" curl -s -o /dev/null -I -w '%{http_code}' "$REG/v2/$1/blobs/$3") == 200 ]] && return 0
    log "pushing $3 ($(mib "$(stat -c %s "$2")") MiB)"
    loc=$("${REG_RUN[@]}" curl -sS -f -X POST -D - -o /dev/null "$REG/v2/$1/blobs/uploads/" |
        awk 'tolower($1)=="location:" {print $2}' | tr -d '\r')
    [[ -n $loc ]] || die "upload POST gave no Location"
    [[ $loc == /* ]] && loc=$REG$loc
    [[ $loc == *\?* ]] && sep='&' || sep='?'
    code=$("${REG_RUN[@]}" curl -sS -o /dev/null -w '%{http_code}' -X PUT -H 'Expect:' \
        -H 'Content-Type: application/octet-stream' -T "$2" "$loc${sep}digest=$3")
    [[ $code == 201 ]] || die "blob PUT of $3 returned $code"
}

push_image() {
    local digest size file code
    while read -r digest size file; do push_blob "$REPO" "$IMG/$file" "$digest"; done <"$IMG/blobs.list"
    code=$("${REG_RUN[@]}" curl -sS -o /dev/null -w '%{http_code}' -X PUT --data-binary "@$IMG/manifest.json" \
        -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' "$REG/v2/$REPO/manifests/latest")
    [[ $code == 201 ]] || die "manifest PUT returned $code"
}

# ------------------------------------------------------------------- ferry ----

pick_port() { free_port >"$TMP/port"; printf -v "$1" %s "$(<"$TMP/port")"; } # sets VAR $1
ferry_status() { "$FERRY" status --json --admin-socket "$TMP/ferry/$1/admin.sock" 2>/dev/null; }
peer_count() { ferry_status "$1" | jq '.p2p.peers | length' 2>/dev/null || echo 0; }

# start_ferry NAME WHERE ARGS...: `ferry node ARGS` in namespace WHERE ("-": the host), with
# its store, admin socket and log in $TMP/ferry/NAME; waits until `ferry status` answers.
start_ferry() {
    local name=$1 where=$2 d=$TMP/ferry/$1 run=() pid
    shift 2
    [[ $where == - ]] || run=(ip netns exec "$(ns "$where")")
    mkdir -p "$d"
    "${run[@]}" "$FERRY" node --store "$d/store" --admin-socket "$d/admin.sock" --psk-file "$KEY" \
        --region site-a --mdns false "$@" >"$d/ferry.log" 2>&1 &
    pid=$! && PIDS+=("$pid")
    wait_up "$pid" "$d/ferry.log" "ferry node $name" ferry_status "$name"
}

# wait_peers NAME WANT: waits up to PEER_WAIT s until node NAME sees WANT peers (warns if not).
wait_peers() {
    local n=0
    for _ in $(seq $((PEER_WAIT * 2))); do
        n=$(peer_count "$1") && ((n >= $2)) && break
        sleep 0.5
    done
    ((n >= $2)) || log "WARNING: $1 sees $n peers after ${PEER_WAIT}s, want $2"
    log "$1 sees $n peers"
}

# ------------------------------------------------------------------ part 1 ----

# fetch_image BASE QUERY LIST OUT (run inside a node namespace): fetches each "path digest" of
# LIST from BASE/v2/REPO/<path><QUERY> through sha256sum, a line per fetch in OUT; stops with
# status 1 at the first HTTP status other than 200, curl error or digest mismatch.
fetch_image() {
    local base=$1 query=$2 list=$3 out=$4 path want t0 rc code got secs
    : >"$out"
    while read -r path want; do
        t0=$(date +%s.%N) && : >"$out.hdr"
        curl -sS --connect-timeout 10 --speed-limit 10240 --speed-time 120 -D "$out.hdr" \
            -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
            "$base/v2/$REPO/$path$query" 2>"$out.err" | sha256sum >"$out.sum"
        rc=${PIPESTATUS[0]}
        code=$(awk '/^HTTP\// {c = $2} END {print c + 0}' "$out.hdr")
        got=sha256:$(cut -d' ' -f1 "$out.sum")
        secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
        if ((rc == 0)) && [[ $code == 200 && $got == "$want" ]]; then
            echo "ok $path ${secs}s" >>"$out"
        else
            echo "FAIL $path: HTTP $code, curl exit $rc $(tr '\n' ' ' <"$out.err")$(
                ((rc || code != 200)) || echo "sha256 mismatch ")after ${secs}s" >>"$out"
            return 1
        fi
    done <"$list"
}
export -f fetch_image
export REPO

# run_clients NAME: all nodes pull the image at once, from the origin (NAME direct) or each
# through its own ferry node (NAME ferry). Sets WALL[NAME], ORIGIN[NAME], OK[NAME].
run_clients() {
    local name=$1 before t0 i base query="" pids=() next=15 p
    [[ $name == ferry ]] && query="?ns=$UPSTREAM"
    log "scenario $name: $NODES clients at once"
    before=$(origin_tx) && t0=$(now)
    for ((i = 0; i < NODES; i++)); do
        base=http://$ORIGIN_IP:5000
        [[ $name == ferry ]] && base=http://$(node_ip "$i"):5050
        in_ns "n$i" bash -c 'fetch_image "$@"' _ "$base" "$query" "$TMP/fetch.list" "$TMP/$name-n$i.out" &
        pids+=($!) && PIDS+=($!)
    done
    while :; do
        p=0
        for i in "${pids[@]}"; do kill -0 "$i" 2>/dev/null && p=1 && break; done
        ((p)) || break
        sleep 0.5
        if awk -v a="$(since "$t0")" -v b="$next" 'BEGIN {exit !(a >= b)}'; then
            log "$name: ${next}s, $(mib $(($(origin_tx) - before))) MiB from the origin so far"
            next=$((next + 15))
        fi
    done
    WALL[$name]=$(since "$t0")
    sleep 1 # let the last packets (and any late fetch) reach the counter
    ORIGIN[$name]=$(($(origin_tx) - before))
    OK[$name]=1
    for ((i = 0; i < NODES; i++)); do
        wait "${pids[i]}" ||
            { OK[$name]=0 && fail "$name: client n$i: $(grep FAIL "$TMP/$name-n$i.out" || echo 'no output')"; }
        forget_pid "${pids[i]}"
    done
    log "$name: ${WALL[$name]} s, $(mib "${ORIGIN[$name]}") MiB from the origin"
}

part1() {
    make_site
    start_registry origin "$ORIGIN_IP:5000"
    push_image
    run_clients direct

    local i args
    for ((i = 0; i < NODES; i++)); do
        args=(--upstream "$UPSTREAM=http://$ORIGIN_IP:5000" --registry-listen "$(node_ip "$i"):5050"
            --metrics-listen 127.0.0.1:9464 --p2p-listen "/ip4/$(node_ip "$i")/tcp/4001")
        ((i == 0)) || args+=(--bootstrap "/ip4/$(node_ip 0)/tcp/4001/p2p/$PEER0")
        start_ferry "n$i" "n$i" "${args[@]}"
        ((i > 0)) || PEER0=$(ferry_status n0 | jq -r .p2p.peer_id)
    done
    log "$NODES ferry nodes up (node 0 is $PEER0); waiting for the swarm"
    wait_peers n0 $((NODES - 1))
    PEERS_SEEN=$(for ((i = 0; i < NODES; i++)); do printf '%s ' "$(peer_count "n$i")"; done)
    run_clients ferry
    # Byte counters summed over the nodes, by metric and label.
    METRICS=$(for ((i = 0; i < NODES; i++)); do in_ns "n$i" curl -s 127.0.0.1:9464/metrics || true; done |
        awk '/^ferry_(bytes_served_total|peer_bytes_total|origin_bytes_total)/ {s[$1] += $2}
             END {for (k in s) printf "  %-45s %14.0f  (%.1f MiB)\n", k, s[k], s[k]/1048576}' | sort)
    teardown_site
    rm -rf "$TMP/ferry"
}

# ------------------------------------------------------------------ part 2 ----

part2() {
    local blob=$CACHE/peer-${PEER_MIB}m.bin digest hex out code size secs rc=0 v url_a url_b
    local reg_port a_http a_metrics a_p2p b_http b_metrics b_p2p iperf_port
    for v in reg_port a_http a_metrics a_p2p b_http b_metrics b_p2p iperf_port; do pick_port "$v"; done
    if [[ ! -f $blob.sha256 ]]; then
        log "generating a $PEER_MIB MiB blob in $blob"
        head -c $((PEER_MIB * 1048576)) /dev/urandom | tee "$blob" | sha256sum | cut -d' ' -f1 >"$blob.tmp"
        mv "$blob.tmp" "$blob.sha256"
    fi
    hex=$(<"$blob.sha256") && digest=sha256:$hex
    start_registry - "127.0.0.1:$reg_port"
    push_blob bench/peer "$blob" "$digest"

    start_ferry a - --upstream "$UPSTREAM=$REG" --registry-listen "127.0.0.1:$a_http" \
        --metrics-listen "127.0.0.1:$a_metrics" --p2p-listen "/ip4/127.0.0.1/tcp/$a_p2p"
    url_a="http://127.0.0.1:$a_http/v2/bench/peer/blobs/$digest?ns=$UPSTREAM"
    log "node A pulls the blob from the registry"
    [[ $(curl -sS "$url_a" | sha256sum | cut -d' ' -f1) == "$hex" ]] || die "node A did not serve the blob"
    for _ in $(seq 300); do ferry_status a | jq -e '.store.complete_blobs > 0' >/dev/null && break; sleep 0.1; done

    start_ferry b - --upstream "$UPSTREAM=http://127.0.0.1:9" --registry-listen "127.0.0.1:$b_http" \
        --metrics-listen "127.0.0.1:$b_metrics" --p2p-listen "/ip4/127.0.0.1/tcp/$b_p2p" \
        --bootstrap "/ip4/127.0.0.1/tcp/$a_p2p/p2p/$(ferry_status a | jq -r .p2p.peer_id)"
    url_b="http://127.0.0.1:$b_http/v2/bench/peer/blobs/$digest?ns=$UPSTREAM"
    wait_peers b 1
    log "node B serves the blob (its origin is dead: every byte must come from A)"
    out=$(curl -sS --connect-timeout 10 --max-time 900 --speed-limit 10240 --speed-time 120 -o /dev/null \
        -w '%{http_code} %{size_download} %{time_total}' "$url_b" 2>"$TMP/curl-b.err") || rc=$?
    read -r code size secs <<<"$out"
    P2P_RATE=0
    if ((rc == 0)) && [[ $code == 200 && $size == $((PEER_MIB * 1048576)) ]]; then
        # Timed to /dev/null like iperf3; the bytes are checked by a second (cached) GET.
        P2P_RATE=$(awk -v b="$size" -v s="$secs" 'BEGIN {printf "%.0f", b / s}')
        [[ $(curl -sS "$url_b" | sha256sum | cut -d' ' -f1) == "$hex" ]] ||
            { P2P_RATE=0 && fail "part 2: node B served bytes that do not match $digest"; }
    else
        fail "part 2: GET through node B: HTTP ${code:-none}, curl exit $rc $(tr '\n' ' ' <"$TMP/curl-b.err")after" \
            "${secs:-?}s, ${size:-0} of $((PEER_MIB * 1048576)) bytes; B's last error:" \
            "$(sed -En 's/.* error=//p' "$TMP/ferry/b/ferry.log" | tail -n 1 |
                sed -E 's/(sha256:[0-9a-f]{12})[0-9a-f]{52}/\1../g' | cut -c 1-300)"
    fi
    P2P_INFO=$(curl -s "127.0.0.1:$b_metrics/metrics" | grep -E '^ferry_(bytes_served|peer_bytes|origin_bytes)' | sort || true)

    log "iperf3 over loopback with the same number of bytes"
    iperf3 -s -p "$iperf_port" >"$TMP/iperf3-s.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 50); do ss -ltn | grep -q ":$iperf_port " && break; sleep 0.1; done
    iperf3 -c 127.0.0.1 -p "$iperf_port" -n $((PEER_MIB * 1048576)) -J >"$TMP/iperf3.json" ||
        die "iperf3 client failed: $(head -c 300 "$TMP/iperf3.json")"
    IPERF_RATE=$(jq '.end.sum_received.bits_per_second / 8 | floor' "$TMP/iperf3.json")
}

# -------------------------------------------------------------------- main ----

report() {
    local bound wall_r=FAIL origin_r=FAIL dvf_wall=FAIL dvf_origin=FAIL p2p_r=FAIL s
    bound=$(awk -v b="$IMAGE_BYTES" -v r="$WAN_MBIT" 'BEGIN {printf "%.1f", b * 8 / (r * 1e6)}')
    if ((OK[ferry])); then
        wall_r=$(ratio "${WALL[ferry]}" "$bound")
        origin_r=$(ratio "${ORIGIN[ferry]}" "$IMAGE_BYTES")
        if ((OK[direct])); then
            dvf_wall=$(ratio "${WALL[direct]}" "${WALL[ferry]}")
            dvf_origin=$(ratio "${ORIGIN[direct]}" "${ORIGIN[ferry]}")
        fi
    fi
    ((P2P_RATE == 0)) || p2p_r=$(ratio "$P2P_RATE" "$IPERF_RATE")
    echo
    echo "Part 1: a $(mib "$IMAGE_BYTES") MiB image ($IMAGE_BYTES bytes: $LAYERS random layers, config, manifest)"
    echo "pulled by $NODES nodes at once; WAN $WAN_MBIT Mbit/s both ways;" \
        "LAN $( ((LAN_MBIT > 0)) && echo "$LAN_MBIT Mbit/s per node" || echo unshaped); $(nproc) cores"
    printf '%-18s %10s %16s %9s\n' scenario "wall s" "origin bytes" "x image"
    for s in direct ferry; do
        printf '%-18s %10s %16s %9s  %s\n' "$([[ $s == direct ]] && echo "(a)" || echo "(b)") $s" "${WALL[$s]}" \
            "${ORIGIN[$s]}" "$(ratio "${ORIGIN[$s]}" "$IMAGE_BYTES")" "$( ((OK[$s])) || echo FAILED)"
    done
    printf '%-18s %10s %16s %9s\n' "(c) lower bound" "$bound" "$IMAGE_BYTES" 1.00
    echo "(origin bytes: tx_bytes of the origin's WAN veth, so TCP/IP headers add ~3%;"
    echo " peers each node saw before (b): $PEERS_SEEN)"
    echo "ferry metrics, summed over the $NODES nodes:"
    echo "$METRICS"
    echo
    echo "Part 2: $PEER_MIB MiB over loopback: ferry node B (dead origin) from node A, and iperf3"
    printf '%-40s %10s\n' "ferry, B from A (MiB/s)" "$( ((P2P_RATE > 0)) && mib "$P2P_RATE" || echo FAILED)"
    printf '%-40s %10s\n' "iperf3 (MiB/s)" "$(mib "$IPERF_RATE")"
    [[ -z $P2P_INFO ]] || echo "${P2P_INFO//ferry_/  node B: ferry_}"
    echo
    printf '%-40s %8s   target %-6s %s\n' "ferry wall / lower bound" "$wall_r" "<= $WALL_TARGET" \
        "$(mark "$wall_r" "$WALL_TARGET")"
    printf '%-40s %8s   target %-6s %s\n' "ferry origin bytes / image bytes" "$origin_r" "<= $ORIGIN_TARGET" \
        "$(mark "$origin_r" "$ORIGIN_TARGET")"
    printf '%-40s %8s\n' "direct wall / ferry wall" "$dvf_wall" "direct origin bytes / ferry origin bytes" \
        "$dvf_origin" "ferry p2p rate / iperf3 rate" "$p2p_r"
    ((${#FAILURES[@]} == 0)) || { echo "FAILURES:" && printf '  %s\n' "${FAILURES[@]}"; }
    echo "RESULT wall_vs_bound=$wall_r origin_vs_image=$origin_r direct_vs_ferry=$dvf_wall p2p_vs_iperf3=$p2p_r"
}

main() {
    ((EUID == 0)) || die "run as root (network namespaces)"
    apt_ensure docker-registry iperf3 jq curl iproute2 coreutils || die "cannot install the benchmark's packages"
    release_ferry || die "cannot get a ferry binary"
    unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy
    export NO_PROXY='*' no_proxy='*'
    mkdir -p "$CACHE"
    TMP=$(mktemp -d "$BENCH_TMP/run.XXXXXX")
    local avail need=$(((NODES + 2) * IMAGE_MIB + 2 * PEER_MIB + 512))
    avail=$(($(df --output=avail -k "$BENCH_TMP" | tail -n1) / 1024))
    ((avail > need)) || die "need $need MiB free in $BENCH_TMP, have $avail"
    log "temp dir $TMP, cache $CACHE, ferry $FERRY"
    KEY=$TMP/swarm.key
    "$REPO_ROOT/deploy/make-cluster-key.sh" >"$KEY" && chmod 600 "$KEY"
    make_image
    declare -gA WALL=() ORIGIN=() OK=()
    part1
    part2
    report
    ((${#FAILURES[@]} == 0))
}

main "$@"

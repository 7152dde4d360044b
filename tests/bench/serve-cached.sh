#!/usr/bin/env bash
# Benchmark: serving a cached 1 GiB blob over loopback.
#
#   sudo tests/bench/serve-cached.sh            # ROUNDS=5 by default
#
# Compares, with the same client (curl) and in one run:
#   * ferry node serving the blob from its cache,
#   * Debian's docker-registry (distribution 2.8) serving it directly,
#   * nginx with `sendfile on` serving the same bytes as a static file,
# interleaving the servers over ROUNDS rounds and taking the median per server.
# Then ferry's peak RSS while CLIENTS (10) clients download the blob at once.
#
# Targets: ferry >= 0.9x nginx, ferry >= 1x docker-registry, peak RSS <= 64 MiB.
# A missed target prints MISSED but does not fail the script; errors do.
# Last line: RESULT ferry_vs_nginx=.. ferry_vs_registry=.. peak_rss_mib=..
#
# Environment:
#   ROUNDS=5          throughput rounds
#   CLIENTS=10        concurrent clients in the RSS phase
#   SIZE_MIB=1024     blob size (keep 1024 for the real benchmark)
#   BENCH_TMP=/var/tmp  where the temp dir goes (needs ~3x the blob size free)
#   FERRY=path        use this ferry binary instead of building target/release/ferry
#   KEEP_TMP=1        keep the temp dir (logs) after the run
#
# Runs as root on Debian 12; installs what it needs with apt-get. Only loopback
# addresses are used. The machines this targets have 2 cores: clients and
# servers share them, so absolute numbers are modest; the ratios are the point.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
CLIENTS=${CLIENTS:-10}
SIZE_MIB=${SIZE_MIB:-1024}
SIZE=$((SIZE_MIB * 1024 * 1024))
RSS_TARGET_MIB=64
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=deploy/lib.sh
. "$REPO_ROOT/deploy/lib.sh"

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- setup ----

install_deps() {
    apt_ensure docker-registry nginx-light curl coreutils procps || die "cannot install the benchmark's packages"
}

build_ferry() {
    release_ferry || die "cannot get a ferry binary"
}

# -------------------------------------------------------------- helpers ----

PIDS=()
TMP=""
cleanup() {
    local rc=$?
    set +e
    stop_pids "${PIDS[@]}"
    if [[ -n $TMP && -d $TMP ]]; then
        if [[ ${KEEP_TMP:-0} == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


# wait_http URL PID NAME: wait until URL answers 200 while PID is alive.
wait_http() {
    local url=$1 pid=$2 name=$3
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || die "$name exited during startup (log: $TMP/$name.log)
$(tail -n 20 "$TMP/$name.log" 2>/dev/null)"
        [[ $(curl -s -o /dev/null -w '%{http_code}' "$url" 2>/dev/null) == 200 ]] && return 0
        sleep 0.1
    done
    die "$name not ready after 30 s at $url"
}

forget_pid() {
    local p keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# ---------------------------------------------------------------- servers ----

make_blob() {
    log "writing ${SIZE_MIB} MiB of pseudo-random data"
    mkdir -p "$TMP/www"
    BLOB=$TMP/www/blob
    local hex
    hex=$(head -c "$SIZE" /dev/urandom | tee "$BLOB" | sha256sum | cut -d' ' -f1)
    DIGEST=sha256:$hex
    [[ $(stat -c %s "$BLOB") == "$SIZE" ]] || die "short blob file"
    log "digest $DIGEST"
}

start_registry() {
    REG_PORT=$(free_port)
    REG=http://127.0.0.1:$REG_PORT
    cat >"$TMP/registry.yml" <<EOF
version: 0.1
log: { level: warn, accesslog: { disabled: true } }
storage: { filesystem: { rootdirectory: $TMP/registry-data } }
http: { addr: 127.0.0.1:$REG_PORT }
EOF
    docker-registry serve "$TMP/registry.yml" >"$TMP/registry.log" 2>&1 &
    REG_PID=$!
    PIDS+=("$REG_PID")
    wait_http "$REG/v2/" "$REG_PID" registry
    log "docker-registry on $REG (pid $REG_PID)"
}

# Push the file as a blob with the registry's upload API: POST, then one PUT.
push_blob() {
    local loc sep code
    loc=$(curl -sS -f -X POST -D - -o /dev/null "$REG/v2/bench/blob/blobs/uploads/" |
        awk 'tolower($1)=="location:" {print $2}' | tr -d '\r')
    [[ -n $loc ]] || die "upload POST gave no Location"
    [[ $loc == /* ]] && loc=$REG$loc
    [[ $loc == *\?* ]] && sep='&' || sep='?'
    log "uploading blob to the registry"
    code=$(curl -sS -o "$TMP/put.out" -w '%{http_code}' -X PUT \
        -H 'Content-Type: application/octet-stream' -T "$BLOB" "$loc${sep}digest=$DIGEST")
    [[ $code == 201 ]] || die "blob PUT returned $code: $(head -c 500 "$TMP/put.out")"
    local len
    len=$(curl -sS -f -I "$REG/v2/bench/blob/blobs/$DIGEST" |
        awk 'tolower($1)=="content-length:" {print $2}' | tr -d '\r')
    [[ $len == "$SIZE" ]] || die "registry HEAD says $len bytes, want $SIZE"
}

start_ferry() {
    "$FERRY" node \
        --upstream "bench.local=$REG" \
        --store "$TMP/store" \
        --registry-listen "127.0.0.1:$FERRY_PORT" \
        --metrics-listen "127.0.0.1:$METRICS_PORT" \
        --admin-socket "$TMP/admin.sock" >>"$TMP/ferry.log" 2>&1 &
    FERRY_PID=$!
    PIDS+=("$FERRY_PID")
    wait_http "http://127.0.0.1:$FERRY_PORT/v2/" "$FERRY_PID" ferry
    log "ferry node on 127.0.0.1:$FERRY_PORT (pid $FERRY_PID)"
}

stop_ferry() {
    kill -TERM "$FERRY_PID"
    local rc=0
    wait "$FERRY_PID" || rc=$?
    forget_pid "$FERRY_PID"
    ((rc == 0)) || log "WARNING: ferry exited with status $rc after SIGTERM (want 0)"
}

start_nginx() {
    NGINX_PORT=$(free_port)
    local d=$TMP/nginx user_line=""
    mkdir -p "$d/logs" "$d/tmp"
    ((EUID == 0)) && user_line="user root;"
    cat >"$d/nginx.conf" <<EOF
$user_line
daemon off;
# One process (no master): it does the serving, so its CPU time is easy to read.
master_process off;
worker_processes 1;
pid $d/nginx.pid;
error_log $d/logs/error.log warn;
events { worker_connections 256; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $TMP/www;
    }
}
EOF
    nginx -p "$d" -e "$d/logs/error.log" -c "$d/nginx.conf" -t >"$TMP/nginx.log" 2>&1 ||
        die "nginx config test failed: $(cat "$TMP/nginx.log")"
    nginx -p "$d" -e "$d/logs/error.log" -c "$d/nginx.conf" >>"$TMP/nginx.log" 2>&1 &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
    wait_http "http://127.0.0.1:$NGINX_PORT/blob" "$NGINX_PID" nginx
    log "nginx on 127.0.0.1:$NGINX_PORT (pid $NGINX_PID)"
}

# ----------------------------------------------------------- measurements ----

# fetch URL: download to /dev/null; sets FETCH_SPEED (bytes/s) and FETCH_SRC
# (X-Ferry-Source header or "-"); dies on a wrong status or size.
fetch() {
    local out code size
    out=$(curl -s -o /dev/null -w '%{http_code} %{size_download} %{speed_download} %header{x-ferry-source}' "$1") ||
        die "curl failed for $1"
    read -r code size FETCH_SPEED FETCH_SRC <<<"$out"
    [[ $code == 200 ]] || die "GET $1 returned $code"
    [[ $size == "$SIZE" ]] || die "GET $1 gave $size bytes, want $SIZE"
    FETCH_SPEED=${FETCH_SPEED%%.*}
    FETCH_SRC=${FETCH_SRC:--}
}

median() { sort -g | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b/1048576}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0 ? a/b : 0)}'; }
at_least() { awk -v a="$1" -v b="$2" 'BEGIN {exit !(a >= b)}'; }

throughput() {
    local -A url=(
        [ferry]="http://127.0.0.1:$FERRY_PORT/v2/bench/blob/blobs/$DIGEST?ns=bench.local"
        [registry]="$REG/v2/bench/blob/blobs/$DIGEST"
        [nginx]="http://127.0.0.1:$NGINX_PORT/blob"
    )
    local -A pid=([ferry]=$FERRY_PID [registry]=$REG_PID [nginx]=$NGINX_PID)
    local order=(ferry registry nginx) s r i t0 t1
    local -A speeds=() cpus=()
    log "warm-up download from each server (page cache, connections)"
    for s in "${order[@]}"; do fetch "${url[$s]}"; done
    for ((r = 1; r <= ROUNDS; r++)); do
        # Rotate the order each round so no server always goes first.
        for ((i = 0; i < 3; i++)); do
            s=${order[(i + r) % 3]}
            t0=$(cpu_ticks "${pid[$s]}")
            fetch "${url[$s]}"
            t1=$(cpu_ticks "${pid[$s]}")
            # Server CPU time per GiB served, in ms.
            cpus[$s]+="$(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$SIZE" 'BEGIN {printf "%.0f", t*1000/hz/(n/1073741824)}') "
            if [[ $s == ferry && $FETCH_SRC != cache ]]; then FERRY_SOURCES+="$FETCH_SRC "; fi
            speeds[$s]+="$FETCH_SPEED "
            log "round $r/$ROUNDS $s: $(mib "$FETCH_SPEED") MiB/s, server CPU $((t1 - t0)) ticks"
        done
    done
    for s in "${order[@]}"; do
        MED[$s]=$(tr ' ' '\n' <<<"${speeds[$s]}" | grep . | median)
        MIN[$s]=$(tr ' ' '\n' <<<"${speeds[$s]}" | grep . | sort -g | head -n1)
        MAX[$s]=$(tr ' ' '\n' <<<"${speeds[$s]}" | grep . | sort -g | tail -n1)
        CPU[$s]=$(tr ' ' '\n' <<<"${cpus[$s]}" | grep . | median)
    done
}

verify_sha() {
    local got
    got=$(curl -sS -f "http://127.0.0.1:$FERRY_PORT/v2/bench/blob/blobs/$DIGEST?ns=bench.local" | sha256sum | cut -d' ' -f1)
    [[ sha256:$got == "$DIGEST" ]] || die "ferry served bytes with sha256:$got, want $DIGEST"
    log "sha256 of a ferry download matches the digest"
}

# User + system CPU time of a process (all its threads), in clock ticks.
cpu_ticks() {
    local stat f
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) } # fields after "pid (comm) "; utime, stime are fields 14, 15
    read -r -a f <<<"$stat"
    echo $((f[11] + f[12]))
}

status_kib() { # status_kib PID FIELD -> value in kB from /proc/PID/status
    local k v _
    while read -r k v _; do
        [[ $k == "$2:" ]] && { echo "$v"; return; }
    done <"/proc/$1/status"
    echo 0
}

rss_phase() {
    log "restarting ferry on the same store for the RSS phase"
    stop_ferry
    start_ferry
    local blob_url="http://127.0.0.1:$FERRY_PORT/v2/bench/blob/blobs/$DIGEST?ns=bench.local"
    [[ $(curl -s -o /dev/null -I -w '%{http_code}' "$blob_url") == 200 ]] || die "HEAD of the cached blob failed"
    RSS_IDLE_KIB=$(status_kib "$FERRY_PID" VmRSS)
    log "$CLIENTS concurrent downloads from ferry"
    local pids=() i start end alive rss
    RSS_SAMPLED_KIB=0
    start=$(date +%s.%N)
    for ((i = 0; i < CLIENTS; i++)); do
        curl -s -o /dev/null -w '%{http_code} %{size_download}\n' "$blob_url" >"$TMP/client$i.out" &
        pids+=($!)
    done
    while :; do
        rss=$(status_kib "$FERRY_PID" VmRSS)
        ((rss > RSS_SAMPLED_KIB)) && RSS_SAMPLED_KIB=$rss
        alive=0
        for i in "${pids[@]}"; do kill -0 "$i" 2>/dev/null && alive=1 && break; done
        ((alive)) || break
        sleep 0.05
    done
    end=$(date +%s.%N)
    for i in "${pids[@]}"; do wait "$i" || die "a concurrent client failed"; done
    for ((i = 0; i < CLIENTS; i++)); do
        [[ $(cat "$TMP/client$i.out") == "200 $SIZE" ]] || die "client $i got: $(cat "$TMP/client$i.out")"
    done
    RSS_HWM_KIB=$(status_kib "$FERRY_PID" VmHWM)
    CONC_MIBS=$(awk -v n="$CLIENTS" -v s="$SIZE" -v a="$start" -v b="$end" 'BEGIN {printf "%.1f", n*s/(b-a)/1048576}')
}

# ------------------------------------------------------------------ main ----

main() {
    install_deps
    build_ferry
    "$FERRY" node --help >/dev/null 2>&1 || die "$FERRY node --help failed"
    LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
    TMP=$(mktemp -d "${BENCH_TMP:-/var/tmp}/ferry-bench.XXXXXX")
    # The file, the registry's copy and ferry's copy, plus some slack.
    local avail_kib
    avail_kib=$(df --output=avail -k "$TMP" | tail -n1)
    ((avail_kib / 1024 > 3 * SIZE_MIB + 256)) || die "need $((3 * SIZE_MIB + 256)) MiB free in $TMP, have $((avail_kib / 1024))"
    log "temp dir $TMP"
    make_blob
    start_registry
    push_blob
    FERRY_PORT=$(free_port)
    METRICS_PORT=$(free_port)
    start_ferry
    log "warming ferry's cache (one GET through ferry from the registry)"
    local out
    out=$(curl -s -o /dev/null -w '%{http_code} %{size_download} %header{x-ferry-source}' \
        "http://127.0.0.1:$FERRY_PORT/v2/bench/blob/blobs/$DIGEST?ns=bench.local")
    [[ $out == "200 $SIZE"* ]] || die "warm-up GET through ferry: $out"
    log "warm-up GET: $out"
    # The interface keeps complete, verified blobs at STORE/blobs/sha256/<hex>.
    local cached=$TMP/store/blobs/sha256/${DIGEST#sha256:}
    for _ in $(seq 1200); do [[ -f $cached ]] && break; sleep 0.1; done
    [[ -f $cached ]] || die "ferry did not store the blob at $cached within 120 s of a full GET"
    [[ $(stat -c %s "$cached") == "$SIZE" ]] || die "$cached has the wrong size"
    start_nginx

    declare -gA MED=() MIN=() MAX=() CPU=()
    CLK_TCK=$(getconf CLK_TCK)
    FERRY_SOURCES=""
    throughput
    verify_sha
    rss_phase

    local vs_nginx vs_reg peak_mib ok1 ok2 ok3
    vs_nginx=$(ratio "${MED[ferry]}" "${MED[nginx]}")
    vs_reg=$(ratio "${MED[ferry]}" "${MED[registry]}")
    peak_mib=$(awk -v a="$RSS_HWM_KIB" -v b="$RSS_SAMPLED_KIB" 'BEGIN {printf "%.1f", (a > b ? a : b)/1024}')
    at_least "$vs_nginx" 0.9 && ok1=ok || ok1=MISSED
    at_least "$vs_reg" 1.0 && ok2=ok || ok2=MISSED
    at_least "$RSS_TARGET_MIB" "$peak_mib" && ok3=ok || ok3=MISSED

    echo
    echo "Serving a cached ${SIZE_MIB} MiB blob over loopback: curl, $ROUNDS interleaved rounds, $(nproc) cores"
    echo "(load average after the build: $LOAD_BEFORE; clients and servers share the cores)"
    printf '%-26s %12s %10s %10s %14s %14s\n' server "median MiB/s" "min" "max" "median B/s" "CPU ms/GiB"
    local s label
    for s in ferry registry nginx; do
        case $s in
            ferry) label="ferry node (cache)" ;;
            registry) label="docker-registry (direct)" ;;
            nginx) label="nginx (sendfile)" ;;
        esac
        printf '%-26s %12s %10s %10s %14s %14s\n' "$label" "$(mib "${MED[$s]}")" "$(mib "${MIN[$s]}")" \
            "$(mib "${MAX[$s]}")" "${MED[$s]}" "${CPU[$s]}"
    done
    echo "(CPU ms/GiB: the server's user+system CPU time per GiB served, median. On loopback the client"
    echo " is often the bottleneck, and the kernel's TCP work for both ends is partly charged to the sender.)"
    [[ -z $FERRY_SOURCES ]] || echo "note: some measured ferry responses had X-Ferry-Source: $FERRY_SOURCES(want cache)"
    echo
    printf '%-40s %8s   target %-8s %s\n' "ferry / nginx" "$vs_nginx" ">= 0.9" "$ok1"
    printf '%-40s %8s   target %-8s %s\n' "ferry / docker-registry" "$vs_reg" ">= 1.0" "$ok2"
    printf '%-40s %8s   target %-8s %s\n' "ferry peak RSS, $CLIENTS clients (MiB)" "$peak_mib" "<= $RSS_TARGET_MIB" "$ok3"
    printf '  (VmHWM %s MiB, max sampled VmRSS %s MiB, RSS before the clients %s MiB, aggregate %s MiB/s)\n' \
        "$(mib $((RSS_HWM_KIB * 1024)))" "$(mib $((RSS_SAMPLED_KIB * 1024)))" \
        "$(mib $((RSS_IDLE_KIB * 1024)))" "$CONC_MIBS"
    echo "ferry metrics of the restarted node (RSS phase only):"
    curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep -E '^ferry_(bytes_served_total|origin_bytes_total)' | sed 's/^/  /' || true
    echo "RESULT ferry_vs_nginx=$vs_nginx ferry_vs_registry=$vs_reg peak_rss_mib=$peak_mib"
}

main "$@"

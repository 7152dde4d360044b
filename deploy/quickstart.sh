#!/usr/bin/env bash
# Ferry quickstart: pull a container image through a ferry node, twice.
#
#   sudo deploy/quickstart.sh          # run the demo, then clean everything up
#   sudo deploy/quickstart.sh --keep   # leave it running and print how to poke at it
#
# On a fresh Debian 12 machine (as root) this:
#   1. installs containerd, runc, docker-registry, skopeo, umoci, busybox-static, curl, jq
#   2. builds ferry (cargo build --release --bin ferry)
#   3. starts a throwaway registry on loopback and pushes a tiny busybox image to it,
#      under the name demo.local/demo/busybox:latest
#   4. starts `ferry node` with demo.local as its only upstream
#   5. starts a containerd that lives entirely in a temp dir (its own root, state, socket)
#   6. points that containerd at ferry (`ferry containerd-config --apply`)
#   7. pulls the image and runs a container from it: bytes come from the registry (origin)
#   8. deletes the image from containerd and pulls again: bytes come from ferry's cache
#   9. prints where the bytes came from (`ferry status`, ferry_bytes_served_total)
# Nothing listens on anything but 127.0.0.1.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=deploy/lib.sh
. "$REPO_ROOT/deploy/lib.sh"
IMAGE=demo.local/demo/busybox:latest
KEEP=0
W=""    # the work dir; everything lives in it
PIDS=() # processes we started, stopped in reverse order

usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf '\nquickstart: ERROR: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------ preparation ----

parse_args() {
    while (($#)); do
        case $1 in
            --keep) KEEP=1 ;;
            -h | --help) usage; exit 0 ;;
            *) usage >&2; die "unknown argument: $1" ;;
        esac
        shift
    done
}

# Debian packages the demo needs. Package scripts are kept from starting system
# services (e.g. the distro's own containerd): the demo runs its own copies.
install_packages() {
    step "Checking Debian packages"
    apt_ensure containerd runc docker-registry skopeo umoci busybox-static curl jq util-linux || die "cannot install the demo's packages"
}

build_ferry() {
    step "Building ferry"
    release_ferry || die "cannot get a ferry binary"
}


# wait_until NAME PID CMD...: retry CMD for up to 30 s while PID is alive.
wait_until() {
    local name=$1 pid=$2
    shift 2
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || die "$name exited; its log ($W/$name.log):
$(tail -n 20 "$W/$name.log" 2>/dev/null)"
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    die "$name did not become ready in 30 s (log: $W/$name.log)"
}

http_ok() { [[ $(curl -s -o /dev/null -w '%{http_code}' "$1") == 200 ]]; }

# ------------------------------------------------------------------ steps ----

# A throwaway upstream registry (Debian's docker-registry, i.e. distribution 2.8).
start_registry() {
    REG_PORT=$(free_port)
    REG_URL=http://127.0.0.1:$REG_PORT
    step "Starting an upstream registry on $REG_URL (stands in for demo.local)"
    cat >"$W/registry.yml" <<EOF
version: 0.1
log: { level: warn }
storage: { filesystem: { rootdirectory: $W/registry-data } }
http: { addr: 127.0.0.1:$REG_PORT }
EOF
    docker-registry serve "$W/registry.yml" >"$W/registry.log" 2>&1 &
    PIDS+=($!)
    wait_until registry $! http_ok "$REG_URL/v2/"
}

# A one-layer image holding a static busybox, built with umoci, pushed with skopeo.
push_demo_image() {
    step "Building a tiny busybox image and pushing it as $IMAGE"
    local d=$W/image
    mkdir -p "$d" && cd "$d"
    umoci init --layout oci
    umoci new --image oci:latest
    umoci unpack --rootless --image oci:latest bundle
    mkdir -p bundle/rootfs/bin
    cp /bin/busybox bundle/rootfs/bin/
    ln -s busybox bundle/rootfs/bin/sh
    umoci repack --image oci:latest bundle
    umoci config --image oci:latest --config.cmd /bin/sh
    skopeo copy -q --dest-tls-verify=false oci:oci:latest "docker://127.0.0.1:$REG_PORT/demo/busybox:latest"
    cd "$W"
    info "pushed to $REG_URL/v2/demo/busybox/manifests/latest"
}

# The ferry node: a caching mirror in front of demo.local.
start_ferry() {
    FERRY_ADDR=127.0.0.1:$(free_port)
    METRICS_ADDR=127.0.0.1:$(free_port)
    ADMIN_SOCK=$W/ferry-admin.sock
    step "Starting ferry node (mirror on $FERRY_ADDR, metrics on $METRICS_ADDR)"
    "$FERRY" node \
        --upstream "demo.local=$REG_URL" \
        --store "$W/ferry-store" \
        --registry-listen "$FERRY_ADDR" \
        --metrics-listen "$METRICS_ADDR" \
        --admin-socket "$ADMIN_SOCK" >"$W/ferry.log" 2>&1 &
    PIDS+=($!)
    wait_until ferry $! http_ok "http://$FERRY_ADDR/v2/"
}

# containerd in a sandbox: own root, state, sockets and opt dir, all under $W.
# (containerd 1.6 still puts its shims' sockets and ctr's I/O fifos under
# /run/containerd/{s,fifo}; they go away with the container.)
start_containerd() {
    CTD=$W/containerd
    SOCK=$CTD/containerd.sock
    step "Starting a sandboxed containerd (everything under $CTD)"
    mkdir -p "$CTD"
    cat >"$CTD/config.toml" <<EOF
version = 2
root = "$CTD/root"
state = "$CTD/state"
# The demo drives containerd with ctr; the Kubernetes (CRI) plugin is not needed.
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$CTD/opt"
EOF
    containerd --config "$CTD/config.toml" >"$W/containerd.log" 2>&1 &
    PIDS+=($!)
    wait_until containerd $! ctr --address "$SOCK" version
}

ctr_() { ctr --address "$SOCK" "$@"; }

# ferry writes containerd's hosts.toml: demo.local is to be fetched through ferry.
configure_containerd() {
    CERTS_D=$W/certs.d
    step "Pointing containerd at ferry: ferry containerd-config --apply $CERTS_D"
    "$FERRY" containerd-config --registry-listen "$FERRY_ADDR" \
        --upstream "demo.local=$REG_URL" --apply "$CERTS_D"
    info "$CERTS_D/demo.local/hosts.toml:"
    sed 's/^/        /' "$CERTS_D/demo.local/hosts.toml"
}

# Bytes ferry has served so far, by source: "<cache> <origin>".
served_bytes() {
    curl -s "http://$METRICS_ADDR/metrics" | awk '
        /^ferry_bytes_served_total\{.*source="cache"/  {c = $NF}
        /^ferry_bytes_served_total\{.*source="origin"/ {o = $NF}
        END {printf "%d %d\n", c, o}'
}

# pull LABEL: pull the image through ferry and say what ferry served for it.
pull() {
    local before after t0 t1
    read -r -a before <<<"$(served_bytes)"
    t0=$(date +%s.%N)
    ctr_ image pull --hosts-dir "$CERTS_D" "$IMAGE"
    t1=$(date +%s.%N)
    read -r -a after <<<"$(served_bytes)"
    info "$1 took $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b-a}') s;" \
        "ferry served $((after[1] - before[1])) bytes fetched from the registry (origin)" \
        "and $((after[0] - before[0])) bytes from its cache"
}

first_pull_and_run() {
    step "First pull: containerd -> ferry -> registry (ferry fetches and caches)"
    pull "first pull"
    step "Running a container from the pulled image"
    ctr_ run --rm --runc-root "$CTD/runc" "$IMAGE" demo1 \
        /bin/sh -c 'echo hello from a container pulled through ferry'
}

# Remove the image; containerd's garbage collector drops its blobs and snapshots.
forget_image() {
    step "Deleting the image from containerd (image rm --sync garbage-collects its blobs)"
    ctr_ image rm --sync "$IMAGE"
    local left
    left=$(ctr_ content ls -q | wc -l)
    info "blobs left in containerd's content store: $left"
    ((left == 0)) || die "containerd still holds $left blobs"
}

second_pull() {
    step "Second pull: containerd -> ferry, served from ferry's cache"
    pull "second pull"
}

report() {
    step "Where the bytes came from: ferry status"
    "$FERRY" status --admin-socket "$ADMIN_SOCK" | sed 's/^/    /'
    step "Where the bytes came from: ferry's metrics (http://$METRICS_ADDR/metrics)"
    curl -s "http://$METRICS_ADDR/metrics" |
        grep -E '^ferry_(bytes_served_total|origin_bytes_total|cache_hits_total|cache_misses_total)' |
        sed 's/^/    /'
}

# ---------------------------------------------------------------- cleanup ----

stop_everything() {
    local p
    # Containers first (there are none after `ctr run --rm`, unless interrupted).
    if [[ -S ${SOCK:-/nonexistent} ]]; then
        for p in $(ctr_ task ls -q 2>/dev/null); do ctr_ task kill -s KILL "$p" >/dev/null 2>&1; done
        sleep 0.2
        for p in $(ctr_ task ls -q 2>/dev/null); do ctr_ task delete -f "$p" >/dev/null 2>&1; done
        for p in $(ctr_ container ls -q 2>/dev/null); do ctr_ container delete "$p" >/dev/null 2>&1; done
    fi
    for ((p = ${#PIDS[@]} - 1; p >= 0; p--)); do kill -TERM "${PIDS[p]}" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    # Snapshot mounts containerd may have left under the sandbox, deepest first.
    findmnt -rn -o TARGET | grep -F "$W/" | sort -r | while read -r m; do umount -l "$m" || true; done
    rm -rf "$W"
}

on_exit() {
    local rc=$?
    set +e
    [[ -n $W && -d $W ]] || exit "$rc"
    if ((KEEP && rc == 0)); then exit 0; fi
    step "Cleaning up"
    stop_everything
    info "stopped ferry, containerd and the registry; removed $W"
    exit "$rc"
}

# With --keep: leave everything up, write a stop script, say how to look around.
keep_running() {
    {
        echo '#!/usr/bin/env bash'
        echo "# Stops the ferry quickstart started in $W"
        echo "kill ${PIDS[*]} 2>/dev/null; sleep 2; kill -9 ${PIDS[*]} 2>/dev/null"
        echo "findmnt -rn -o TARGET | grep -F '$W/' | sort -r | xargs -r -n1 umount -l"
        echo "rm -rf '$W'"
    } >"$W/stop.sh"
    chmod +x "$W/stop.sh"
    step "Left running (--keep)"
    cat <<EOF
    ferry node      mirror http://$FERRY_ADDR  metrics http://$METRICS_ADDR/metrics  log $W/ferry.log
    registry        $REG_URL  (demo.local)
    containerd      $SOCK  log $W/containerd.log

    $FERRY status --admin-socket $ADMIN_SOCK --json | jq .traffic
    curl -s http://$METRICS_ADDR/metrics | grep ^ferry_
    curl -sI 'http://$FERRY_ADDR/v2/demo/busybox/manifests/latest?ns=demo.local'
    ctr --address $SOCK image ls
    ctr --address $SOCK image pull --hosts-dir $CERTS_D $IMAGE
    ctr --address $SOCK run --rm --runc-root $CTD/runc -t $IMAGE sh1 /bin/sh

    Stop and remove everything: $W/stop.sh
EOF
}

# ------------------------------------------------------------------- main ----

main() {
    parse_args "$@"
    ((EUID == 0)) || die "run as root (containerd and runc need it)"
    install_packages
    build_ferry
    [[ -x $FERRY ]] || die "no ferry binary at $FERRY"
    W=$(mktemp -d "${TMPDIR:-/tmp}/ferry-quickstart.XXXXXX")
    trap on_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    cd "$W"
    info "work dir: $W"

    start_registry
    push_demo_image
    start_ferry
    start_containerd
    configure_containerd
    first_pull_and_run
    forget_image
    second_pull
    report
    if ((KEEP)); then keep_running; else step "Done"; fi
}

main "$@"

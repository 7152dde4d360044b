#!/usr/bin/env bash
# Ferry quickstart: pull a container image through a ferry node, twice; then, with the registry
# gone, get it through a second ferry node from the first one (P2P).
#
#   sudo deploy/quickstart.sh          # run the demo, then clean everything up
#   sudo deploy/quickstart.sh --keep   # leave it running and print how to poke at it
#
# On a fresh Debian 12 machine (as root) this:
#   1. installs containerd, runc, docker-registry, skopeo, umoci, busybox-static, curl, jq
#   2. builds ferry (cargo build --release --bin ferry)
#   3. starts a throwaway registry on loopback and pushes a tiny busybox image to it,
#      under the name demo.local/demo/busybox:latest
#   4. makes a cluster key (deploy/make-cluster-key.sh) for a P2P site of two ferry nodes
#   5. starts ferry node A with demo.local as its only upstream and P2P on
#   6. starts a containerd that lives entirely in a temp dir (its own root, state, socket)
#   7. points that containerd at node A (`ferry containerd-config --apply`)
#   8. pulls the image and runs a container from it: bytes come from the registry (origin)
#   9. deletes the image from containerd and pulls again: bytes come from A's cache
#  10. prints where A's bytes came from (`ferry status`, ferry_bytes_served_total)
#  11. starts ferry node B the same way, joining A (--bootstrap), and waits until they connect
#  12. stops the registry (the site's WAN is down) and fetches the image by digest through
#      node B with curl, checking every blob against its digest: bytes come from A (peers)
#  13. prints where B's bytes came from (`ferry status`, ferry_bytes_served_total)
#  14. brings the registry back, pushes a second image for a "rollout" of two GPU pods, plans it
#      with `ferry prewarm plan` over a two-node cluster snapshot (both nodes named as the ferry
#      nodes), and has both nodes fetch it ahead of time with `ferry prewarm apply`, signed with
#      an operator key from `ferry prewarm keygen` that the nodes were started with
# Nothing listens on anything but 127.0.0.1.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=deploy/lib.sh
. "$REPO_ROOT/deploy/lib.sh"
IMAGE=demo.local/demo/busybox:latest
# What the demo asks for when it fetches a manifest itself (curl).
MANIFEST_TYPES='application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json'
KEEP=0
W=""    # the work dir; everything lives in it
PIDS=() # processes we started, stopped in reverse order

# The header comment above, without its '#'s.
usage() { awk 'NR == 1 {next} /^#/ {sub(/^# ?/, ""); print; next} {exit}' "${BASH_SOURCE[0]}"; }
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

# log_tail NAME: the end of $W/NAME.log, for error messages.
log_tail() { printf 'its log (%s):\n%s' "$W/$1.log" "$(tail -n 20 "$W/$1.log" 2>/dev/null)"; }

# wait_until [-t SECS] [-m WHAT] [-h HINT] NAME PID CMD...: retry CMD for up to SECS (30) s while
# PID is alive. When time runs out, says "NAME WHAT within SECS s" (WHAT: "did not become ready"),
# NAME's log, and HINT.
wait_until() {
    local secs=30 what="did not become ready" hint=""
    while [[ $1 == -[tmh] ]]; do
        case $1 in
            -t) secs=$2 ;;
            -m) what=$2 ;;
            -h) hint=$'\n'$2 ;;
        esac
        shift 2
    done
    local name=$1 pid=$2 end=$((SECONDS + secs))
    shift 2
    while :; do
        kill -0 "$pid" 2>/dev/null || die "$name exited; $(log_tail "$name")"
        if "$@" >/dev/null 2>&1; then return 0; fi
        ((SECONDS < end)) || break
        sleep 0.1
    done
    die "$name $what within $secs s; $(log_tail "$name")$hint"
}

http_ok() { [[ $(curl -s -o /dev/null -w '%{http_code}' "$1") == 200 ]]; }

# node_status SOCK FILTER: jq FILTER applied to `ferry status --json` of the node at SOCK; fails
# when the node does not answer or FILTER gives null or false.
node_status() { "$FERRY" status --json --admin-socket "$1" | jq -er "$2"; }

# ------------------------------------------------------------------ steps ----

# A throwaway upstream registry (Debian's docker-registry, i.e. distribution 2.8).
start_registry() {
    REG_PORT=${REG_PORT:-$(free_port)}
    REG_URL=http://127.0.0.1:$REG_PORT
    step "Starting an upstream registry on $REG_URL (stands in for demo.local)"
    cat >"$W/registry.yml" <<EOF
version: 0.1
log: { level: warn }
storage: { filesystem: { rootdirectory: $W/registry-data } }
http: { addr: 127.0.0.1:$REG_PORT }
EOF
    docker-registry serve "$W/registry.yml" >"$W/registry.log" 2>&1 &
    REG_PID=$!
    PIDS+=("$REG_PID")
    wait_until registry "$REG_PID" http_ok "$REG_URL/v2/"
}

# push_image REPO:TAG [MARKER]: a one-layer image holding a static busybox (and a file /marker
# holding MARKER), built with umoci, pushed with skopeo.
push_image() {
    local d=$W/image-${1//[:\/]/-}
    mkdir -p "$d" && cd "$d"
    umoci init --layout oci
    umoci new --image oci:latest
    umoci unpack --rootless --image oci:latest bundle
    mkdir -p bundle/rootfs/bin
    cp /bin/busybox bundle/rootfs/bin/
    ln -s busybox bundle/rootfs/bin/sh
    [[ -z ${2:-} ]] || printf '%s\n' "$2" >bundle/rootfs/marker
    umoci repack --image oci:latest bundle
    umoci config --image oci:latest --config.cmd /bin/sh
    skopeo copy -q --dest-tls-verify=false oci:oci:latest "docker://127.0.0.1:$REG_PORT/$1"
    cd "$W"
    info "pushed to $REG_URL/v2/${1%:*}/manifests/${1#*:}"
}
push_demo_image() {
    step "Building a tiny busybox image and pushing it as $IMAGE"
    push_image demo/busybox:latest
}

# The site's cluster key: only nodes holding it can connect to each other. And the operator's
# key: nodes carry out only prewarm orders signed with it.
make_keys() {
    KEY=$W/swarm.key
    step "Making a cluster key for the site: deploy/make-cluster-key.sh > $KEY"
    (umask 077 && "$REPO_ROOT/deploy/make-cluster-key.sh" >"$KEY") || die "cannot make a cluster key"
    OPERATOR_KEY=$W/operator.key
    step "Making an operator key for prewarm orders: ferry prewarm keygen -o $OPERATOR_KEY"
    OPERATOR_PUB=$("$FERRY" prewarm keygen -o "$OPERATOR_KEY" 2>/dev/null) || die "cannot make an operator key"
    info "nodes will trust $OPERATOR_PUB (--operator-key)"
}

# start_node NAME MIRROR_ADDR METRICS_ADDR ADMIN_SOCK P2P_PORT [FLAG...]: a ferry node, a caching
# mirror in front of demo.local, in the demo's P2P site: region "demo", cluster key $KEY, mDNS off
# (peers come from --bootstrap), node name NAME, taking prewarm orders signed with the operator
# key. Its store is $W/NAME-store, its log $W/NAME.log.
start_node() {
    local name=$1 addr=$2 metrics=$3 sock=$4 p2p_port=$5 pid
    shift 5
    "$FERRY" node \
        --upstream "demo.local=$REG_URL" \
        --store "$W/$name-store" \
        --registry-listen "$addr" \
        --metrics-listen "$metrics" \
        --admin-socket "$sock" \
        --p2p-listen "/ip4/127.0.0.1/tcp/$p2p_port" \
        --psk-file "$KEY" --region demo --mdns false \
        --node-name "$name" --operator-key "$OPERATOR_PUB" \
        "$@" >"$W/$name.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_until "$name" "$pid" http_ok "http://$addr/v2/"
    wait_until -m "reported no P2P peer id" "$name" "$pid" node_status "$sock" .p2p.peer_id
}

# Node A: the node containerd pulls through.
start_node_a() {
    A_ADDR=127.0.0.1:$(free_port)
    A_METRICS=127.0.0.1:$(free_port)
    A_SOCK=$W/ferry-a.sock
    A_P2P_PORT=$(free_port)
    step "Starting ferry node A (mirror on $A_ADDR, metrics on $A_METRICS, P2P on 127.0.0.1:$A_P2P_PORT)"
    start_node ferry-a "$A_ADDR" "$A_METRICS" "$A_SOCK" "$A_P2P_PORT"
    A_PEER_ID=$(node_status "$A_SOCK" .p2p.peer_id)
    A_MULTIADDR=/ip4/127.0.0.1/tcp/$A_P2P_PORT/p2p/$A_PEER_ID
    info "node A's peer id: $A_PEER_ID"
}

# Node B: a second node of the site (another machine in real life), joining A once A has the
# image. (Were B up during A's pull, B would own some of the pieces by rendezvous hashing and fetch
# them from the origin for A: the site would still fetch the image once, but which bytes B then
# serves from its own cache and which from A would depend on the nodes' random peer ids.)
start_node_b() {
    B_ADDR=127.0.0.1:$(free_port)
    B_METRICS=127.0.0.1:$(free_port)
    B_SOCK=$W/ferry-b.sock
    B_P2P_PORT=$(free_port)
    step "Starting ferry node B (mirror on $B_ADDR, metrics on $B_METRICS, P2P on 127.0.0.1:$B_P2P_PORT)"
    info "same upstream and cluster key; joins node A: --bootstrap $A_MULTIADDR"
    start_node ferry-b "$B_ADDR" "$B_METRICS" "$B_SOCK" "$B_P2P_PORT" --bootstrap "$A_MULTIADDR"
    info "waiting (up to 20 s) for node B to connect to node A"
    wait_until -t 20 -m "did not connect to node A" \
        -h "Nodes connect only when they hold the same cluster key. Node A's log: $W/ferry-a.log" \
        ferry-b "${PIDS[-1]}" node_status "$B_SOCK" '.p2p.peers | length >= 1'
    info "node B ($(node_status "$B_SOCK" .p2p.peer_id)) is connected to:" \
        "$(node_status "$B_SOCK" '[.p2p.peers[] | "\(.peer_id) (region \(.region))"] | join(", ")')"
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

# ferry writes containerd's hosts.toml: demo.local is to be fetched through node A.
configure_containerd() {
    CERTS_D=$W/certs.d
    step "Pointing containerd at node A: ferry containerd-config --apply $CERTS_D"
    "$FERRY" containerd-config --registry-listen "$A_ADDR" \
        --upstream "demo.local=$REG_URL" --apply "$CERTS_D"
    info "$CERTS_D/demo.local/hosts.toml:"
    sed 's/^/        /' "$CERTS_D/demo.local/hosts.toml"
}

# served_bytes METRICS_ADDR: bytes a node has served so far, by source: "<cache> <peer> <origin>".
served_bytes() {
    curl -s "http://$1/metrics" | awk '
        /^ferry_bytes_served_total\{.*source="cache"/  {c = $NF}
        /^ferry_bytes_served_total\{.*source="peer"/   {p = $NF}
        /^ferry_bytes_served_total\{.*source="origin"/ {o = $NF}
        END {printf "%d %d %d\n", c, p, o}'
}

# seconds_since T0: seconds since T0 (from date +%s.%N), to 2 decimals.
seconds_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b-a}'; }

# pull LABEL: pull the image through node A and say what A served for it.
pull() {
    local before after t0 took
    read -r -a before <<<"$(served_bytes "$A_METRICS")"
    t0=$(date +%s.%N)
    ctr_ image pull --hosts-dir "$CERTS_D" "$IMAGE"
    took=$(seconds_since "$t0")
    read -r -a after <<<"$(served_bytes "$A_METRICS")"
    info "$1 took $took s; node A served $((after[2] - before[2])) bytes fetched from the registry (origin)" \
        "and $((after[0] - before[0])) bytes from its cache"
}

first_pull_and_run() {
    step "First pull: containerd -> node A -> registry (A fetches and caches)"
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
    step "Second pull: containerd -> node A, served from A's cache"
    pull "second pull"
}

# report NODE SOCK METRICS_ADDR: `ferry status` and the traffic metrics of one node.
report() {
    step "Where node $1's bytes came from: ferry status --admin-socket $2"
    "$FERRY" status --admin-socket "$2" | sed 's/^/    /'
    step "Where node $1's bytes came from: its metrics (http://$3/metrics)"
    curl -s "http://$3/metrics" |
        grep -E '^ferry_(bytes_served_total|origin_bytes_total|cache_hits_total|cache_misses_total|peer_bytes_total)' |
        sed 's/^/    /'
}

# The image's manifest digest, asked of node A while the registry is up: with the WAN down a
# digest resolves on every node of the site, a tag only on nodes that resolved it before.
resolve_digest() {
    step "Resolving $IMAGE to a digest through node A"
    local head
    head=$(curl -sfI -H "accept: $MANIFEST_TYPES" "http://$A_ADDR/v2/demo/busybox/manifests/latest?ns=demo.local") ||
        die "node A cannot resolve $IMAGE; $(log_tail ferry-a)"
    DIGEST=$(tr -d '\r' <<<"$head" | awk 'tolower($1) == "docker-content-digest:" {print $2}')
    [[ $DIGEST == sha256:* ]] || die "node A gave no manifest digest for $IMAGE:
$head"
    info "$IMAGE is demo.local/demo/busybox@$DIGEST"
}

# The site's WAN goes down: the registry (the origin) stops; its port refuses connections.
stop_registry() {
    step "Stopping the registry: the site's WAN is down, demo.local is gone"
    kill -TERM "$REG_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$REG_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$REG_PID" 2>/dev/null || true
    wait "$REG_PID" 2>/dev/null || true
    local p kept=()
    for p in "${PIDS[@]}"; do [[ $p == "$REG_PID" ]] || kept+=("$p"); done
    PIDS=("${kept[@]}")
    http_ok "$REG_URL/v2/" && die "the registry still answers on $REG_URL"
    info "curl $REG_URL/v2/: $(curl -sS "$REG_URL/v2/" 2>&1 | head -n 1 || true)"
}

# b_get PATH OUT: GET http://B/v2/demo/busybox/PATH?ns=demo.local into OUT, or fail with B's log.
b_get() {
    curl -sf -o "$2" -H "accept: $MANIFEST_TYPES" "http://$B_ADDR/v2/demo/busybox/$1?ns=demo.local" ||
        die "node B could not serve $1 with the registry down; $(log_tail ferry-b)"
}

# check_digest FILE DIGEST: FILE's sha256 is DIGEST.
check_digest() {
    local got
    got=sha256:$(sha256sum "$1" | cut -d ' ' -f 1)
    [[ $got == "$2" ]] || die "$1 should have digest $2 but has $got"
}

# With the registry gone, node B gets the image from node A: the manifest by digest, then the
# config and the layers it lists, each checked against its digest.
fetch_through_b() {
    step "Fetching the image by digest through node B, with the registry down: curl -> node B -> node A"
    local d=$W/fetched-through-b digest=$DIGEST before after t0 took blob arch
    mkdir -p "$d"
    read -r -a before <<<"$(served_bytes "$B_METRICS")"
    t0=$(date +%s.%N)
    b_get "manifests/$digest" "$d/manifest.json"
    check_digest "$d/manifest.json" "$digest"
    info "manifest $digest: $(stat -c %s "$d/manifest.json") bytes, digest checked"
    if jq -e '.manifests' "$d/manifest.json" >/dev/null; then
        # An image index: take the manifest for this machine's platform.
        arch=$(dpkg --print-architecture)
        digest=$(jq -r --arg arch "$arch" \
            'first(.manifests[] | select(.platform.os == "linux" and .platform.architecture == $arch) | .digest) // empty' \
            "$d/manifest.json")
        [[ -n $digest ]] || die "the image index $DIGEST has no linux/$arch manifest"
        mv "$d/manifest.json" "$d/index.json"
        b_get "manifests/$digest" "$d/manifest.json"
        check_digest "$d/manifest.json" "$digest"
        info "manifest $digest (linux/$arch): $(stat -c %s "$d/manifest.json") bytes, digest checked"
    fi
    for blob in $(jq -r '.config.digest, .layers[].digest' "$d/manifest.json"); do
        b_get "blobs/$blob" "$d/${blob#sha256:}"
        check_digest "$d/${blob#sha256:}" "$blob"
        info "blob $blob: $(stat -c %s "$d/${blob#sha256:}") bytes, digest checked"
    done
    took=$(seconds_since "$t0")
    read -r -a after <<<"$(served_bytes "$B_METRICS")"
    info "took $took s; node B served $((after[1] - before[1])) bytes from its peers (node A)," \
        "$((after[0] - before[0])) bytes from its cache and $((after[2] - before[2])) bytes from the registry (origin)"
    ((after[2] == before[2])) || die "node B served bytes from the origin, which is down"
    ((after[1] > before[1])) || die "node B served nothing from its peers; $(log_tail ferry-b)"
}

# A rollout is coming: the registry is back with a new image; plan where its pods will land and
# have exactly those nodes fetch it before the rollout starts.
prewarm() {
    start_registry
    step "A rollout of demo.local/demo/infer:v2 is coming: pushing the image"
    push_image demo/infer:v2 "the image both nodes warmed"
    step "The cluster as kubectl lists it: two GPU nodes named like the ferry nodes ($W/nodes.json)"
    jq -n '{apiVersion: "v1", kind: "List", items: [$ARGS.positional[] | {
        metadata: {name: ., labels: {"topology.kubernetes.io/region": "demo", "nvidia.com/gpu.product": "NVIDIA-L4"}},
        spec: {},
        status: {allocatable: {cpu: "16", memory: "64Gi", pods: "110", "nvidia.com/gpu": "1"},
                 conditions: [{type: "Ready", status: "True"}]}}]}' --args ferry-a ferry-b >"$W/nodes.json"
    cat >"$W/rollout.yaml" <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: infer, namespace: demo}
spec:
  replicas: 2
  selector: {matchLabels: {app: infer}}
  template:
    metadata: {labels: {app: infer}}
    spec:
      nodeSelector: {nvidia.com/gpu.product: NVIDIA-L4}
      containers:
        - name: server
          image: demo.local/demo/infer:v2
          resources: {limits: {nvidia.com/gpu: 1}}
EOF
    step "Planning: ferry prewarm plan --nodes nodes.json rollout.yaml -o plan.json"
    "$FERRY" prewarm plan --nodes "$W/nodes.json" "$W/rollout.yaml" -o "$W/plan.json" | sed 's/^/    /'
    step "Applying the plan through node A: ferry prewarm apply plan.json --key operator.key"
    "$FERRY" prewarm apply "$W/plan.json" --key "$OPERATOR_KEY" --admin-socket "$A_SOCK" --timeout 2m |
        sed 's/^/    /' || die "the prewarm did not finish; $(log_tail ferry-a)"
    step "Every order of the site: ferry prewarm status"
    "$FERRY" prewarm status --admin-socket "$A_SOCK" | sed 's/^/    /'
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
    info "stopped ferry nodes A and B, containerd and the registry; removed $W"
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
    ferry node A    mirror http://$A_ADDR  metrics http://$A_METRICS/metrics  log $W/ferry-a.log
                    P2P $A_MULTIADDR
    ferry node B    mirror http://$B_ADDR  metrics http://$B_METRICS/metrics  log $W/ferry-b.log
                    P2P /ip4/127.0.0.1/tcp/$B_P2P_PORT  (region demo, cluster key $KEY)
    registry        stopped: demo.local ($REG_URL) is down
    containerd      $SOCK (pulls through node A)  log $W/containerd.log

    $FERRY status --admin-socket $B_SOCK
    $FERRY status --admin-socket $A_SOCK --json | jq .p2p
    curl -s http://$B_METRICS/metrics | grep -E '^ferry_(bytes_served|peer|prewarm)'
    $FERRY prewarm status --admin-socket $A_SOCK
    curl -s 'http://$B_ADDR/v2/demo/busybox/manifests/$DIGEST?ns=demo.local' | jq .
    curl -sI 'http://$A_ADDR/v2/demo/busybox/manifests/latest?ns=demo.local'   # A resolved the tag before
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
    make_keys
    start_node_a
    start_containerd
    configure_containerd
    first_pull_and_run
    forget_image
    second_pull
    report A "$A_SOCK" "$A_METRICS"
    start_node_b
    resolve_digest
    stop_registry
    fetch_through_b
    report B "$B_SOCK" "$B_METRICS"
    prewarm
    if ((KEEP)); then keep_running; else step "Done"; fi
}

main "$@"

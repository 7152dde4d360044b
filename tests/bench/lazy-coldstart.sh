#!/usr/bin/env bash
# Benchmark: cold start of a real AI image (Debian 12 + python3, PyTorch + NumPy), lazily through
# Ferry against a full pull by containerd's own overlayfs snapshotter, in the same run over the
# same shaped WAN link. Reports ratios.
#
#   sudo tests/bench/lazy-coldstart.sh                       # first run: see "Disk and time" below
#   sudo PREFETCH_RATES=50MiB tests/bench/lazy-coldstart.sh  # one lazy arm only (default: 50MiB off)
#   sudo FERRY=target/release/ferry KEEP_TMP=1 tests/bench/lazy-coldstart.sh
#
# What it does:
#   1. The image, two gzip layers in an OCI layout (hand-written JSON, as convert-torch.sh does),
#      cached in $BENCH_CACHE/lazy: a Debian 12 base (`debootstrap --variant=minbase
#      --include=python3 bookworm`, apt lists and /dev emptied) and the torch + numpy
#      site-packages of convert-torch.sh ($BENCH_CACHE/rootfs, ~5.6 GB, built by
#      `FIXTURE_ONLY=1 convert-torch.sh` when missing; its gzip layer is reused, hard-linked,
#      when $BENCH_CACHE/image holds it). Debian's python3.11 does not search
#      /usr/local/lib/python3.11/site-packages, so the config sets PYTHONPATH to it.
#   2. A check that the image works, and the whole-file profile: the two layers are merged with
#      a read-only overlay mount in a private mount namespace; `chroot MERGED python3 -c
#      WORKLOAD` must print torch's version; then `strace -f -e trace=openat,open,execve` of the
#      same command gives the files it opened, in order. Only calls that succeeded after the
#      exec of python3 count; each path is resolved inside the chroot (symlinks) and kept if it
#      is a regular file outside /proc, /sys and /dev, first access first (PROFILE_WITH=strace
#      uses it as the `--prioritize` file: one PATH per line, relative to the rootfs root).
#   3. A "WAN" in two network namespaces made here and deleted on exit: TAG-wan holds a
#      docker-registry (10.79.S.1:5000), TAG-node the clients (10.79.S.2), joined by one veth
#      pair shaped by `tbf rate WAN_MBIT` on both ends (so both directions). Inside TAG-wan,
#      over its loopback (unshaped): `skopeo copy oci:LAYOUT:gzip docker://…/bench/torch:gzip`;
#      then (PROFILE_WITH=ferry, the default) `ferry convert` of it to …/bench/torch:unprofiled,
#      `ferry profile …/bench/torch:unprofiled -- python3 -c WORKLOAD` through a ferry node and
#      containerd in TAG-node (the chunks the import reads, first access first), and `ferry
#      convert …:gzip …:lazy --prioritize` that profile. Each conversion goes to an OCI layout
#      pushed by `skopeo copy`, checking the manifest digest is unchanged (CONVERT_TO=registry:
#      `ferry convert` pushes itself).
#   4. Arm "full": a fresh sandboxed containerd (overlayfs snapshotter) in TAG-node; page cache
#      dropped; timed from `ctr image pull --plain-http 10.79.S.1:5000/bench/torch:gzip` until
#      `ctr run --rm IMAGE ID python3 -c WORKLOAD` exits 0 having printed torch's version.
#   5. Arm "lazy" once per rate in PREFETCH_RATES: a fresh `ferry node` (fresh store,
#      `--snapshotter-socket`, `--upstream registry.local=http://10.79.S.1:5000`, a config with
#      `[snapshotter] prefetch_rate = RATE`) and a fresh containerd with `[proxy_plugins.ferry]`,
#      both in TAG-node; page cache dropped; timed from `ferry pull
#      registry.local/bench/torch:lazy` until `ctr run --rm --snapshotter ferry …` exits 0 having
#      printed torch's version. Bytes fetched from the registry: ferry's `ferry_origin_bytes_total`
#      (body bytes received from upstreams: manifests, config, TOCs and 1 MiB layer pieces) read
#      right after the run exits, against the converted image's size (manifest + config + layers).
#      The tx_bytes of the registry's veth (wire bytes, TCP/IP headers included) and the
#      registry's access log (sum of blob GET bodies) are shown too, as cross-checks.
#   Processes in the namespaces are started with `nsenter --net` (TAG-node: so that FUSE and
#   overlay mounts stay in the host's mount namespace, where containerd and runc see them) and
#   `ip netns exec` (TAG-wan).
#
# Reports full seconds, lazy seconds, lazy/full (target <= 0.15) and the share of the image
# fetched by the time the import finished (target <= 15%), for the first rate of PREFETCH_RATES
# in the RESULT line (all rates in the table). A missed target prints MISSED but does not fail
# the script; errors do (after the results that exist are printed). Last line:
#   RESULT full_s=.. lazy_s=.. ratio=.. fetched_bytes=.. image_bytes=.. fetched_share=..
#
# Environment:
#   BENCH_CACHE=/var/tmp/ferry-bench   wheels/rootfs (shared with convert-torch.sh) and lazy/
#                                      (base rootfs, OCI layout, last profile)
#   BENCH_TMP=$BENCH_CACHE             where the run's temp dir goes (registry storage, containerd
#                                      roots, ferry stores, logs)
#   WAN_MBIT=100                       the link's rate, both ways
#   PREFETCH_RATES="50MiB off"         one lazy arm per snapshotter.prefetch_rate
#   WORKLOAD="import torch; print(torch.__version__)"   what python3 -c runs (profile and arms)
#   PROFILE_WITH=ferry                 `strace`: prioritize the whole files the workload opens
#                                      (marks far more for prefetch: 2.9 GiB of CUDA libraries)
#   DEBIAN_MIRROR=http://deb.debian.org/debian          for debootstrap
#   CONVERT_TO=oci                     `registry`: let ferry convert push the converted images itself
#   FERRY=path                         use this binary instead of building target/release/ferry
#   KEEP_TMP=1                         keep the run's temp dir (logs, registry, stores)
#
# Disk and time: the first run needs the network (debootstrap, and ~3 GB of wheels unless
# convert-torch.sh ran before) and ~10 GB more in $BENCH_CACHE when convert-torch.sh's fixture
# must be built. Each run needs ~21 GB free in $BENCH_TMP at its peak (registry with three
# images ~6 GB, the converter's spool ~5.6 GB, the full arm's containerd ~9 GB: content and
# unpacked snapshots), all removed at exit. With the fixtures cached, a run on 2 cores at
# 100 Mbit/s takes ~15 min: strace profile ~25 s, push ~30 s, two conversions ~75 s each, ferry
# profile ~1 min, the full arm ~5.5 min
# (3.1 GB at 100 Mbit/s, then unpack), each lazy arm ~1-1.5 min. The first run adds
# debootstrap (~2 min) and, without convert-torch.sh's fixture, its wheels and gzip (~15 min).
#
# Runs as root on Debian 12, installing what it needs with apt-get. The host's network is not
# touched (only the two namespaces); the host's page cache is dropped before each arm.
set -euo pipefail

BENCH_CACHE=${BENCH_CACHE:-/var/tmp/ferry-bench}
BENCH_TMP=${BENCH_TMP:-$BENCH_CACHE}
WAN_MBIT=${WAN_MBIT:-100}
PREFETCH_RATES=${PREFETCH_RATES:-50MiB off}
WORKLOAD=${WORKLOAD:-import torch; print(torch.__version__)}
PROFILE_WITH=${PROFILE_WITH:-ferry}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
RATIO_TARGET=0.15 SHARE_TARGET=0.15
NEED_MIB=21000
CACHE=$BENCH_CACHE/lazy
BASE=$CACHE/base           # debootstrap rootfs
LAYOUT=$CACHE/layout       # OCI layout, tag "gzip"
TORCH_ROOTFS=$BENCH_CACHE/rootfs
SITE_PACKAGES=/usr/local/lib/python3.11/site-packages
IMAGE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
REPO=bench/torch UPSTREAM=registry.local
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=deploy/lib.sh
. "$REPO_ROOT/deploy/lib.sh"

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }
fail() { FAILURES+=("$*"); log "FAILED: $*"; } # an arm failed: go on, exit non-zero at the end
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.2f", b - a}'; }
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b/1048576}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", (b > 0 ? a/b : 0)}'; }
mark() { awk -v a="$1" -v b="$2" 'BEGIN {print (a == "FAIL" ? "FAILED" : a <= b ? "ok" : "MISSED")}'; }

# ----------------------------------------------------------------- cleanup ----

PIDS=() NETNS=() FAILURES=() TMP=""
# stop_containerd DIR: kills the shims of the containerd whose socket is DIR/containerd.sock
# (found by that path in their command line, killed by pid), containerd itself, and unmounts
# whatever is mounted below DIR, deepest first.
stop_containerd() {
    local d=$1 p cmd
    for p in /proc/[0-9]*; do
        cmd=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
        [[ $cmd != *containerd-shim*"$d/containerd.sock"* ]] || kill -KILL "${p#/proc/}" 2>/dev/null || true
    done
    if [[ -f $d/pid ]]; then stop_pids "$(<"$d/pid")" && forget_pid "$(<"$d/pid")" && rm -f "$d/pid"; fi
    unmount_below "$d"
}
# unmount_below DIR: every mount below DIR (FUSE layers, overlays), deepest first.
unmount_below() {
    local m
    for m in $(findmnt -rn -o TARGET | grep -F "$1/" | sort -r); do umount -l "$m" 2>/dev/null || true; done
    return 0
}
forget_pid() {
    local p keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
# Kills every process left in our namespaces (all started by this script), then deletes them.
teardown_site() {
    local full pids p
    for full in "${NETNS[@]}"; do
        for _ in $(seq 50); do
            pids=$(ip netns pids "$full" 2>/dev/null) || break
            [[ -n $pids ]] || break
            for p in $pids; do { kill -KILL "$p"; [[ " ${PIDS[*]} " != *" $p "* ]] || wait "$p"; } 2>/dev/null || true; done
            sleep 0.1
        done
        ip netns delete "$full" 2>/dev/null || log "WARNING: cannot delete netns $full"
    done
    NETNS=()
}
cleanup() {
    local rc=$? d
    set +e
    if [[ -n $TMP && -d $TMP ]]; then
        for d in "$TMP"/*/; do [[ -e $d/config.toml ]] && stop_containerd "${d%/}"; done
    fi
    stop_pids "${PIDS[@]}"
    teardown_site
    if [[ -n $TMP && -d $TMP ]]; then
        unmount_below "$TMP"
        if [[ ${KEEP_TMP:-0} == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------- image ----

install_deps() {
    apt_ensure containerd runc docker-registry skopeo debootstrap strace jq curl iproute2 util-linux \
        coreutils tar gzip python3 || die "cannot install the benchmark's packages"
}

# The torch + numpy rootfs of convert-torch.sh (its fixture: wheels, pip install, gzip layer).
torch_rootfs() {
    if [[ ! -e $BENCH_CACHE/rootfs.complete ]]; then
        log "no torch rootfs in $BENCH_CACHE: building convert-torch.sh's fixture (FIXTURE_ONLY=1)"
        BENCH_CACHE=$BENCH_CACHE FIXTURE_ONLY=1 "$REPO_ROOT/tests/bench/convert-torch.sh" >&2 ||
            die "convert-torch.sh could not build the torch rootfs"
    fi
    [[ -d $TORCH_ROOTFS$SITE_PACKAGES/torch ]] || die "no torch in $TORCH_ROOTFS$SITE_PACKAGES"
}

build_base() {
    if [[ -e $BASE.complete ]]; then
        log "base rootfs: cached in $BASE ($(du -sh "$BASE" | cut -f1))"
        return
    fi
    rm -rf "$BASE" "$BASE.tmp"
    log "debootstrap --variant=minbase --include=python3 bookworm (a few minutes)"
    debootstrap --variant=minbase --include=python3 bookworm "$BASE.tmp" "$DEBIAN_MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
        die "debootstrap failed: $(tail -n 20 "$CACHE/debootstrap.log")"
    # As Debian's own container images: no package lists or caches, an empty /dev.
    rm -rf "$BASE.tmp"/var/lib/apt/lists/* "$BASE.tmp"/var/cache/apt/*.bin "$BASE.tmp"/var/cache/apt/archives/*.deb \
        "$BASE.tmp"/dev/* "$BASE.tmp"/var/log/*.log
    [[ -x $BASE.tmp/usr/bin/python3 ]] || die "debootstrap gave no python3"
    mv "$BASE.tmp" "$BASE"
    touch "$BASE.complete"
}

# blob_put FILE: moves FILE into $LAYOUT/blobs/sha256 under its digest; prints the digest hex.
blob_put() {
    local hex
    hex=$(sha256sum "$1" | cut -d' ' -f1)
    mv "$1" "$LAYOUT/blobs/sha256/$hex"
    echo "$hex"
}

# pack_layer DIR: tar (numeric owners, sorted) | gzip -6 of DIR into the layout; prints
# "LAYER_HEX DIFF_ID_HEX".
pack_layer() {
    local tmp=$LAYOUT/tmp.layer diff
    tar --numeric-owner --sort=name -C "$1" -cf - . | gzip -6 -n >"$tmp"
    diff=$(gzip -dc "$tmp" | sha256sum | cut -d' ' -f1)
    echo "$(blob_put "$tmp") $diff"
}

# torch_layer: "LAYER_HEX DIFF_ID_HEX" of the torch rootfs, hard-linking convert-torch.sh's gzip
# layer (the same tar of the same rootfs) when it is there, else packing the rootfs here.
torch_layer() {
    local img=$BENCH_CACHE/image/layout manifest config layer diff
    if [[ -e $BENCH_CACHE/image/.complete && -e $img/index.json && $BENCH_CACHE/image/.complete -nt $BENCH_CACHE/rootfs.complete ]]; then
        manifest=$(jq -r '.manifests[0].digest' "$img/index.json" | cut -d: -f2)
        layer=$(jq -r '.layers[0].digest' "$img/blobs/sha256/$manifest" | cut -d: -f2)
        config=$(jq -r '.config.digest' "$img/blobs/sha256/$manifest" | cut -d: -f2)
        diff=$(jq -r '.rootfs.diff_ids[0]' "$img/blobs/sha256/$config" | cut -d: -f2)
        log "torch layer: reusing convert-torch.sh's gzip layer sha256:$layer"
        ln -f "$img/blobs/sha256/$layer" "$LAYOUT/blobs/sha256/$layer" 2>/dev/null ||
            cp "$img/blobs/sha256/$layer" "$LAYOUT/blobs/sha256/$layer"
        echo "$layer $diff"
    else
        log "torch layer: tar | gzip -6 of $TORCH_ROOTFS (several minutes)"
        pack_layer "$TORCH_ROOTFS"
    fi
}

build_image() {
    if [[ -e $LAYOUT/.complete ]]; then
        log "source image: cached in oci:$LAYOUT:gzip"
        return
    fi
    rm -rf "$LAYOUT"
    mkdir -p "$LAYOUT/blobs/sha256"
    log "packing the base layer"
    local base torch config_hex config_size manifest_hex manifest_size arch
    read -r -a base <<<"$(pack_layer "$BASE")"
    ((${#base[@]} == 2)) || die "packing the base layer failed"
    read -r -a torch <<<"$(torch_layer)"
    ((${#torch[@]} == 2)) || die "getting the torch layer failed"
    case $(uname -m) in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) die "unknown arch $(uname -m)" ;; esac
    jq -cn --arg arch "$arch" --arg path "PATH=$IMAGE_PATH" --arg pp "PYTHONPATH=$SITE_PACKAGES" \
        --arg d0 "sha256:${base[1]}" --arg d1 "sha256:${torch[1]}" '{
        created: "2024-01-01T00:00:00Z", architecture: $arch, os: "linux",
        config: {Env: [$path, $pp], Cmd: ["python3", "-c", "import torch"]},
        rootfs: {type: "layers", diff_ids: [$d0, $d1]},
        history: [{created: "2024-01-01T00:00:00Z", created_by: "debootstrap --variant=minbase --include=python3 bookworm"},
                  {created: "2024-01-01T00:00:00Z", created_by: "pip install --target torch numpy"}]}' >"$LAYOUT/config.json"
    config_size=$(stat -c %s "$LAYOUT/config.json")
    config_hex=$(blob_put "$LAYOUT/config.json")
    jq -cn --arg c "sha256:$config_hex" --argjson cs "$config_size" \
        --arg l0 "sha256:${base[0]}" --argjson s0 "$(stat -c %s "$LAYOUT/blobs/sha256/${base[0]}")" \
        --arg l1 "sha256:${torch[0]}" --argjson s1 "$(stat -c %s "$LAYOUT/blobs/sha256/${torch[0]}")" '{
        schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
        config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $c, size: $cs},
        layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $l0, size: $s0},
                 {mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $l1, size: $s1}]}' >"$LAYOUT/manifest.json"
    manifest_size=$(stat -c %s "$LAYOUT/manifest.json")
    manifest_hex=$(blob_put "$LAYOUT/manifest.json")
    printf '{"imageLayoutVersion":"1.0.0"}' >"$LAYOUT/oci-layout"
    jq -cn --arg m "sha256:$manifest_hex" --argjson ms "$manifest_size" '{schemaVersion: 2, manifests: [{
        mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $m, size: $ms,
        annotations: {"org.opencontainers.image.ref.name": "gzip"}}]}' >"$LAYOUT/index.json"
    touch "$LAYOUT/.complete"
}

# ----------------------------------------------------------------- profile ----

# Reads an `strace -f -o` log on stdin; prints the paths of successful open/openat/execve calls
# made after the first exec that is not chroot itself, in order (relative opens against a
# directory fd are skipped; relative ones against the cwd are taken from /, chroot's cwd).
# shellcheck disable=SC2089 # Python source, not shell words
STRACE_PATHS='
import re, sys
call = re.compile(r"^(\d+)\s+(openat|open|execve)\((.*)$")
resumed = re.compile(r"^(\d+)\s+<\.\.\. (openat|open|execve) resumed>(.*)$")
pending, started, skipped = {}, False, 0
def path_of(name, args):
    m = re.match(r"(AT_FDCWD|\d+), \"((?:[^\"\\]|\\.)*)\"", args) if name == "openat" else re.match(r"\"((?:[^\"\\]|\\.)*)\"", args)
    if not m: return None
    if name == "openat" and m.group(1) != "AT_FDCWD" and not m.group(2).startswith("/"): return ""
    p = m.group(m.lastindex).encode().decode("unicode_escape").encode("latin-1").decode("utf-8", "replace")
    return p if p.startswith("/") else "/" + p
def done(name, path, tail):
    global started, skipped
    m = re.search(r"\) = (-?\d+)", tail)
    if path is None or not m or int(m.group(1)) < 0: return
    if name == "execve" and not started:
        started = not path.endswith("/chroot")
        if not started: return
    if not started: return
    if path == "": skipped += 1; return
    print(path)
for line in sys.stdin:
    line = line.rstrip("\n")
    m = call.match(line)
    if m:
        pid, name, rest = m.groups()
        path = path_of(name, rest)
        if rest.endswith("<unfinished ...>"): pending[pid] = (name, path)
        else: done(name, path, rest)
        continue
    m = resumed.match(line)
    if m and m.group(1) in pending:
        name, path = pending.pop(m.group(1))
        done(name, path, m.group(3))
print(f"{skipped} relative opens against a directory fd skipped", file=sys.stderr)
'

# Run inside the chroot: paths on stdin -> the regular files they resolve to, first access
# first, relative to / ; quoted as JSON when they hold spaces (the --prioritize format).
# shellcheck disable=SC2089
RESOLVE_PATHS='
import json, os, sys
seen = set()
for line in sys.stdin:
    r = os.path.realpath(line.rstrip("\n"))
    if r in seen or r.startswith(("/proc/", "/sys/", "/dev/")) or not os.path.isfile(r): continue
    seen.add(r)
    p = r[1:]
    print(json.dumps(p) if any(c.isspace() for c in p) or p[:1] in "\"#" else p)
'

# The two layers merged read-only in a private mount namespace (all mounts vanish with it):
# checks that WORKLOAD runs and prints torch's version, then traces it into $TMP/prioritize.txt.
make_profile() {
    local m=$TMP/merged
    mkdir -p "$m"
    # shellcheck disable=SC2090
    export M=$m TORCH_ROOTFS BASE IMAGE_PATH SITE_PACKAGES WORKLOAD STRACE_PATHS RESOLVE_PATHS TMP
    log "profiling \`python3 -c '$WORKLOAD'\` in a chroot of the merged layers (strace)"
    # shellcheck disable=SC2016
    unshare -m --propagation private bash -euo pipefail -c '
        mount -t overlay overlay -o "ro,lowerdir=$TORCH_ROOTFS:$BASE" "$M"
        mount -t proc proc "$M/proc"
        mount --rbind /dev "$M/dev"
        mount -t tmpfs tmpfs "$M/tmp"
        in_chroot() { env -i PATH="$IMAGE_PATH" PYTHONPATH="$SITE_PACKAGES" HOME=/root LANG=C.UTF-8 chroot "$M" "$@"; }
        in_chroot python3 -c "$WORKLOAD" >"$TMP/chroot-check.out" 2>"$TMP/chroot-check.err" ||
            { echo "python3 -c \"$WORKLOAD\" fails in the chroot: $(tail -n 5 "$TMP/chroot-check.err")" >&2; exit 1; }
        env -i PATH="$IMAGE_PATH" PYTHONPATH="$SITE_PACKAGES" HOME=/root LANG=C.UTF-8 \
            strace -f -qq -e trace=openat,open,execve -o "$TMP/strace.log" chroot "$M" python3 -c "$WORKLOAD" >/dev/null
        python3 -c "$STRACE_PATHS" <"$TMP/strace.log" >"$TMP/opened.txt"
        in_chroot python3 -c "$RESOLVE_PATHS" <"$TMP/opened.txt" >"$TMP/prioritize.txt"
        # Sizes of the listed files (the startup set, uncompressed).
        sed -E "s/^\"(.*)\"$/\\1/" "$TMP/prioritize.txt" | while read -r f; do stat -c %s "$M/$f"; done |
            awk "{s += \$1} END {printf \"%d %.0f\\n\", NR, s}" >"$TMP/prioritize.size"
    ' || die "profiling failed"
    TORCH_VERSION=$(tail -n 1 "$TMP/chroot-check.out")
    [[ -n $TORCH_VERSION ]] || die "the workload printed nothing in the chroot"
    read -r PROFILE_FILES PROFILE_BYTES <"$TMP/prioritize.size"
    ((PROFILE_FILES > 0)) || die "the profile is empty (see $TMP/strace.log)"
    cp "$TMP/prioritize.txt" "$CACHE/prioritize.txt"
    log "torch $TORCH_VERSION imports in the chroot; profile: $PROFILE_FILES files, $(mib "$PROFILE_BYTES") MiB" \
        "($(wc -l <"$TMP/opened.txt") successful opens; a copy in $CACHE/prioritize.txt)"
}

# -------------------------------------------------------------------- site ----

make_site() {
    TAG=fcold$(printf %03x $((RANDOM % 4096)))
    while [[ -e /run/netns/$TAG-wan || -e /run/netns/$TAG-node ]]; do TAG=fcold$(printf %03x $((RANDOM % 4096))); done
    NET=10.79.$((1 + RANDOM % 254)) && WAN_IP=$NET.1 && NODE_IP=$NET.2
    WAN_NS=$TAG-wan NODE_NS=$TAG-node WAN_DEV=${TAG}w NODE_DEV=${TAG}n
    IN_NODE=(nsenter "--net=/run/netns/$NODE_NS" --)
    log "site $TAG: registry $WAN_IP in $WAN_NS, clients $NODE_IP in $NODE_NS, $WAN_MBIT Mbit/s both ways"
    local ns burst
    for ns in "$WAN_NS" "$NODE_NS"; do
        ip netns add "$ns" && NETNS+=("$ns")
        ip -n "$ns" link set lo up
    done
    ip -n "$WAN_NS" link add "$WAN_DEV" type veth peer name "$NODE_DEV" netns "$NODE_NS"
    ip -n "$WAN_NS" addr add "$WAN_IP/24" dev "$WAN_DEV" && ip -n "$WAN_NS" link set "$WAN_DEV" up
    ip -n "$NODE_NS" addr add "$NODE_IP/24" dev "$NODE_DEV" && ip -n "$NODE_NS" link set "$NODE_DEV" up
    burst=$((WAN_MBIT * 1000000 / 8 / 100)) && ((burst >= 65536)) || burst=65536 # 10 ms, >= 64 KiB
    tc -n "$WAN_NS" qdisc replace dev "$WAN_DEV" root tbf rate "${WAN_MBIT}mbit" burst "$burst" latency 50ms
    tc -n "$NODE_NS" qdisc replace dev "$NODE_DEV" root tbf rate "${WAN_MBIT}mbit" burst "$burst" latency 50ms
    for _ in $(seq 100); do
        ip -n "$WAN_NS" -o link show dev "$WAN_DEV" | grep -q LOWER_UP &&
            ip -n "$NODE_NS" -o link show dev "$NODE_DEV" | grep -q LOWER_UP && return 0
        sleep 0.05
    done
    die "the WAN veth is not up within 5 s"
}
# Daemons are started as `"${IN_NODE[@]}" CMD &` (not through a function, which would put a
# subshell between $! and the daemon): ip netns exec and nsenter exec CMD in their own process.
in_wan() { ip netns exec "$WAN_NS" "$@"; }
# The node side keeps the host's mount namespace (ip netns exec would make a new one per
# command, hiding FUSE mounts from containerd and runc).
in_node() { "${IN_NODE[@]}" "$@"; }
# Bytes the registry has sent to the node: tx_bytes of its veth end (after tbf, on the wire).
wan_tx() { ip -n "$WAN_NS" -s -j link show dev "$WAN_DEV" | jq '.[0].stats64.tx.bytes'; }

# wait_up PID LOG WHAT SECS CMD...: waits until CMD succeeds, as long as PID lives.
wait_up() {
    local pid=$1 logf=$2 what=$3 secs=$4
    shift 4
    for _ in $(seq $((secs * 10))); do
        kill -0 "$pid" 2>/dev/null || die "$what exited during startup: $(tail -n 20 "$logf")"
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "$what not ready after $secs s (log: $logf)"
}

start_registry() {
    printf 'version: 0.1\nlog: { level: warn, accesslog: { disabled: false } }\nstorage: { filesystem: { rootdirectory: %s } }\nhttp: { addr: "0.0.0.0:5000", secret: ferry-bench }\n' \
        "$TMP/registry-data" >"$TMP/registry.yml"
    ip netns exec "$WAN_NS" docker-registry serve "$TMP/registry.yml" >"$TMP/registry.log" 2>&1 &
    PIDS+=($!)
    wait_up "$!" "$TMP/registry.log" "docker-registry" 30 registry_ready
}
registry_ready() { [[ $(in_node curl -s -o /dev/null -w '%{http_code}' "http://$WAN_IP:5000/v2/") == 200 ]]; }

# Bodies of the blob GETs in the registry's access log (combined format) so far.
registry_blob_bytes() {
    awk '$7 ~ /^\/v2\/.*\/blobs\/sha256:/ && $6 == "\"GET" && $10 ~ /^[0-9]+$/ {s += $10} END {printf "%.0f\n", s}' "$TMP/registry.log"
}

# manifest_bytes TAG: manifest + config + layers of bench/torch:TAG in the registry.
image_bytes() {
    local m
    m=$(in_wan curl -sSf -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://127.0.0.1:5000/v2/$REPO/manifests/$1") ||
        die "no manifest for $REPO:$1"
    jq -r --argjson n "$(printf %s "$m" | wc -c)" '[.config.size, .layers[].size] | add + $n' <<<"$m"
}

# registry_digest TAG: the Docker-Content-Digest of bench/torch:TAG.
registry_digest() {
    in_wan curl -sSfI -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://127.0.0.1:5000/v2/$REPO/manifests/$1" |
        tr -d '\r' | awk 'tolower($1) == "docker-content-digest:" {print $2}'
}

push_gzip() {
    log "skopeo copy oci:$LAYOUT:gzip -> $REPO:gzip (inside $WAN_NS, unshaped)"
    in_wan skopeo copy -q --dest-tls-verify=false "oci:$LAYOUT:gzip" "docker://127.0.0.1:5000/$REPO:gzip" >&2 ||
        die "skopeo copy failed"
    GZIP_BYTES=$(image_bytes gzip)
}

# convert_to TAG [PROFILE]: ferry convert bench/torch:gzip -> bench/torch:TAG (inside $WAN_NS,
# unshaped), with --prioritize PROFILE when given; sets CONVERT_S.
convert_to() {
    local tag=$1 profile=${2:-} t0 status=0 dst=127.0.0.1:5000/$REPO:$1 want got args=()
    # CONVERT_TO=oci (the default) converts into an OCI layout and pushes that with skopeo;
    # CONVERT_TO=registry lets ferry convert push itself.
    [[ ${CONVERT_TO:-oci} == registry ]] || dst=oci:$TMP/lazy-layout:$tag
    [[ -z $profile ]] || args=(--prioritize "$profile")
    log "ferry convert $REPO:gzip -> $dst ${args[*]}"
    t0=$(now)
    in_wan "$FERRY" convert "127.0.0.1:5000/$REPO:gzip" "$dst" "${args[@]}" \
        --tmp-dir "$TMP" --output json >"$TMP/convert-$tag.json" 2>"$TMP/convert-$tag.log" || status=$?
    ((status == 0)) || die "ferry convert exited with $status: $(tail -n 20 "$TMP/convert-$tag.log")"
    CONVERT_S=$(since "$t0")
    if [[ $dst == oci:* ]]; then
        log "converted in $CONVERT_S s; skopeo copy $dst -> $REPO:$tag"
        in_wan skopeo copy -q --dest-tls-verify=false "$dst" "docker://127.0.0.1:5000/$REPO:$tag" >&2 ||
            die "skopeo copy of the converted image failed"
        want=$(jq -r '.manifests[0].digest' "$TMP/lazy-layout/index.json")
        got=$(registry_digest "$tag")
        [[ $got == "$want" ]] || die "skopeo changed the converted manifest ($want became $got)"
        rm -rf "$TMP/lazy-layout"
    fi
    log "converted in $CONVERT_S s: $REPO:$tag is $(image_bytes "$tag") bytes; prefetch chunks per layer:" \
        "$(jq -rc '[.layers[] | "\(.prefetch_chunks // "?")/\(.chunks // "?")"] | join(" ")' "$TMP/convert-$tag.json" 2>/dev/null)"
}

# start_node NAME RATE: a fresh ferry node in $TMP/NAME-ferry, in the node namespace, with
# snapshotter.prefetch_rate = RATE; sets NODE_DIR and NODE_PID.
start_node() {
    NODE_DIR=$TMP/$1-ferry
    mkdir -p "$NODE_DIR"
    printf '[snapshotter]\nprefetch_rate = "%s"\n' "$2" >"$NODE_DIR/ferry.toml"
    "${IN_NODE[@]}" "$FERRY" node --config "$NODE_DIR/ferry.toml" --store "$NODE_DIR/store" --admin-socket "$NODE_DIR/admin.sock" \
        --snapshotter-socket "$NODE_DIR/snapshotter.sock" --upstream "$UPSTREAM=http://$WAN_IP:5000" \
        --registry-listen 127.0.0.1:5050 --metrics-listen 127.0.0.1:9464 >"$NODE_DIR/ferry.log" 2>&1 &
    NODE_PID=$!
    PIDS+=("$NODE_PID")
    wait_up "$NODE_PID" "$NODE_DIR/ferry.log" "ferry node" 30 test -S "$NODE_DIR/snapshotter.sock"
    wait_up "$NODE_PID" "$NODE_DIR/ferry.log" "ferry node's metrics" 30 ferry_metric '^ferry_origin_bytes_total'
}

# The startup profile at chunk granularity: `ferry profile` of bench/torch:unprofiled (a
# conversion without one) running WORKLOAD, through a ferry node and containerd in the node
# namespace (over the shaped link: what the workload reads, ~0.4 GB); the result goes to
# $TMP/ferry-profile.txt (and a copy to $CACHE).
ferry_profile() {
    log "ferry profile $UPSTREAM/$REPO:unprofiled -- python3 -c '$WORKLOAD'"
    start_node profile off
    start_containerd profile "$NODE_DIR/snapshotter.sock"
    local t0 status=0
    t0=$(now)
    in_node timeout 1800 "$FERRY" profile "$UPSTREAM/$REPO:unprofiled" --registry-listen 127.0.0.1:5050 --address "$SOCK" \
        -o "$TMP/ferry-profile.txt" -- python3 -c "$WORKLOAD" >"$NODE_DIR/profile.out" 2>"$NODE_DIR/profile.log" || status=$?
    ((status == 0)) || die "ferry profile exited with $status: $(tail -n 20 "$NODE_DIR/profile.log")"
    stop_containerd "$CTD"
    stop_pids "$NODE_PID" && forget_pid "$NODE_PID"
    end_arm "$NODE_DIR/store"
    read -r PROFILE_CHUNKS PROFILE_BYTES < <(awk '{n++; s += $NF} END {printf "%d %.0f\n", n, s}' "$TMP/ferry-profile.txt")
    ((PROFILE_CHUNKS > 0)) || die "ferry profile recorded nothing (log: $NODE_DIR/profile.log)"
    cp "$TMP/ferry-profile.txt" "$CACHE/ferry-profile.txt"
    PROFILE_DESC="ferry profile: $PROFILE_CHUNKS chunk runs, $(mib "$PROFILE_BYTES") MiB uncompressed, in $(since "$t0") s"
    log "$PROFILE_DESC"
}

# ------------------------------------------------------------------- arms ----

drop_caches() { sync && echo 3 >/proc/sys/vm/drop_caches; }

# start_containerd NAME [SNAPSHOTTER_SOCKET]: a fresh containerd in $TMP/NAME, in the node
# namespace; sets SOCK and CTD.
start_containerd() {
    CTD=$TMP/$1 SOCK=$TMP/$1/containerd.sock
    rm -rf "$CTD" && mkdir -p "$CTD"
    cat >"$CTD/config.toml" <<EOF
version = 2
root = "$CTD/root"
state = "$CTD/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = "$CTD/debug.sock"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$CTD/opt"
EOF
    [[ -z ${2:-} ]] || printf '[proxy_plugins.ferry]\n  type = "snapshot"\n  address = "%s"\n' "$2" >>"$CTD/config.toml"
    "${IN_NODE[@]}" containerd --config "$CTD/config.toml" >"$CTD/containerd.log" 2>&1 &
    PIDS+=($!) && echo $! >"$CTD/pid"
    wait_up "$!" "$CTD/containerd.log" "containerd ($1)" 30 ctr -a "$SOCK" version
}

# run_container IMAGE ID OUT [ctr run flags]: ctr run --rm ... python3 -c WORKLOAD; checks that
# it printed the torch version seen in the chroot.
run_container() {
    local image=$1 id=$2 out=$3
    shift 3
    in_node timeout 1800 ctr -a "$SOCK" run --rm --runc-root "$CTD/runc" "$@" "$image" "$id" python3 -c "$WORKLOAD" \
        >"$out" 2>"$out.err" || { log "ctr run: $(tail -n 5 "$out.err")"; return 1; }
    [[ $(tail -n 1 "$out") == "$TORCH_VERSION" ]] || { log "ctr run printed $(tail -n 3 "$out"), not $TORCH_VERSION"; return 1; }
}

arm_full() {
    local image=$WAN_IP:5000/$REPO:gzip t0 t1 tx0
    log "arm full: fresh containerd (overlayfs), page cache dropped"
    start_containerd full
    drop_caches
    LOADS[full]=$(cut -d' ' -f1 /proc/loadavg)
    tx0=$(wan_tx)
    t0=$(now)
    log "arm full: ctr image pull --plain-http $image"
    if ! in_node timeout 3600 ctr -a "$SOCK" image pull --plain-http "$image" >"$CTD/pull.out" 2>&1; then
        fail "full: ctr image pull: $(tail -n 5 "$CTD/pull.out")"
        stop_containerd "$CTD"
        return
    fi
    t1=$(now)
    FULL_PULL_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
    log "arm full: pulled and unpacked in $FULL_PULL_S s; ctr run"
    if run_container "$image" bench-full "$CTD/run.out"; then
        FULL_S=$(since "$t0")
        FULL_TX=$(($(wan_tx) - tx0))
        LOADS[full]+=" to $(cut -d' ' -f1 /proc/loadavg)"
        log "arm full: $FULL_S s, $(mib "$FULL_TX") MiB on the wire"
    else
        fail "full: ctr run (log: $CTD/containerd.log)"
    fi
    stop_containerd "$CTD"
    end_arm
}

ferry_metric() { # ferry_metric REGEX: the sum of the node's metric lines matching REGEX
    in_node curl -s --max-time 10 "http://127.0.0.1:9464/metrics" | awk -v re="$1" '$0 ~ re {s += $NF} END {printf "%.0f\n", s}'
}

# arm_lazy RATE: ferry node + containerd with the ferry snapshotter; ferry pull; ctr run.
arm_lazy() {
    local rate=$1 name=lazy-$1 d t0 t1 tx0 reg0 status=0 pid
    log "arm $name: fresh ferry node (prefetch_rate = \"$rate\") and containerd, page cache dropped"
    start_node "$name" "$rate"
    d=$NODE_DIR pid=$NODE_PID
    start_containerd "$name" "$d/snapshotter.sock"
    drop_caches
    LOADS[$rate]=$(cut -d' ' -f1 /proc/loadavg)
    tx0=$(wan_tx) reg0=$(registry_blob_bytes)
    t0=$(now)
    log "arm $name: ferry pull $UPSTREAM/$REPO:lazy"
    in_node timeout 1800 "$FERRY" pull "$UPSTREAM/$REPO:lazy" --registry-listen 127.0.0.1:5050 --address "$SOCK" \
        --output json >"$d/pull.json" 2>"$d/pull.log" || status=$?
    if ((status != 0)); then
        fail "$name: ferry pull exited with $status: $(tail -n 5 "$d/pull.log") (logs: $d)"
    else
        t1=$(now)
        LAZY_PULL_S[$rate]=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
        OUTCOMES[$rate]=$(jq -r '[.layers[].outcome] | join(",")' "$d/pull.json")
        log "arm $name: pulled in ${LAZY_PULL_S[$rate]} s (layers: ${OUTCOMES[$rate]}); ctr run --snapshotter ferry"
        if run_container "$UPSTREAM/$REPO:lazy" "bench-$name" "$d/run.out" --snapshotter ferry; then
            LAZY_S[$rate]=$(since "$t0")
            FETCHED[$rate]=$(ferry_metric '^ferry_origin_bytes_total')
            SERVED_ORIGIN[$rate]=$(ferry_metric '^ferry_bytes_served_total.*source="origin"')
            LAZY_TX[$rate]=$(($(wan_tx) - tx0))
            LOADS[$rate]+=" to $(cut -d' ' -f1 /proc/loadavg)"
            sleep 1 # the access log line of a request is written when it ends
            REG_BYTES[$rate]=$(($(registry_blob_bytes) - reg0))
            log "arm $name: ${LAZY_S[$rate]} s; ferry_origin_bytes_total ${FETCHED[$rate]}" \
                "($(mib "${FETCHED[$rate]}") MiB), registry veth tx $(mib "${LAZY_TX[$rate]}") MiB"
        else
            fail "$name: ctr run (logs: $d, $CTD/containerd.log)"
        fi
    fi
    "$FERRY" status --json --admin-socket "$d/admin.sock" >"$d/status.json" 2>/dev/null || true
    stop_containerd "$CTD"
    stop_pids "$pid" && forget_pid "$pid"
    end_arm "$d/store"
}

# end_arm [DIR...]: nothing of the arm may survive it: processes left in the node namespace
# are killed (all ours), mounts below $TMP unmounted; then containerd's root and state and
# DIRs (~9 GB) are removed. The logs stay.
end_arm() {
    local p left
    left=$(ip netns pids "$NODE_NS" 2>/dev/null | tr '\n' ' ')
    if [[ -n ${left// /} ]]; then
        log "WARNING: processes left in $NODE_NS after the arm: $left; killing them"
        for p in $left; do kill -KILL "$p" 2>/dev/null || true; done
        sleep 0.5
    fi
    unmount_below "$TMP"
    rm -rf "$CTD/root" "$CTD/state" "$@" 2>/dev/null || { sleep 2 && rm -rf "$CTD/root" "$CTD/state" "$@"; } ||
        log "WARNING: could not remove all of $CTD/root $CTD/state $*"
}

# -------------------------------------------------------------------- main ----

report() {
    local r first=${RATES[0]} ratio_s=FAIL share=FAIL
    echo
    echo "Cold start of python3 -c '$WORKLOAD' (torch $TORCH_VERSION), registry behind $WAN_MBIT Mbit/s both ways; $(nproc) cores"
    echo "image: gzip $GZIP_BYTES bytes ($(mib "$GZIP_BYTES") MiB); zstd:chunked (ferry convert) $LAZY_BYTES bytes ($(mib "$LAZY_BYTES") MiB)"
    echo "profile: $PROFILE_DESC; convert took $CONVERT_S s"
    printf '%-22s %9s %9s %9s %16s %9s  %s\n' arm "total s" "pull s" "run s" "fetched bytes" "x image" "notes"
    if [[ -n ${FULL_S:-} ]]; then
        printf '%-22s %9s %9s %9s %16s %9s  %s\n' "full (overlayfs)" "$FULL_S" "$FULL_PULL_S" \
            "$(awk -v a="$FULL_S" -v b="$FULL_PULL_S" 'BEGIN {printf "%.2f", a - b}')" "$FULL_TX" \
            "$(ratio "$FULL_TX" "$GZIP_BYTES")" "veth tx bytes / gzip image; load ${LOADS[full]}"
    else
        printf '%-22s %9s\n' "full (overlayfs)" FAILED
    fi
    for r in "${RATES[@]}"; do
        if [[ -n ${LAZY_S[$r]:-} ]]; then
            printf '%-22s %9s %9s %9s %16s %9s  %s\n' "lazy prefetch=$r" "${LAZY_S[$r]}" "${LAZY_PULL_S[$r]}" \
                "$(awk -v a="${LAZY_S[$r]}" -v b="${LAZY_PULL_S[$r]}" 'BEGIN {printf "%.2f", a - b}')" "${FETCHED[$r]}" \
                "$(ratio "${FETCHED[$r]}" "$LAZY_BYTES")" \
                "layers ${OUTCOMES[$r]}; veth tx ${LAZY_TX[$r]}, registry blob GETs ${REG_BYTES[$r]}, served from origin ${SERVED_ORIGIN[$r]}; load ${LOADS[$r]}"
        else
            printf '%-22s %9s\n' "lazy prefetch=$r" FAILED
        fi
    done
    echo "(fetched bytes: lazy arms: ferry_origin_bytes_total when the run exited, against the zstd:chunked image;"
    echo " full arm: tx_bytes of the registry's veth, against the gzip image; load: 1-min load average at the arm's start and end)"
    echo
    if [[ -n ${FULL_S:-} && -n ${LAZY_S[$first]:-} ]]; then
        ratio_s=$(ratio "${LAZY_S[$first]}" "$FULL_S")
        share=$(ratio "${FETCHED[$first]}" "$LAZY_BYTES")
    fi
    for r in "${RATES[@]:1}"; do
        [[ -n ${FULL_S:-} && -n ${LAZY_S[$r]:-} ]] && printf '%-44s %8s\n' "lazy (prefetch=$r) / full" "$(ratio "${LAZY_S[$r]}" "$FULL_S")" \
            "fetched share (prefetch=$r)" "$(ratio "${FETCHED[$r]}" "$LAZY_BYTES")"
    done
    printf '%-44s %8s   target %-6s %s\n' "lazy (prefetch=$first) / full" "$ratio_s" "<= $RATIO_TARGET" "$(mark "$ratio_s" "$RATIO_TARGET")"
    printf '%-44s %8s   target %-6s %s\n' "fetched share (prefetch=$first)" "$share" "<= $SHARE_TARGET" "$(mark "$share" "$SHARE_TARGET")"
    ((${#FAILURES[@]} == 0)) || { echo "FAILURES:" && printf '  %s\n' "${FAILURES[@]}"; }
    echo "RESULT full_s=${FULL_S:-FAIL} lazy_s=${LAZY_S[$first]:-FAIL} ratio=$ratio_s fetched_bytes=${FETCHED[$first]:-FAIL}" \
        "image_bytes=$LAZY_BYTES fetched_share=$share"
}

main() {
    ((EUID == 0)) || die "run as root (namespaces, mounts, containerd)"
    install_deps
    read -r -a RATES <<<"$PREFETCH_RATES"
    ((${#RATES[@]} > 0)) || die "PREFETCH_RATES is empty"
    unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy
    mkdir -p "$CACHE" "$BENCH_TMP"
    torch_rootfs
    build_base
    build_image
    release_ferry || die "cannot get a ferry binary"
    "$FERRY" pull --help >/dev/null 2>&1 || die "$FERRY has no \`pull\` subcommand"
    export NO_PROXY='*' no_proxy='*'
    local avail
    avail=$(($(df --output=avail -k "$BENCH_TMP" | tail -n1) / 1024))
    ((avail > NEED_MIB)) || die "need $NEED_MIB MiB free in $BENCH_TMP, have $avail"
    TMP=$(mktemp -d "$BENCH_TMP/coldstart.XXXXXX")
    log "temp dir $TMP, cache $CACHE, ferry $FERRY"
    declare -gA LOADS=() LAZY_S=() LAZY_PULL_S=() FETCHED=() SERVED_ORIGIN=() LAZY_TX=() REG_BYTES=() OUTCOMES=()
    make_profile
    make_site
    start_registry
    push_gzip
    if [[ $PROFILE_WITH == ferry ]]; then
        convert_to unprofiled
        ferry_profile
        convert_to lazy "$TMP/ferry-profile.txt"
    else
        PROFILE_DESC="strace: $PROFILE_FILES whole files, $(mib "$PROFILE_BYTES") MiB uncompressed"
        convert_to lazy "$TMP/prioritize.txt"
    fi
    LAZY_BYTES=$(image_bytes lazy)
    arm_full
    local r
    for r in "${RATES[@]}"; do arm_lazy "$r"; done
    report
    ((${#FAILURES[@]} == 0))
}

main "$@"

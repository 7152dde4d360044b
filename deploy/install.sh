#!/usr/bin/env bash
# Installs a ferry node on an edge host that runs containerd without Kubernetes (systemd), or
# removes it again.
#
#   sudo deploy/install.sh [--binary PATH] [--config FILE] [--root DIR]
#   sudo deploy/install.sh --uninstall [--root DIR]
#
# Install:
#   1. the ferry binary to /usr/local/bin/ferry: --binary PATH, or else built here with
#      `cargo build --release --bin ferry`
#   2. the config to /etc/ferry/ferry.toml: --config FILE, or else deploy/ferry.toml (edit its
#      upstreams); a /etc/ferry/ferry.toml that is already there is kept as it is
#   3. deploy/systemd/ferry.service to /etc/systemd/system/ferry.service
#   4. containerd's hosts.toml for every upstream of the config, with
#      `ferry containerd-config --apply /etc/containerd/certs.d`; an operator's hosts.toml that
#      was there is kept beside it as hosts.toml.ferry-orig (the node, with
#      `registry.containerd_hosts` set as in deploy/ferry.toml, also writes them at each start
#      and takes them out at each stop)
#   5. systemctl daemon-reload, enable and (re)start ferry
# What it installed is listed in /etc/ferry/install.manifest, which --uninstall reads.
#
# Uninstall: stops and disables the unit, takes Ferry's hosts.toml files out of containerd's
# certs.d (`ferry containerd-config --restore`: the files they replaced are put back, byte for
# byte), removes the unit and the binary, and removes the config if it is the one installed and
# unchanged. The store, /var/lib/ferry, is kept: remove it
# yourself once no container runs on a snapshot in it.
#
# --root DIR installs into (or removes from) DIR instead of /, for tests and image builds; it
# does not run systemctl.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=deploy/lib.sh
. "$REPO_ROOT/deploy/lib.sh"

ROOT=""
UNINSTALL=0
BINARY=""
CONFIG=""

BIN_PATH=/usr/local/bin/ferry
CONFIG_PATH=/etc/ferry/ferry.toml
UNIT_PATH=/etc/systemd/system/ferry.service
CERTS_DIR=/etc/containerd/certs.d
MANIFEST=/etc/ferry/install.manifest

usage() { awk 'NR == 1 {next} /^#/ {sub(/^# ?/, ""); print; next} {exit}' "${BASH_SOURCE[0]}"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
say() { printf '%s\n' "$*"; }

parse_args() {
    while (($#)); do
        case $1 in
            --root) ROOT=${2:?--root needs a folder}; shift ;;
            --binary) BINARY=${2:?--binary needs a path}; shift ;;
            --config) CONFIG=${2:?--config needs a file}; shift ;;
            --uninstall) UNINSTALL=1 ;;
            -h | --help) usage; exit 0 ;;
            *) usage >&2; die "unknown argument: $1" ;;
        esac
        shift
    done
    if [[ -n $ROOT ]]; then
        mkdir -p "$ROOT"
        ROOT=$(cd "$ROOT" && pwd)
        if [[ $ROOT == / ]]; then ROOT=""; fi
    fi
    if [[ -z $ROOT ]] && ((EUID != 0)); then die "run as root (or with --root DIR)"; fi
    return 0
}

# systemctl ARGS...: runs systemctl on the real system only.
run_systemctl() {
    if [[ -n $ROOT ]]; then
        say "  (--root: not running systemctl $*)"
        return 0
    fi
    systemctl "$@"
}

sha256() { sha256sum "$1" | cut -d' ' -f1; }

# manifest_has KIND PATH: whether the manifest already records PATH.
manifest_has() { [[ -f $ROOT$MANIFEST ]] && awk -v k="$1" -v p="$2" '$1 == k && $2 == p {f = 1} END {exit !f}' "$ROOT$MANIFEST"; }

record() {
    manifest_has "$1" "$2" && return 0
    printf '%s\n' "$*" >>"$ROOT$MANIFEST"
}

install_node() {
    if [[ -n $BINARY ]]; then FERRY=$BINARY; fi
    release_ferry || die "no ferry binary: give one with --binary PATH, or install Rust to build it"
    [[ -x $FERRY ]] || die "$FERRY is not an executable"
    local config_src=${CONFIG:-$REPO_ROOT/deploy/ferry.toml}
    [[ -f $config_src ]] || die "config $config_src not found"
    # A config the node would refuse stops the install before anything is written.
    "$FERRY" containerd-config --config "$config_src" >/dev/null || die "$config_src is not a valid ferry config (see deploy/ferry.toml)"

    mkdir -p "$ROOT/etc/ferry"
    say "binary   $ROOT$BIN_PATH"
    install -D -m 0755 "$FERRY" "$ROOT$BIN_PATH"
    record bin "$BIN_PATH"

    if [[ -e $ROOT$CONFIG_PATH ]]; then
        say "config   $ROOT$CONFIG_PATH (already there: kept as it is)"
    else
        say "config   $ROOT$CONFIG_PATH (from $config_src)"
        install -D -m 0644 "$config_src" "$ROOT$CONFIG_PATH"
        record config "$CONFIG_PATH" "$(sha256 "$ROOT$CONFIG_PATH")"
        [[ -n $CONFIG ]] || say "         edit its [[registry.upstreams]], then run: ferry containerd-config --config $CONFIG_PATH --apply $CERTS_DIR"
    fi

    say "unit     $ROOT$UNIT_PATH"
    install -D -m 0644 "$REPO_ROOT/deploy/systemd/ferry.service" "$ROOT$UNIT_PATH"
    record unit "$UNIT_PATH"

    apply_hosts

    if [[ -z $ROOT ]] && ! grep -qs 'config_path' /etc/containerd/config.toml; then
        say "note     /etc/containerd/config.toml has no config_path: CRI ignores the hosts.toml files until"
        say "         it does (see deploy/containerd/config.toml), then restart containerd"
    fi
    run_systemctl daemon-reload
    run_systemctl enable ferry
    # A restart ends the FUSE mounts of containers running on lazy layers (README, Restarts).
    run_systemctl restart ferry
    say "installed; remove with: deploy/install.sh --uninstall${ROOT:+ --root $ROOT}"
}

# Writes the hosts.toml files; `--restore` on uninstall finds them by their first line.
apply_hosts() {
    local certs=$ROOT$CERTS_DIR line out
    mkdir -p "$certs"
    out=$("$ROOT$BIN_PATH" containerd-config --config "$ROOT$CONFIG_PATH" --apply "$certs") || die "ferry containerd-config --apply $certs failed"
    while IFS= read -r line; do
        case $line in
            wrote* | unchanged*) say "hosts    $line" ;;
            *) say "         $line" ;; # the [proxy_plugins.ferry] lines for containerd's config.toml
        esac
    done <<<"$out"
}

uninstall_node() {
    [[ -f $ROOT$MANIFEST ]] || die "$ROOT$MANIFEST not found: nothing installed by install.sh here"
    run_systemctl disable --now ferry || true
    if [[ -x $ROOT$BIN_PATH ]]; then
        local line
        while IFS= read -r line; do say "hosts    $line"; done < <("$ROOT$BIN_PATH" containerd-config --restore "$ROOT$CERTS_DIR" ||
            say "warning  ferry containerd-config --restore $ROOT$CERTS_DIR failed: check its hosts.toml files" >&2)
    fi
    local kind path extra
    while read -r kind path extra; do
        case $kind in
            config)
                if [[ -f $ROOT$path && $(sha256 "$ROOT$path") == "$extra" ]]; then
                    say "removed  $ROOT$path"
                    rm -f "$ROOT$path"
                elif [[ -f $ROOT$path ]]; then
                    say "kept     $ROOT$path (changed since it was installed)"
                fi
                ;;
            bin | unit)
                say "removed  $ROOT$path"
                rm -f "$ROOT$path"
                ;;
            *) say "warning  unknown line in $ROOT$MANIFEST: $kind $path $extra" >&2 ;;
        esac
    done <"$ROOT$MANIFEST"
    rm -f "$ROOT$MANIFEST"
    rmdir "$ROOT/etc/ferry" 2>/dev/null || true
    run_systemctl daemon-reload
    say "uninstalled; the store ${ROOT}/var/lib/ferry is kept"
}

parse_args "$@"
if ((UNINSTALL)); then uninstall_node; else install_node; fi

//! End-to-end tests of `ferry node`, the caching OCI registry mirror, against real parts:
//! Debian's `docker-registry` (plain, htpasswd, TLS, bearer token), images built with umoci and
//! pushed with skopeo, a sandboxed containerd 1.6 with runc, and a fault-injecting proxy.
//!
//! `harness/` starts and cleans up those parts; `harness_checks` proves the harness against the
//! real components without ferry; every other module tests one promise of the mirror.
//! Tests run in parallel: each owns its temp dirs, ports and processes. Every process is
//! killed on drop, and the logs of ferry, docker-registry and containerd are printed when a
//! test fails. `FERRY_E2E_LOG=debug` sets ferry's `RUST_LOG`.
//! `convert` tests `ferry convert` (zstd:chunked) on busybox, a debootstrap'ed Debian rootfs
//! (built once into `target/ferry-fixtures/`, skipped loudly when the network is down) and an
//! image of tar edge cases, checked with stock zstd, GNU tar, skopeo and containerd.
//! Needs root and Debian's containerd, runc, docker-registry, skopeo, umoci, busybox-static,
//! apache2-utils, openssl, zstd, attr and debootstrap; a missing one fails the test naming the
//! package to install.
//! `doctor` runs `ferry doctor` against a CRI-enabled sandboxed containerd and a running node,
//! then against broken variants of containerd's config and certs.d.
//! `pod` runs the node as the DaemonSet's pod would run (privileged, host network, the store with
//! shared propagation) in a container of the sandboxed containerd, serving it lazy layers.
//! `gc_lazy` evicts a mounted lazy layer's blob from a small store while a reader is in its
//! files: every read still returns the right bytes.

mod harness;

mod auth;
mod blackhole;
mod coalescing;
mod containerd_pull;
mod convert;
mod corruption;
mod crash;
mod disk_full;
mod doctor;
mod gc_lazy;
mod harness_checks;
mod lazy_fs;
mod lazy_pull;
mod malformed;
mod mirror;
mod offline;
mod operations;
mod p2p;
mod p2p_site;
mod pod;
mod prewarm;
mod prewarm_apply;
mod prewarm_live;
mod ranges;
mod snapshotter;

//! The mounts containerd performs for a snapshot, as containerd's own overlayfs snapshotter
//! describes them: a bind mount when there is one layer of files, an overlay otherwise.

use std::path::{Path, PathBuf};

/// One mount: what containerd's `Mount` carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

fn bind(dir: &Path, mode: &str) -> Mount {
    Mount { kind: "bind".into(), source: dir.display().to_string(), options: vec![mode.into(), "rbind".into()] }
}

fn lowerdir(lowers: &[PathBuf]) -> String {
    let dirs: Vec<String> = lowers.iter().map(|d| d.display().to_string()).collect();
    format!("lowerdir={}", dirs.join(":"))
}

/// A writable snapshot: its own `fs` over the parents' (`lowers`, nearest first).
pub fn active(upper: &Path, work: &Path, lowers: &[PathBuf]) -> Vec<Mount> {
    if lowers.is_empty() {
        return vec![bind(upper, "rw")];
    }
    let options =
        vec!["index=off".into(), format!("workdir={}", work.display()), format!("upperdir={}", upper.display()), lowerdir(lowers)];
    vec![Mount { kind: "overlay".into(), source: "overlay".into(), options }]
}

/// A read-only mount of `layers` (nearest first; at least one).
pub fn read_only(layers: &[PathBuf]) -> Vec<Mount> {
    match layers {
        [one] => vec![bind(one, "ro")],
        _ => vec![Mount { kind: "overlay".into(), source: "overlay".into(), options: vec![lowerdir(layers)] }],
    }
}

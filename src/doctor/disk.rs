//! Room on the store's filesystem. The store evicts once it holds `capacity × high_watermark`;
//! if the filesystem fills before that, blobs stop being stored instead. Thresholds: FAIL under
//! 1 GiB free (a single large layer no longer fits), WARN under 10% of the filesystem free, and
//! WARN when the store may still grow by more than what is free.

use std::path::{Path, PathBuf};

use registry_proxy::admin::Status as NodeStatus;

use super::{Check, Ferry};
use crate::status::bytes;

const NAME: &str = "disk.store";
const MIN_FREE: u64 = 1 << 30;

pub fn gather(ferry: &Ferry, status: Option<&NodeStatus>) -> Check {
    // The store folder may not exist yet: its filesystem is that of its nearest ancestor.
    let dir: PathBuf = ferry.store_path.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/")).to_path_buf();
    let fs = match rustix::fs::statvfs(&dir) {
        Ok(fs) => fs,
        Err(e) => return Check::warn(NAME, format!("reading the filesystem of {}: {e}", dir.display()), "check the store path"),
    };
    let total = fs.f_blocks.saturating_mul(fs.f_frsize);
    let free = fs.f_bavail.saturating_mul(fs.f_frsize);
    let capacity = match crate::config::parse_capacity(&ferry.capacity, &dir) {
        Ok(c) => c,
        Err(e) => return Check::fail(NAME, format!("{e:#}"), "fix store.capacity / --capacity"),
    };
    let space = Space { total, free, capacity, high_watermark: ferry.high_watermark, used: status.map(|s| s.store.usage.used) };
    evaluate(&ferry.store_path, &space)
}

/// The filesystem and the store, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Space {
    pub total: u64,
    pub free: u64,
    pub capacity: u64,
    pub high_watermark: f64,
    /// What the store holds, when a node answers.
    pub used: Option<u64>,
}

pub fn evaluate(store: &Path, s: &Space) -> Check {
    let summary = format!(
        "{} free of {} on the filesystem of {}; store capacity {}{}",
        bytes(s.free),
        bytes(s.total),
        store.display(),
        bytes(s.capacity),
        s.used.map(|u| format!(", {} used", bytes(u))).unwrap_or_default()
    );
    let lower = "lower store.capacity (--capacity), free space, or move the store to a bigger filesystem (--store)";
    if s.free < MIN_FREE {
        return Check::fail(NAME, format!("{summary}: under 1 GiB free, layers can no longer be stored"), lower);
    }
    let mut problems = Vec::new();
    if (s.free as f64) < 0.1 * s.total as f64 {
        problems.push("under 10% of the filesystem is free".to_string());
    }
    let evicts_at = (s.capacity as f64 * s.high_watermark) as u64;
    let growth = evicts_at.saturating_sub(s.used.unwrap_or(0));
    if s.capacity > s.total {
        problems.push("the capacity is larger than the filesystem".to_string());
    } else if growth > s.free {
        problems.push(format!(
            "the store evicts only past {}, {} more than now, but {} is free: the disk fills first",
            bytes(evicts_at),
            bytes(growth),
            bytes(s.free)
        ));
    }
    if problems.is_empty() {
        Check::ok(NAME, summary)
    } else {
        Check::warn(NAME, format!("{summary}: {}", problems.join("; ")), lower)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    const GIB: u64 = 1 << 30;

    fn eval(total: u64, free: u64, capacity: u64, used: Option<u64>) -> Check {
        evaluate(Path::new("/var/lib/ferry"), &Space { total, free, capacity, high_watermark: 0.9, used })
    }

    #[test]
    fn room_is_judged_against_the_filesystem_and_the_capacity() {
        assert_eq!(eval(1000 * GIB, 600 * GIB, 500 * GIB, None).status, Status::Ok);
        assert_eq!(eval(1000 * GIB, GIB / 2, 10 * GIB, None).status, Status::Fail, "under 1 GiB free");
        assert_eq!(eval(1000 * GIB, 50 * GIB, 10 * GIB, None).status, Status::Warn, "under 10% free");
        assert_eq!(eval(1000 * GIB, 600 * GIB, 2000 * GIB, None).status, Status::Warn, "capacity beyond the disk");
        let c = eval(1000 * GIB, 300 * GIB, 800 * GIB, Some(100 * GIB));
        assert_eq!(c.status, Status::Warn, "evicts at 720 GiB, 620 GiB away, 300 GiB free: {c:?}");
        assert_eq!(eval(1000 * GIB, 300 * GIB, 800 * GIB, Some(600 * GIB)).status, Status::Ok, "120 GiB to go, 300 free");
    }
}

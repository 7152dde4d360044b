//! The kernel side of the snapshotter: `/dev/fuse` (lazy layers are FUSE mounts), FUSE and
//! overlayfs in `/proc/filesystems` (every snapshot is mounted with overlayfs), and whether the
//! kernel is new enough (6.9) for FUSE passthrough, which reads fetched files at disk speed.

use std::path::Path;

use super::Check;

pub fn gather(snapshotter_on: bool) -> Vec<Check> {
    if !snapshotter_on {
        return vec![Check::info("fuse", "the node's snapshotter is off: FUSE and overlayfs are not used")];
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let fusermount = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join("fusermount3").is_file() || d.join("fusermount").is_file()));
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    vec![device(Path::new("/dev/fuse")), kernel_filesystems(&filesystems, fusermount), passthrough(release.trim())]
}

fn device(path: &Path) -> Check {
    const NAME: &str = "fuse.device";
    match std::fs::OpenOptions::new().read(true).write(true).open(path) {
        Ok(_) => Check::ok(NAME, format!("{} opens for reading and writing", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Check::fail(
            NAME,
            format!("no {}: lazy layers cannot be mounted (each falls back to a full download)", path.display()),
            "modprobe fuse; in a container, pass the device (--device /dev/fuse) and CAP_SYS_ADMIN",
        ),
        Err(e) => Check::fail(
            NAME,
            format!("{} does not open ({e}): lazy layers cannot be mounted", path.display()),
            "run `ferry node` (and doctor) as root",
        ),
    }
}

/// Whether `/proc/filesystems` lists `fuse` and `overlay`.
pub fn kernel_filesystems(text: &str, fusermount: bool) -> Check {
    const NAME: &str = "fuse.filesystems";
    let has = |fs: &str| text.lines().any(|l| l.split_whitespace().last() == Some(fs));
    let helper = if fusermount { "fusermount3 is installed" } else { "no fusermount3 (not needed: the node mounts as root)" };
    match (has("fuse"), has("overlay")) {
        (true, true) => Check::ok(NAME, format!("the kernel has FUSE and overlayfs; {helper}")),
        (false, _) => Check::fail(NAME, "the kernel lists no fuse filesystem: lazy layers cannot be mounted", "modprobe fuse"),
        (true, false) => {
            Check::fail(NAME, "the kernel lists no overlay filesystem: the snapshotter mounts every snapshot with it", "modprobe overlay")
        }
    }
}

/// FUSE passthrough needs Linux 6.9.
pub fn passthrough(release: &str) -> Check {
    const NAME: &str = "fuse.passthrough";
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>().ok());
    let version = match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor),
        _ => return Check::info(NAME, format!("kernel release {release:?} not understood: FUSE passthrough (6.9+) may be missing")),
    };
    if version >= (6, 9) {
        Check::ok(NAME, format!("kernel {release}: FUSE passthrough, so files of lazy layers read at disk speed once fetched"))
    } else {
        Check::info(
            NAME,
            format!("kernel {release} is older than 6.9: no FUSE passthrough, so fetched files are still read through the node (about half the disk's speed)"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    #[test]
    fn filesystems_need_fuse_and_overlay() {
        let both = "nodev\tsysfs\nnodev\tfuse\n\tfuseblk\nnodev\toverlay\n";
        assert_eq!(kernel_filesystems(both, true).status, Status::Ok);
        assert_eq!(kernel_filesystems("\tfuseblk\nnodev\toverlay\n", true).status, Status::Fail, "fuseblk is not fuse");
        assert_eq!(kernel_filesystems("nodev\tfuse\n", false).status, Status::Fail);
    }

    #[test]
    fn passthrough_comes_with_6_9() {
        assert_eq!(passthrough("6.18.44-fc-v1272").status, Status::Ok);
        assert_eq!(passthrough("6.9.0").status, Status::Ok);
        assert_eq!(passthrough("6.1.0-28-amd64").status, Status::Info);
        assert_eq!(passthrough("").status, Status::Info);
    }

    #[test]
    fn a_missing_device_fails() {
        assert_eq!(device(Path::new("/nonexistent/fuse")).status, Status::Fail);
    }
}

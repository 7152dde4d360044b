//! What a workload reads from lazy layers, in first-access order and at chunk granularity (for
//! `ferry profile`). Every FUSE read is seen, page faults of mmapped files included: the kernel
//! turns those into reads of the mount too, as long as the pages are not cached yet — so a
//! profile is taken on fresh mounts.

use std::collections::HashSet;
use std::sync::Mutex;

/// One chunk first read: layer number (as the caller counts layers), TOC entry index, and the
/// chunk's byte range in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub layer: usize,
    pub entry: usize,
    pub offset: u64,
    pub len: u64,
}

#[derive(Debug, Default)]
pub struct Recorder {
    inner: Mutex<Seen>,
}

/// The chunks seen (layer, entry, offset), and in which order.
#[derive(Debug, Default)]
struct Seen {
    chunks: HashSet<(usize, usize, u64)>,
    order: Vec<Access>,
}

impl Recorder {
    /// Records the chunk unless it was read before.
    pub fn touch(&self, a: Access) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.chunks.insert((a.layer, a.entry, a.offset)) {
            g.order.push(a);
        }
    }

    /// The chunks read so far, first access first.
    pub fn accesses(&self) -> Vec<Access> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).order.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_first_access_order_once_per_chunk() {
        let r = Recorder::default();
        let a = |layer, entry, offset| Access { layer, entry, offset, len: 10 };
        for x in [a(0, 3, 0), a(1, 3, 0), a(0, 3, 0), a(0, 1, 10), a(1, 3, 0)] {
            r.touch(x);
        }
        assert_eq!(r.accesses(), [a(0, 3, 0), a(1, 3, 0), a(0, 1, 10)]);
    }
}

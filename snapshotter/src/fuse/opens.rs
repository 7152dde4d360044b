//! The open files of a layer, and which of them pass through to a local file.
//!
//! The kernel keeps one io mode per inode: while any open of an inode goes through the page cache
//! (our reads), a passthrough open of it fails with EIO, and the other way round; all passthrough
//! opens of an inode must name the same backing file. So an inode is handed a backing file only
//! when none of its opens is a cached one, and its backing file is shared by its passthrough opens
//! and closed with the last of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How an open was answered; the file handle to give the kernel. `B` is the kernel's handle of
/// a backing file (`fuser::BackingId`), which closes it when dropped.
#[derive(Debug)]
pub enum Opened<B> {
    Cached(u64),
    Passthrough(u64, Arc<B>),
}

pub struct Opens<B> {
    inner: Mutex<Table<B>>,
}

struct Table<B> {
    next_fh: u64,
    /// fh → (inode, passthrough)
    handles: HashMap<u64, (u64, bool)>,
    inodes: HashMap<u64, Inode<B>>,
}

struct Inode<B> {
    cached: usize,
    passthrough: usize,
    backing: Option<Arc<B>>,
}

impl<B> Default for Opens<B> {
    fn default() -> Self {
        Opens { inner: Mutex::new(Table { next_fh: 0, handles: HashMap::new(), inodes: HashMap::new() }) }
    }
}

impl<B> Opens<B> {
    /// Opens `ino`: through `backing` (which registers the local file with the kernel) when it
    /// gives one and no cached open of the inode is open; otherwise through the page cache.
    /// `backing` returning `None` or failing means a cached open.
    pub fn open(&self, ino: u64, backing: impl FnOnce() -> Option<std::io::Result<B>>) -> Opened<B> {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        t.next_fh += 1;
        let fh = t.next_fh;
        let inode = t.inodes.entry(ino).or_insert(Inode { cached: 0, passthrough: 0, backing: None });
        if inode.cached == 0 {
            let id = match inode.backing.clone() {
                Some(id) => Some(id),
                None => match backing() {
                    Some(Ok(id)) => Some(Arc::new(id)),
                    Some(Err(e)) => {
                        tracing::warn!(ino, error = %e, "cannot pass a local file through; reading it through FUSE");
                        None
                    }
                    None => None,
                },
            };
            if let Some(id) = id {
                inode.passthrough += 1;
                inode.backing = Some(id.clone());
                t.handles.insert(fh, (ino, true));
                return Opened::Passthrough(fh, id);
            }
        }
        inode.cached += 1;
        t.handles.insert(fh, (ino, false));
        Opened::Cached(fh)
    }

    /// Closes handle `fh`; the inode's backing file goes with its last passthrough open.
    pub fn release(&self, fh: u64) {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some((ino, passthrough)) = t.handles.remove(&fh) else { return };
        let Some(inode) = t.inodes.get_mut(&ino) else { return };
        if passthrough {
            inode.passthrough -= 1;
            if inode.passthrough == 0 {
                inode.backing = None;
            }
        } else {
            inode.cached -= 1;
        }
        if inode.cached == 0 && inode.passthrough == 0 {
            t.inodes.remove(&ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fh(o: &Opened<u32>) -> u64 {
        match o {
            Opened::Cached(fh) | Opened::Passthrough(fh, _) => *fh,
        }
    }

    #[test]
    fn an_inode_passes_through_only_while_none_of_its_opens_is_cached() {
        let opens = Opens::<u32>::default();
        let cached = opens.open(5, || None);
        assert!(matches!(cached, Opened::Cached(_)));
        // Assembled meanwhile, but a cached open is still open: cached again, no backing made.
        let again = opens.open(5, || panic!("no backing file while a cached open is open"));
        assert!(matches!(again, Opened::Cached(_)));
        opens.release(fh(&cached));
        opens.release(fh(&again));
        let a = opens.open(5, || Some(Ok(7)));
        let b = opens.open(5, || panic!("the backing file is shared"));
        match (&a, &b) {
            (Opened::Passthrough(fa, x), Opened::Passthrough(fb, y)) => {
                assert_ne!(fa, fb);
                assert!(Arc::ptr_eq(x, y));
            }
            other => panic!("want two passthrough opens, got {other:?}"),
        }
        // Other inodes are independent.
        assert!(matches!(opens.open(6, || None), Opened::Cached(_)));
        opens.release(fh(&a));
        opens.release(fh(&b));
        // The last passthrough open closed the backing file: the next open makes a new one.
        assert!(matches!(opens.open(5, || Some(Ok(8))), Opened::Passthrough(_, id) if *id == 8));
    }

    #[test]
    fn a_backing_file_that_cannot_be_made_means_a_cached_open() {
        let opens = Opens::<u32>::default();
        let o = opens.open(9, || Some(Err(std::io::Error::from_raw_os_error(libc::ELOOP))));
        assert!(matches!(o, Opened::Cached(_)));
        opens.release(fh(&o));
        opens.release(fh(&o));
        assert!(matches!(opens.open(9, || Some(Ok(1))), Opened::Passthrough(..)));
    }
}

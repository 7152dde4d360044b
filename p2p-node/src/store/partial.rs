//! A blob being filled piece by piece: a sparse data file, a piece bitmap, a claim map that
//! makes concurrent wants of one piece cause one fetch, and the running sha256 that decides
//! whether the blob may become complete.
//!
//! Invariants:
//! - a piece is marked present only after its bytes were written; the persisted bitmap only
//!   names pieces whose bytes were fsynced before it was written, so a kill -9 never leaves a torn
//!   piece marked present;
//! - the blob becomes complete (renamed into `blobs/`) only after its whole-blob sha256 matched;
//! - a piece written from an untrusted source (a peer) stays *untrusted* until the whole blob is
//!   verified: [`Partial::trusted`] is false for it, so it is neither served to a client nor
//!   offered to other peers before then. Pieces recovered after a restart count as untrusted too.
//!   When the whole-blob digest does not match and untrusted pieces were part of it, those pieces
//!   are dropped and the blob is *repaired* from the origin alone ([`Partial::origin_only`])
//!   instead of failing: the trusted pieces are kept.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, MutexGuard, Weak};

use tokio::sync::watch;

use super::bitmap::Bitmap;
use super::{Inner, PIECE_SIZE};
use crate::digest::{Digest, Hasher};
use crate::Error;

/// Persist the bitmap after this many newly written pieces...
const PERSIST_EVERY: u32 = 64;
/// ...or when this long has passed since the last persist with any new piece (and when a fetch
/// ends), so a crash loses at most about this much fetching.
const PERSIST_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// What [`Partial::poll`] found for a byte range.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeState {
    /// Every piece of the range is present.
    Ready,
    /// These runs of pieces were missing and nobody was fetching them: the caller now holds
    /// their claim and must fetch them (and [`Partial::unclaim`] what it could not).
    Claimed(Vec<Range<u32>>),
    /// Others are fetching the missing pieces: wait for a change and poll again.
    Pending,
    /// The blob failed verification and is gone.
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    Filling,
    Complete,
    Failed(String),
}

struct Pieces {
    present: Bitmap,
    claimed: Bitmap,
    /// Present pieces that came from an untrusted source; kept after completion (for accounting).
    untrusted: Bitmap,
    /// After a repair, every missing piece must come from the origin.
    origin_only: bool,
    unpersisted: u32,
    last_persist: std::time::Instant,
    status: Status,
}

struct HashProgress {
    next: u32,
    hasher: Hasher,
}

pub struct Partial {
    digest: Digest,
    size: u64,
    file: File,
    store: Weak<Inner>,
    pieces: Mutex<Pieces>,
    /// Serializes the sha256 walk over pieces in order; held while reading pieces back.
    hash: Mutex<HashProgress>,
    /// Serializes bitmap persistence so an older snapshot never replaces a newer one.
    persist: Mutex<()>,
    /// Bumped on every change of `pieces`; readers wait on it.
    changed: watch::Sender<u64>,
}

impl std::fmt::Debug for Partial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Partial({}, {} bytes)", self.digest.short(), self.size)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(super) fn piece_count(size: u64) -> u32 {
    u32::try_from(size.div_ceil(PIECE_SIZE)).unwrap_or(u32::MAX)
}

impl Partial {
    pub(super) fn new(digest: Digest, size: u64, file: File, present: Bitmap, store: Weak<Inner>) -> Partial {
        let n = present.len();
        Partial {
            digest,
            size,
            file,
            store,
            pieces: Mutex::new(Pieces {
                untrusted: present.clone(),
                origin_only: false,
                present,
                claimed: Bitmap::new(n),
                unpersisted: 0,
                last_persist: std::time::Instant::now(),
                status: Status::Filling,
            }),
            hash: Mutex::new(HashProgress { next: 0, hasher: Hasher::new() }),
            persist: Mutex::new(()),
            changed: watch::channel(0).0,
        }
    }

    pub fn digest(&self) -> Digest {
        self.digest
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn piece_count(&self) -> u32 {
        piece_count(self.size)
    }

    /// The byte range of piece `index`.
    pub fn piece_range(&self, index: u32) -> Range<u64> {
        let start = index as u64 * PIECE_SIZE;
        start..(start + PIECE_SIZE).min(self.size)
    }

    /// The pieces that cover the byte range (empty for an empty range).
    pub fn pieces_of(&self, bytes: Range<u64>) -> Range<u32> {
        if bytes.start >= bytes.end {
            return 0..0;
        }
        (bytes.start / PIECE_SIZE) as u32..bytes.end.div_ceil(PIECE_SIZE) as u32
    }

    /// Bytes present (counted in whole pieces).
    pub fn present_bytes(&self) -> u64 {
        self.bytes_in(&lock(&self.pieces).present)
    }

    /// Bytes of the pieces set in `map`.
    fn bytes_in(&self, map: &Bitmap) -> u64 {
        (0..map.len()).filter(|&i| map.get(i)).map(|i| self.piece_range(i).end - self.piece_range(i).start).sum()
    }

    /// A copy of which pieces are present now.
    pub fn present(&self) -> Bitmap {
        lock(&self.pieces).present.clone()
    }

    /// The present pieces that may be handed on: all of them once complete, else the trusted ones.
    pub fn trusted_present(&self) -> Bitmap {
        let p = lock(&self.pieces);
        let mut map = p.present.clone();
        if p.status != Status::Complete {
            (0..map.len()).filter(|&i| p.untrusted.get(i)).for_each(|i| map.set(i, false));
        }
        map
    }

    /// Whether every piece of `pieces` is present and may be handed on.
    pub fn trusted(&self, pieces: Range<u32>) -> bool {
        let p = lock(&self.pieces);
        match p.status {
            Status::Complete => true,
            Status::Failed(_) => false,
            Status::Filling => pieces.into_iter().all(|i| p.present.get(i) && !p.untrusted.get(i)),
        }
    }

    /// Whether piece `index` came from an untrusted source (a peer).
    pub fn from_untrusted(&self, index: u32) -> bool {
        lock(&self.pieces).untrusted.get(index)
    }

    /// Whether piece `index` is being fetched now (claimed and not yet present).
    pub fn is_claimed(&self, index: u32) -> bool {
        let p = lock(&self.pieces);
        index < p.claimed.len() && p.claimed.get(index) && !p.present.get(index)
    }

    /// True after a repair: missing pieces must come from the origin, not from peers.
    pub fn origin_only(&self) -> bool {
        lock(&self.pieces).origin_only
    }

    /// Bytes present that came from untrusted sources (counted in whole pieces).
    pub fn untrusted_bytes(&self) -> u64 {
        self.bytes_in(&lock(&self.pieces).untrusted)
    }

    pub fn is_complete(&self) -> bool {
        lock(&self.pieces).status == Status::Complete
    }

    /// A receiver that sees a new value whenever pieces arrive, claims drop, or the blob ends.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Checks a byte range; claims the missing pieces nobody is fetching.
    pub fn poll(&self, bytes: Range<u64>) -> RangeState {
        let pieces = self.pieces_of(bytes);
        let mut p = lock(&self.pieces);
        match &p.status {
            Status::Failed(why) => return RangeState::Failed(why.clone()),
            Status::Complete => return RangeState::Ready,
            Status::Filling => {}
        }
        let mut runs: Vec<Range<u32>> = Vec::new();
        let mut pending = false;
        for i in pieces {
            if p.present.get(i) {
                continue;
            }
            if p.claimed.get(i) {
                pending = true;
                continue;
            }
            p.claimed.set(i, true);
            match runs.last_mut() {
                Some(run) if run.end == i => run.end = i + 1,
                _ => runs.push(i..i + 1),
            }
        }
        if !runs.is_empty() {
            RangeState::Claimed(runs)
        } else if pending {
            RangeState::Pending
        } else {
            RangeState::Ready
        }
    }

    /// Gives back claims on pieces the caller could not fetch, so another want can take them.
    pub fn unclaim(&self, pieces: Range<u32>) {
        let mut p = lock(&self.pieces);
        for i in pieces {
            p.claimed.set(i, false);
        }
        drop(p);
        self.changed.send_modify(|v| *v += 1);
    }

    /// Writes piece `index` (exactly its length) and marks it present; `trusted` is false for
    /// bytes from a peer. When the last piece arrives, verifies the whole blob and commits it (or
    /// repairs it, see the module header). Blocking.
    pub fn write_piece(&self, index: u32, data: &[u8], trusted: bool) -> Result<(), Error> {
        let range = self.piece_range(index);
        if index >= self.piece_count() || data.len() as u64 != range.end - range.start {
            return Err(Error::BadPiece { digest: self.digest, index, len: data.len() as u64 });
        }
        {
            let p = lock(&self.pieces);
            if let Status::Failed(why) = &p.status {
                return Err(Error::Failed { digest: self.digest, why: why.clone() });
            }
            if !trusted && p.origin_only {
                return Err(Error::Repairing { digest: self.digest, pieces: 0 });
            }
        }
        self.file.write_all_at(data, range.start).map_err(|e| Error::io(format!("writing piece {index} of {}", self.digest), e))?;
        {
            let mut p = lock(&self.pieces);
            p.present.set(index, true);
            p.untrusted.set(index, !trusted);
            p.claimed.set(index, false);
            p.unpersisted += 1;
        }
        self.changed.send_modify(|v| *v += 1);
        self.advance_hash(index, data)
    }

    /// Whether enough pieces arrived since the last [`Partial::persist`] that it is worth calling
    /// (the writer may call it in the background; it only makes progress durable).
    pub fn persist_due(&self) -> bool {
        let p = lock(&self.pieces);
        p.status == Status::Filling && (p.unpersisted >= PERSIST_EVERY || (p.unpersisted > 0 && p.last_persist.elapsed() >= PERSIST_AFTER))
    }

    /// Reads bytes at `offset` (the caller checked they are present). Blocking.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        self.file.read_exact_at(buf, offset).map_err(|e| Error::io(format!("reading {} at {offset}", self.digest), e))
    }

    /// Makes the present pieces durable: fsync the data, then atomically replace the bitmap.
    pub fn persist(&self) -> Result<(), Error> {
        let _one = lock(&self.persist);
        let snapshot = {
            let mut p = lock(&self.pieces);
            if p.status != Status::Filling {
                return Ok(());
            }
            p.unpersisted = 0;
            p.last_persist = std::time::Instant::now();
            p.present.clone()
        };
        let Some(store) = self.store.upgrade() else { return Ok(()) };
        self.file.sync_data().map_err(|e| Error::io(format!("syncing {}", self.digest), e))?;
        store.write_atomic(&store.map_path(&self.digest), &snapshot.encode(self.size, PIECE_SIZE))
    }

    /// Feeds the sha256 with every present piece in order; commits or fails the blob at the end.
    fn advance_hash(&self, just_written: u32, data: &[u8]) -> Result<(), Error> {
        let mut h = lock(&self.hash);
        let n = self.piece_count();
        let mut buf = Vec::new();
        while h.next < n {
            let next = h.next;
            if !lock(&self.pieces).present.get(next) {
                return Ok(());
            }
            if next == just_written {
                h.hasher.update(data);
            } else {
                let r = self.piece_range(next);
                buf.resize((r.end - r.start) as usize, 0);
                self.read_at(&mut buf, r.start)?;
                h.hasher.update(&buf);
            }
            h.next += 1;
        }
        if h.next == n && n > 0 {
            h.next = n + 1; // finish once
            let got = std::mem::take(&mut h.hasher).finish();
            drop(h);
            return self.finish(got);
        }
        Ok(())
    }

    fn finish(&self, got: Digest) -> Result<(), Error> {
        let Some(store) = self.store.upgrade() else { return Ok(()) };
        // No bitmap write may land after the commit or failure removed the map.
        let _no_persist = lock(&self.persist);
        let result = if got == self.digest {
            store.commit_partial(self, &self.file)
        } else if let Some(dropped) = self.drop_untrusted() {
            return Err(Error::Repairing { digest: self.digest, pieces: dropped });
        } else {
            Err(Error::DigestMismatch { expected: self.digest, got })
        };
        let status = match &result {
            Ok(()) => Status::Complete,
            Err(e) => {
                store.drop_partial(self);
                Status::Failed(e.to_string())
            }
        };
        lock(&self.pieces).status = status;
        self.changed.send_modify(|v| *v += 1);
        result
    }

    /// After a mismatch: forgets the untrusted pieces and restarts the hash walk, so the blob
    /// is completed from the origin. `None` when there was nothing untrusted to blame.
    fn drop_untrusted(&self) -> Option<u32> {
        let mut p = lock(&self.pieces);
        let suspects: Vec<u32> = (0..p.untrusted.len()).filter(|&i| p.untrusted.get(i)).collect();
        if suspects.is_empty() {
            return None;
        }
        for &i in &suspects {
            p.present.set(i, false);
            p.untrusted.set(i, false);
        }
        p.origin_only = true;
        p.unpersisted += 1;
        drop(p);
        *lock(&self.hash) = HashProgress { next: 0, hasher: Hasher::new() };
        self.changed.send_modify(|v| *v += 1);
        Some(suspects.len() as u32)
    }

    /// Fails the blob now (e.g. the origin sent the wrong size); waiters see the reason.
    pub fn fail(&self, why: String) {
        // No bitmap write may land after the files are gone (a new partial may take the name).
        let _no_persist = lock(&self.persist);
        if let Some(store) = self.store.upgrade() {
            store.drop_partial(self);
        }
        lock(&self.pieces).status = Status::Failed(why);
        self.changed.send_modify(|v| *v += 1);
    }

    pub(super) fn all_present(&self) -> bool {
        lock(&self.pieces).present.is_full()
    }

    /// Hashes what is present and, if that is everything, commits or fails the blob. Blocking.
    /// A mismatch discards the blob: recovered bytes are all untrusted, so nothing is kept.
    pub(super) fn verify_present(&self) -> Result<(), Error> {
        let result = self.advance_hash(u32::MAX, &[]);
        if let Err(e @ Error::Repairing { .. }) = &result {
            self.fail(e.to_string());
        }
        result
    }

    pub(super) fn is_idle(&self) -> bool {
        let p = lock(&self.pieces);
        p.claimed.count() == 0
    }
}

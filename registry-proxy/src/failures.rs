//! Recent failed fetches per digest, so that waiters fail together instead of retrying in turn,
//! and a digest mismatch from the origin is answered at once for a while.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use p2p_node::Digest;

use crate::Error;

/// How long a digest mismatch from the origin is remembered (answered 502 without refetching).
const BAD_DIGEST_MEMORY: Duration = Duration::from_secs(30);

struct Failure {
    at: Instant,
    reason: String,
    bad_digest: bool,
}

/// Entries older than anyone could still be waiting are dropped as new ones come.
#[derive(Default)]
pub(crate) struct Failures(Mutex<HashMap<Digest, Failure>>);

/// How long a failure is kept at all.
const FORGET_FAILURES_AFTER: Duration = Duration::from_secs(600);

impl Failures {
    pub(crate) fn record(&self, d: Digest, e: &Error) {
        let bad_digest = matches!(e, Error::Store(p2p_node::Error::DigestMismatch { .. }));
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, f| f.at.elapsed() < FORGET_FAILURES_AFTER);
        map.insert(d, Failure { at: Instant::now(), reason: e.to_string(), bad_digest });
    }

    /// Why the last fetch of `d` failed, if it failed after `since`.
    pub(crate) fn since(&self, d: &Digest, since: Instant) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(d).filter(|f| f.at >= since).map(|f| f.reason.clone())
    }

    /// The digest mismatch the origin gave for `d` within the last [`BAD_DIGEST_MEMORY`].
    pub(crate) fn bad_digest(&self, d: &Digest) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(d)
            .filter(|f| f.bad_digest && f.at.elapsed() < BAD_DIGEST_MEMORY)
            .map(|f| f.reason.clone())
    }
}

//! What carrying out an order takes, as an interface: the node's registry side owns the orders,
//! its snapshotter side knows how to fetch an image's startup chunks first; this trait and its
//! progress counters let the one call the other without depending on it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64};

/// Progress of one warm, updated by the warmer as it goes.
#[derive(Debug, Default)]
pub struct WarmProgress {
    /// Bytes of the image's blobs, once its manifest is read.
    pub total_bytes: AtomicU64,
    /// Bytes of them on the node now (prioritized chunks, then whole layers).
    pub done_bytes: AtomicU64,
    /// Of `done_bytes`, the bytes of prioritized chunks.
    pub priority_bytes: AtomicU64,
    /// The prioritized chunks are in; whole layers are being fetched.
    pub layers: AtomicBool,
}

/// Fetches an image onto this node ahead of time: startup chunks first, then every layer whole,
/// at most `rate` bytes per second.
pub trait Warm: Send + Sync {
    fn warm<'a>(
        &'a self,
        image: &'a str,
        rate: Option<u64>,
        progress: &'a WarmProgress,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

//! Answering peers: have-maps, and pieces — waited for a little while this node fetches them, or
//! ordered fetched when this node owns their segment — within the peer's slots and the upload rate.

use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::mpsc;

use super::limits::Limits;
use super::protocol::{Request, Response};
use super::FetchOrder;
use crate::store::Store;

/// A peer asked for a piece this node is fetching waits this long for it before `NotYet`.
const PIECE_WAIT: Duration = Duration::from_secs(4);

/// Answers a peer's request from the store. A piece this node is fetching — or, asked with an
/// origin hint, now orders fetched — is waited for a little; then one of the peer's few slots,
/// the bytes, and the upload rate.
pub(crate) async fn serve(store: &Store, limits: &Limits, orders: &mpsc::Sender<FetchOrder>, peer: PeerId, request: Request) -> Response {
    let (digest, index, origin) = match request {
        Request::HaveMap { digest } => {
            let store = store.clone();
            return match tokio::task::spawn_blocking(move || store.have_map(&digest)).await {
                Ok(Some((size, pieces))) => Response::HaveMap { size, pieces },
                _ => Response::NotHere,
            };
        }
        Request::Piece { digest, index, origin } => (digest, index, origin),
    };
    let fetching = |store: &Store| store.partial(&digest).is_some_and(|p| index < p.piece_count() && p.is_claimed(index));
    let have = |store: &Store| match store.partial(&digest) {
        Some(p) => index < p.piece_count() && p.trusted(index..index + 1),
        None => store.state(&digest) != crate::store::BlobState::Absent,
    };
    let ordered = match origin {
        Some(origin) if !have(store) && !fetching(store) => orders.try_send(FetchOrder { digest, index, origin, from: peer }).is_ok(),
        _ => false,
    };
    let started = std::time::Instant::now();
    if ordered || fetching(store) {
        wait_for_piece(store, &digest, index).await;
    }
    let waited = started.elapsed();
    let _slot = limits.slot(peer).await;
    tracing::debug!(%peer, %digest, index, ordered, waited_ms = waited.as_millis() as u64, slot_ms = (started.elapsed() - waited).as_millis() as u64, "serving a piece request");
    let s = store.clone();
    let data = tokio::task::spawn_blocking(move || s.read_piece(&digest, index)).await;
    match data {
        Ok(Ok(Some(data))) => {
            limits.spend(data.len() as u64).await;
            limits.counters.sent(peer, data.len() as u64);
            Response::Piece(data)
        }
        Ok(Ok(None)) if ordered || fetching(store) => Response::NotYet,
        Ok(Ok(None)) => Response::NotHere,
        Ok(Err(e)) => {
            tracing::warn!(%digest, index, error = %e, "cannot read a piece for a peer");
            Response::NotHere
        }
        Err(_) => Response::NotHere,
    }
}

/// Waits up to [`PIECE_WAIT`] for piece `index` of `d` to be here and trusted (the partial blob
/// may not exist yet when an order was just sent).
async fn wait_for_piece(store: &Store, d: &crate::Digest, index: u32) {
    let deadline = tokio::time::Instant::now() + PIECE_WAIT;
    loop {
        let Some(p) = store.partial(d) else {
            if store.state(d) != crate::store::BlobState::Absent || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut changes = p.subscribe();
        if index >= p.piece_count() || p.trusted(index..index + 1) || p.is_complete() {
            return;
        }
        if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
            return;
        }
    }
}

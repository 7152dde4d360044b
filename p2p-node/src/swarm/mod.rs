//! The libp2p swarm of a site's nodes: discovery (bootstrap addresses, mDNS, a Kademlia DHT under
//! Ferry's own protocol name), provider records for blobs, and the `/ferry/pieces/1` exchange.
//!
//! Shape: a cloneable [`Client`] sends [`Command`]s, each with a reply channel, to an
//! [`event_loop::EventLoop`] that owns the `Swarm` (which is not `Sync`). Pending DHT queries and
//! piece requests wait in maps keyed by their ids; failures travel back through the replies.
//!
//! Invariants: with a pre-shared key, only nodes holding the same key complete a connection (the
//! key wraps the TCP stream before noise); bytes received from peers are never trusted here —
//! callers verify them against digests from a trusted source before use.

mod event_loop;
mod limits;
pub mod protocol;

pub use limits::Traffic;

use std::path::Path;

use libp2p::identity::Keypair;
use libp2p::pnet::PreSharedKey;
pub use libp2p::Multiaddr;
use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot};

use crate::store::{Bitmap, Store};
use crate::{Digest, Error};

/// How a node joins its site's swarm.
#[derive(Debug, Clone, Default)]
pub struct SwarmConfig {
    /// Addresses to listen on (`/ip4/0.0.0.0/tcp/4001`).
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start, each ending in `/p2p/<peer id>`.
    pub bootstrap: Vec<Multiaddr>,
    /// The cluster key: without the same key, no connection completes.
    pub psk: Option<PreSharedKey>,
    /// Find peers on the local network by multicast DNS.
    pub mdns: bool,
    /// This node's region, told to peers (same-region peers are preferred).
    pub region: String,
    /// Upload cap in bytes per second for everything served to peers (`None`: no cap).
    pub upload_rate: Option<u64>,
    /// Pieces served to one peer at a time (at least 1).
    pub upload_per_peer: usize,
}

/// A peer this node is connected to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerInfo {
    pub peer_id: String,
    pub region: Option<String>,
    pub addresses: Vec<String>,
}

pub(crate) enum Command {
    ListenAddrs { reply: oneshot::Sender<Vec<Multiaddr>> },
    Dial { addr: Multiaddr, reply: oneshot::Sender<Result<(), Error>> },
    Provide { digest: Digest },
    Providers { digest: Digest, reply: oneshot::Sender<Vec<PeerId>> },
    Request { peer: PeerId, request: protocol::Request, reply: oneshot::Sender<Result<protocol::Response, Error>> },
    Respond { channel: libp2p::request_response::ResponseChannel<protocol::Response>, response: protocol::Response },
    Peers { reply: oneshot::Sender<Vec<PeerInfo>> },
}

/// A handle on the swarm; cheap to clone. The swarm stops when every handle is dropped.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<Command>,
    local: PeerId,
    counters: std::sync::Arc<limits::Counters>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "swarm::Client({})", self.local)
    }
}

fn gone() -> Error {
    Error::Swarm("the swarm has stopped".into())
}

impl Client {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    pub fn peer_id(&self) -> PeerId {
        self.local
    }

    /// Bytes received from and served to peers since start.
    pub fn traffic(&self) -> Traffic {
        self.counters.snapshot()
    }

    /// The addresses the swarm listens on now.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, Error> {
        self.ask(|reply| Command::ListenAddrs { reply }).await
    }

    /// Dials `addr` (ending in `/p2p/<peer id>`) and waits until connected.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), Error> {
        self.ask(|reply| Command::Dial { addr, reply }).await?
    }

    /// Announces that this node holds (some of) `digest`.
    pub async fn provide(&self, digest: Digest) -> Result<(), Error> {
        self.tx.send(Command::Provide { digest }).await.map_err(|_| gone())
    }

    /// The peers that announced `digest` (connected peers are asked by the DHT query too).
    pub async fn providers(&self, digest: Digest) -> Result<Vec<PeerId>, Error> {
        self.ask(|reply| Command::Providers { digest, reply }).await
    }

    async fn request(&self, peer: PeerId, request: protocol::Request) -> Result<protocol::Response, Error> {
        self.ask(|reply| Command::Request { peer, request, reply }).await?
    }

    /// Which pieces of `digest` `peer` holds: `None` when it holds none.
    pub async fn have_map(&self, peer: PeerId, digest: Digest) -> Result<Option<(u64, Bitmap)>, Error> {
        match self.request(peer, protocol::Request::HaveMap { digest }).await? {
            protocol::Response::HaveMap { size, pieces } => Ok(Some((size, pieces))),
            protocol::Response::NotHere => Ok(None),
            protocol::Response::Piece(_) => {
                Err(Error::Peer { peer: peer.to_string(), why: "answered a have-map request with a piece".into() })
            }
        }
    }

    /// Piece `index` of `digest` from `peer` — unverified bytes: the caller checks them.
    pub async fn piece(&self, peer: PeerId, digest: Digest, index: u32) -> Result<Option<Vec<u8>>, Error> {
        match self.request(peer, protocol::Request::Piece { digest, index }).await? {
            protocol::Response::Piece(data) => {
                self.counters.bytes_in.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                Ok(Some(data))
            }
            protocol::Response::NotHere => Ok(None),
            protocol::Response::HaveMap { .. } => {
                Err(Error::Peer { peer: peer.to_string(), why: "answered a piece request with a have-map".into() })
            }
        }
    }

    /// The peers connected now.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, Error> {
        self.ask(|reply| Command::Peers { reply }).await
    }
}

/// Reads the node's identity from `path`, creating it (ed25519) the first time.
pub fn load_or_create_identity(path: &Path) -> Result<Keypair, Error> {
    let io = |what: &str, e| Error::io(format!("{what} {}", path.display()), e);
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| Error::Swarm(format!("identity key {}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().map_err(|e| Error::Swarm(format!("encoding the identity key: {e}")))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| io("creating the folder of", e))?;
            }
            std::fs::write(path, bytes).map_err(|e| io("writing", e))?;
            Ok(key)
        }
        Err(e) => Err(io("reading", e)),
    }
}

/// Reads a cluster key in the usual libp2p `swarm.key` form.
pub fn load_psk(path: &Path) -> Result<PreSharedKey, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading the cluster key {}", path.display()), e))?;
    text.parse()
        .map_err(|e| Error::Swarm(format!("cluster key {}: {e} (expected /key/swarm/psk/1.0.0/, /base16/, 64 hex digits)", path.display())))
}

/// Starts the swarm; serves pieces from `store`.
pub fn spawn(config: SwarmConfig, key: Keypair, store: Store) -> Result<Client, Error> {
    let local = key.public().to_peer_id();
    let (tx, rx) = mpsc::channel(256);
    let counters = std::sync::Arc::new(limits::Counters::default());
    let limits = limits::Limits::new(config.upload_rate, config.upload_per_peer, counters.clone());
    let event_loop = event_loop::EventLoop::new(config, key, store, limits, rx, tx.downgrade())?;
    tokio::spawn(event_loop.run());
    Ok(Client { tx, local, counters })
}

#[cfg(test)]
mod tests;

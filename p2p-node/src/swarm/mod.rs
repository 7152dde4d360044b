//! The libp2p swarm of a site's nodes: discovery (bootstrap addresses, mDNS, a Kademlia DHT under
//! Ferry's own protocol name), provider records for blobs, the `/ferry/pieces/1` exchange, bans,
//! rate caps, [`site`]: who fetches which piece from the origin, and the `/ferry/prewarm/1`
//! exchange of prewarm orders ([`orders`]).
//!
//! Shape: a cloneable [`Client`] sends [`Command`]s, each with a reply channel, to an
//! [`event_loop::EventLoop`] that owns the `Swarm` (which is not `Sync`). Pending DHT queries and
//! piece requests wait in maps keyed by their ids; failures travel back through the replies.
//!
//! Invariants: with a pre-shared key, only nodes holding the same key complete a connection (the
//! key wraps the TCP stream before noise); bytes received from peers are never trusted here —
//! callers verify them against digests from a trusted source before use, and [`Client::ban`] a
//! peer that lied: it is disconnected and refused until the ban ends.

mod event_loop;
mod limits;
pub mod orders;
pub mod protocol;
mod serve;
pub mod site;

pub use limits::{PeerTraffic, Traffic};
pub use protocol::Origin;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::identity::Keypair;
use libp2p::pnet::PreSharedKey;
pub use libp2p::Multiaddr;
pub use libp2p::PeerId;
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
    /// This node's zone within its region (a rack, a switch), told to peers; empty: none. Among
    /// same-region peers, same-zone ones are preferred.
    pub zone: String,
    /// This node's name (the Kubernetes node name), told to peers: prewarm orders find it by it.
    pub node_name: String,
    /// Upload cap in bytes per second for everything served to peers (`None`: no cap).
    pub upload_rate: Option<u64>,
    /// Download cap in bytes per second for everything fetched from peers (`None`: no cap).
    pub download_rate: Option<u64>,
    /// Pieces served to one peer at a time (at least 1).
    pub upload_per_peer: usize,
    /// TEST-ONLY fault switch: flip a byte of every piece served to peers, to prove that peers
    /// verify and ban. `ferry node` sets it only from `FERRY_TEST_FAULT_CORRUPT_SERVED_PIECES=1`.
    pub test_fault_corrupt_served_pieces: bool,
}

/// A peer this node is connected to.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PeerInfo {
    pub peer_id: String,
    pub region: Option<String>,
    #[serde(default)]
    pub zone: Option<String>,
    /// The peer's node name.
    #[serde(default)]
    pub node: Option<String>,
    /// What this node exchanged with the peer.
    #[serde(default)]
    pub traffic: PeerTraffic,
}

/// A peer refused for a while because it served bad bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ban {
    pub peer_id: String,
    pub why: String,
    pub seconds_left: u64,
}

/// A connected peer, for choosing whom to ask.
#[derive(Debug, Clone)]
pub struct SitePeer {
    pub id: PeerId,
    pub region: Option<String>,
    pub zone: Option<String>,
    pub name: Option<String>,
}

/// A peer asked for a piece of a segment this node owns and nobody here fetches: fetch it from
/// the origin (with this node's own access), so the peer can have it.
#[derive(Debug, Clone)]
pub struct FetchOrder {
    pub digest: Digest,
    pub index: u32,
    pub origin: Origin,
    pub from: PeerId,
}

/// The swarm handle, the fetch orders peers send (which the node's fetcher carries out), and the
/// prewarm order requests peers send (which the node verifies and answers).
pub struct Swarm {
    pub client: Client,
    pub orders: mpsc::Receiver<FetchOrder>,
    pub prewarm: mpsc::Receiver<orders::InboundOrder>,
}

/// What a peer answered to a piece request.
#[derive(Debug)]
pub enum PieceAnswer {
    /// The bytes, unverified.
    Data(Vec<u8>),
    /// The peer is fetching it: ask again.
    NotYet,
    NotHere,
}

pub(crate) enum Command {
    ListenAddrs { reply: oneshot::Sender<Vec<Multiaddr>> },
    Dial { addr: Multiaddr, reply: oneshot::Sender<Result<(), Error>> },
    Provide { digest: Digest },
    Providers { digest: Digest, reply: oneshot::Sender<Vec<PeerId>> },
    Request { peer: PeerId, request: protocol::Request, reply: oneshot::Sender<Result<protocol::Response, Error>> },
    Respond { channel: libp2p::request_response::ResponseChannel<protocol::Response>, response: protocol::Response },
    OrderRequest { peer: PeerId, request: orders::OrderRequest, reply: oneshot::Sender<Result<orders::OrderResponse, Error>> },
    OrderRespond { channel: libp2p::request_response::ResponseChannel<orders::OrderResponse>, response: orders::OrderResponse },
    Peers { reply: oneshot::Sender<Vec<SitePeer>> },
    Ban { peer: PeerId, until: Instant, why: String },
    Bans { reply: oneshot::Sender<Vec<Ban>> },
}

/// A handle on the swarm; cheap to clone. The swarm stops when every handle is dropped.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<Command>,
    local: PeerId,
    region: String,
    zone: String,
    limits: Arc<limits::Limits>,
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

    /// This node's region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// This node's zone ("" when it has none).
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// Bytes received from and served to peers since start.
    pub fn traffic(&self) -> Traffic {
        self.limits.counters.snapshot()
    }

    /// What this node exchanged with `peer`, and how fast it served.
    pub fn traffic_with(&self, peer: &PeerId) -> PeerTraffic {
        self.limits.counters.of(peer)
    }

    /// Notes that a request to `peer` failed (it counts against choosing that peer).
    pub fn failed(&self, peer: PeerId) {
        self.limits.counters.failed(peer);
    }

    /// Disconnects `peer` and refuses it for `duration`.
    pub async fn ban(&self, peer: PeerId, duration: Duration, why: String) -> Result<(), Error> {
        self.limits.counters.failed(peer);
        self.tx.send(Command::Ban { peer, until: Instant::now() + duration, why }).await.map_err(|_| gone())
    }

    /// The peers banned now.
    pub async fn bans(&self) -> Result<Vec<Ban>, Error> {
        self.ask(|reply| Command::Bans { reply }).await
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

    fn unexpected(peer: PeerId, asked: &str, response: &protocol::Response) -> Error {
        let got = match response {
            protocol::Response::NotHere => "not here",
            protocol::Response::NotYet => "not yet",
            protocol::Response::HaveMap { .. } => "a have-map",
            protocol::Response::Piece(_) => "a piece",
        };
        Error::Peer { peer: peer.to_string(), why: format!("answered a {asked} request with {got}") }
    }

    /// Which pieces of `digest` `peer` can hand on: `None` when it holds none.
    pub async fn have_map(&self, peer: PeerId, digest: Digest) -> Result<Option<(u64, Bitmap)>, Error> {
        match self.request(peer, protocol::Request::HaveMap { digest }).await? {
            protocol::Response::HaveMap { size, pieces } => Ok(Some((size, pieces))),
            protocol::Response::NotHere => Ok(None),
            r => Err(Self::unexpected(peer, "have-map", &r)),
        }
    }

    /// Piece `index` of `digest` from `peer` — unverified bytes: the caller checks them. With
    /// `origin`, a peer that owns the piece's segment fetches it from there if it must. Paced by
    /// the download cap; the peer's measured rate is updated.
    pub async fn piece(&self, peer: PeerId, digest: Digest, index: u32, origin: Option<Origin>) -> Result<PieceAnswer, Error> {
        self.limits.receive(crate::store::PIECE_SIZE).await;
        let started = Instant::now();
        match self.request(peer, protocol::Request::Piece { digest, index, origin }).await? {
            protocol::Response::Piece(data) => {
                self.limits.counters.received(peer, data.len() as u64, started.elapsed());
                Ok(PieceAnswer::Data(data))
            }
            protocol::Response::NotHere => Ok(PieceAnswer::NotHere),
            protocol::Response::NotYet => Ok(PieceAnswer::NotYet),
            r => Err(Self::unexpected(peer, "piece", &r)),
        }
    }

    /// The peers connected now.
    pub async fn site_peers(&self) -> Result<Vec<SitePeer>, Error> {
        self.ask(|reply| Command::Peers { reply }).await
    }

    /// Sends a prewarm order request to `peer` and waits for its answer.
    pub async fn order_request(&self, peer: PeerId, request: orders::OrderRequest) -> Result<orders::OrderResponse, Error> {
        self.ask(|reply| Command::OrderRequest { peer, request, reply }).await?
    }

    /// The connected peer that calls itself `name`.
    pub async fn peer_named(&self, name: &str) -> Result<Option<PeerId>, Error> {
        Ok(self.site_peers().await?.into_iter().find(|p| p.name.as_deref() == Some(name)).map(|p| p.id))
    }

    /// The peers connected now, with what was exchanged with each.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, Error> {
        let peers = self.site_peers().await?;
        Ok(peers
            .into_iter()
            .map(|p| PeerInfo {
                peer_id: p.id.to_string(),
                region: p.region,
                zone: p.zone,
                node: p.name,
                traffic: self.limits.counters.of(&p.id),
            })
            .collect())
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
pub fn spawn(config: SwarmConfig, key: Keypair, store: Store) -> Result<Swarm, Error> {
    let local = key.public().to_peer_id();
    let (tx, rx) = mpsc::channel(256);
    let (orders_tx, orders) = mpsc::channel(256);
    let (prewarm_tx, prewarm) = mpsc::channel(64);
    let counters = Arc::new(limits::Counters::default());
    let limits = Arc::new(limits::Limits::new(config.upload_rate, config.download_rate, config.upload_per_peer, counters));
    let (region, zone) = (config.region.clone(), config.zone.clone());
    let event_loop = event_loop::EventLoop::new(
        config,
        key,
        store,
        limits.clone(),
        rx,
        tx.downgrade(),
        event_loop::ToNode { orders: orders_tx, inbound_orders: prewarm_tx },
    )?;
    tokio::spawn(event_loop.run());
    Ok(Swarm { client: Client { tx, local, region, zone, limits }, orders, prewarm })
}

#[cfg(test)]
mod tests;

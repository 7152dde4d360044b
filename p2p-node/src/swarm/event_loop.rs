//! The task that owns the `Swarm`: runs commands from [`super::Client`]s and swarm events.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use either::Either;
use futures::StreamExt;
use libp2p::core::transport::Transport as _;
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::kad::{self, QueryId, QueryResult, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::pnet::PnetConfig;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{DialError, NetworkBehaviour, SwarmEvent};
use libp2p::{allow_block_list, identify, mdns, noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};
use tokio::sync::{mpsc, oneshot};

use super::limits::Limits;
use super::orders::{self, InboundOrder, OrderRequest, OrderResponse};
use super::protocol::{Codec, Request, Response, PROTOCOL};
use super::serve::serve;
use super::{Ban, Command, FetchOrder, SitePeer, SwarmConfig};
use crate::store::Store;
use crate::Error;

const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/ferry/kad/1.0.0");
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Provider records live this long and are re-announced well before they expire.
const PROVIDER_TTL: Duration = Duration::from_secs(3600);
const PROVIDER_REPUBLISH: Duration = Duration::from_secs(1200);

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    identify: identify::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    mdns: Toggle<mdns::tokio::Behaviour>,
    pieces: request_response::Behaviour<Codec>,
    orders: request_response::Behaviour<orders::Codec>,
}

/// Where peers' requests go that the node itself answers.
pub(crate) struct ToNode {
    /// Pieces to fetch from the origin for a peer.
    pub orders: mpsc::Sender<FetchOrder>,
    /// Prewarm order requests.
    pub inbound_orders: mpsc::Sender<InboundOrder>,
}

pub(crate) struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    /// For serving tasks to hand responses back; weak, so the loop ends with the last Client.
    myself: mpsc::WeakSender<Command>,
    store: Store,
    limits: Arc<Limits>,
    orders: mpsc::Sender<FetchOrder>,
    inbound_orders: mpsc::Sender<InboundOrder>,
    corrupt_served_pieces: bool,
    bans: HashMap<PeerId, (Instant, String)>,
    bootstrapped: bool,
    providers: HashMap<QueryId, (HashSet<PeerId>, oneshot::Sender<Vec<PeerId>>)>,
    requests: HashMap<OutboundRequestId, oneshot::Sender<Result<Response, Error>>>,
    order_requests: HashMap<OutboundRequestId, oneshot::Sender<Result<OrderResponse, Error>>>,
    dials: HashMap<PeerId, Vec<oneshot::Sender<Result<(), Error>>>>,
    /// What peers say of themselves (identify's agent version).
    announced: HashMap<PeerId, Announced>,
}

/// A peer's region, zone and node name, as it announces them.
#[derive(Debug, Default, Clone)]
struct Announced {
    region: Option<String>,
    zone: Option<String>,
    name: Option<String>,
}

fn swarm_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Swarm(format!("{what}: {e}"))
}

fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| if let Protocol::P2p(id) = p { Some(id) } else { None })
}

impl EventLoop {
    pub(crate) fn new(
        config: SwarmConfig,
        key: Keypair,
        store: Store,
        limits: Arc<Limits>,
        commands: mpsc::Receiver<Command>,
        myself: mpsc::WeakSender<Command>,
        ToNode { orders, inbound_orders }: ToNode,
    ) -> Result<EventLoop, Error> {
        let psk = config.psk;
        let (region, zone) = (config.region.clone(), config.zone.clone());
        let node_name = config.node_name.clone();
        let mdns_on = config.mdns;
        let corrupt_served_pieces = config.test_fault_corrupt_served_pieces;
        if corrupt_served_pieces {
            tracing::error!("TEST-ONLY fault switch on: every piece served to peers is corrupted");
        }
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_other_transport(|key| {
                let noise = noise::Config::new(key)?;
                let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
                // The cluster key wraps the raw TCP stream, before anything else is said.
                let base = match psk {
                    Some(psk) => Either::Left(tcp.and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))),
                    None => Either::Right(tcp),
                };
                Ok(base.upgrade(Version::V1Lazy).authenticate(noise).multiplex(yamux::Config::default()).timeout(Duration::from_secs(20)))
            })
            .map_err(|e| swarm_error("building the transport", e))?
            .with_behaviour(|key| {
                let local = key.public().to_peer_id();
                let identify = identify::Behaviour::new(
                    identify::Config::new("/ferry/id/1.0.0".into(), key.public())
                        .with_agent_version(format!("ferry/{} region={region} zone={zone} node={node_name}", env!("CARGO_PKG_VERSION"))),
                );
                let mut kad_config = kad::Config::new(KAD_PROTOCOL);
                kad_config.set_provider_record_ttl(Some(PROVIDER_TTL)).set_provider_publication_interval(Some(PROVIDER_REPUBLISH));
                let mut kad = kad::Behaviour::with_config(local, kad::store::MemoryStore::new(local), kad_config);
                kad.set_mode(Some(kad::Mode::Server));
                let mdns = if mdns_on { Some(mdns::tokio::Behaviour::new(mdns::Config::default(), local)?) } else { None };
                let pieces = request_response::Behaviour::with_codec(
                    Codec,
                    [(PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default().with_request_timeout(REQUEST_TIMEOUT),
                );
                let orders = request_response::Behaviour::with_codec(
                    orders::codec(),
                    [(orders::PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default().with_request_timeout(REQUEST_TIMEOUT),
                );
                Ok(Behaviour { blocked: Default::default(), identify, kad, mdns: Toggle::from(mdns), pieces, orders })
            })
            .map_err(|e| swarm_error("building the behaviour", e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
            .build();
        for addr in &config.listen {
            swarm.listen_on(addr.clone()).map_err(|e| swarm_error(&format!("listening on {addr}"), e))?;
        }
        for addr in &config.bootstrap {
            let peer = peer_of(addr).ok_or_else(|| Error::Swarm(format!("bootstrap address {addr} must end in /p2p/<peer id>")))?;
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            if let Err(e) = swarm.dial(addr.clone()) {
                tracing::warn!(%addr, error = %e, "cannot dial a bootstrap peer");
            }
        }
        Ok(EventLoop {
            swarm,
            commands,
            myself,
            store,
            limits,
            orders,
            inbound_orders,
            corrupt_served_pieces,
            bans: HashMap::new(),
            bootstrapped: false,
            providers: HashMap::new(),
            requests: HashMap::new(),
            order_requests: HashMap::new(),
            dials: HashMap::new(),
            announced: HashMap::new(),
        })
    }

    pub(crate) async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_event(event),
                _ = tick.tick() => self.end_bans(),
                command = self.commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => return,
                },
            }
        }
    }

    fn end_bans(&mut self) {
        let now = Instant::now();
        let ended: Vec<PeerId> = self.bans.iter().filter(|(_, (until, _))| *until <= now).map(|(p, _)| *p).collect();
        for peer in ended {
            self.bans.remove(&peer);
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
            tracing::info!(%peer, "a ban ended");
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::Dial { addr, reply } => {
                let Some(peer) = peer_of(&addr) else {
                    let _ = reply.send(Err(Error::Swarm(format!("{addr} does not end in /p2p/<peer id>"))));
                    return;
                };
                if self.swarm.is_connected(&peer) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                match self.swarm.dial(addr) {
                    Ok(()) => self.dials.entry(peer).or_default().push(reply),
                    Err(e) => {
                        let _ = reply.send(Err(Error::Peer { peer: peer.to_string(), why: e.to_string() }));
                    }
                }
            }
            Command::Provide { digest } => {
                if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(RecordKey::new(digest.as_bytes())) {
                    tracing::warn!(%digest, error = %e, "cannot announce a blob");
                }
            }
            Command::Providers { digest, reply } => {
                let id = self.swarm.behaviour_mut().kad.get_providers(RecordKey::new(digest.as_bytes()));
                self.providers.insert(id, (HashSet::new(), reply));
            }
            Command::Request { peer, request, reply } => {
                let id = self.swarm.behaviour_mut().pieces.send_request(&peer, request);
                self.requests.insert(id, reply);
            }
            Command::Respond { channel, response } => {
                if self.swarm.behaviour_mut().pieces.send_response(channel, response).is_err() {
                    tracing::debug!("a peer left before its piece response");
                }
            }
            Command::OrderRequest { peer, request, reply } => {
                let id = self.swarm.behaviour_mut().orders.send_request(&peer, request);
                self.order_requests.insert(id, reply);
            }
            Command::OrderRespond { channel, response } => {
                if self.swarm.behaviour_mut().orders.send_response(channel, response).is_err() {
                    tracing::debug!("a peer left before its order response");
                }
            }
            Command::Peers { reply } => {
                let peers = self
                    .swarm
                    .connected_peers()
                    .filter(|p| !self.bans.contains_key(p))
                    .map(|p| {
                        let Announced { region, zone, name } = self.announced.get(p).cloned().unwrap_or_default();
                        SitePeer { id: *p, region, zone, name }
                    })
                    .collect();
                let _ = reply.send(peers);
            }
            Command::Ban { peer, until, why } => {
                tracing::warn!(%peer, %why, "banning a peer");
                self.swarm.behaviour_mut().blocked.block_peer(peer);
                self.bans.insert(peer, (until, why));
            }
            Command::Bans { reply } => {
                let now = Instant::now();
                let bans = self
                    .bans
                    .iter()
                    .map(|(p, (until, why))| Ban {
                        peer_id: p.to_string(),
                        why: why.clone(),
                        seconds_left: until.saturating_duration_since(now).as_secs(),
                    })
                    .collect();
                let _ = reply.send(bans);
            }
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                for reply in self.dials.remove(&peer_id).unwrap_or_default() {
                    let _ = reply.send(Ok(()));
                }
                if !self.bootstrapped {
                    // Learn the rest of the site from the first peer: a lookup of our own id.
                    self.bootstrapped = self.swarm.behaviour_mut().kad.bootstrap().is_ok();
                }
            }
            // A site is small: every node keeps a connection to every other one, so all agree on
            // the members that own pieces (see `site`).
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, is_new_peer: true, .. }))
                if !self.swarm.is_connected(&peer) && !self.bans.contains_key(&peer) =>
            {
                let _ = self.swarm.dial(peer);
            }
            SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. } => {
                let why = match &error {
                    DialError::Transport(errs) => errs.iter().map(|(a, e)| format!("{a}: {e}")).collect::<Vec<_>>().join("; "),
                    e => e.to_string(),
                };
                tracing::debug!(%peer, %why, "dial failed");
                for reply in self.dials.remove(&peer).unwrap_or_default() {
                    let _ = reply.send(Err(Error::Peer { peer: peer.to_string(), why: why.clone() }));
                }
            }
            SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                tracing::debug!(%send_back_addr, %error, "refused an incoming connection (wrong cluster key?)");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
                let word = |key: &str| {
                    info.agent_version.split_whitespace().find_map(|w| w.strip_prefix(key)).filter(|v| !v.is_empty()).map(str::to_string)
                };
                self.announced.insert(peer_id, Announced { region: word("region="), zone: word("zone="), name: word("node=") });
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(addr.with(Protocol::P2p(peer)));
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: QueryResult::GetProviders(result),
                step,
                ..
            })) => {
                if let (Some((found, _)), Ok(kad::GetProvidersOk::FoundProviders { providers, .. })) = (self.providers.get_mut(&id), result)
                {
                    found.extend(providers);
                }
                if step.last {
                    if let Some((found, reply)) = self.providers.remove(&id) {
                        let _ = reply.send(found.into_iter().collect());
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Pieces(event)) => self.on_pieces(event),
            SwarmEvent::Behaviour(BehaviourEvent::Orders(event)) => self.on_orders(event),
            _ => {}
        }
    }

    fn on_pieces(&mut self, event: request_response::Event<Request, Response>) {
        match event {
            request_response::Event::Message { peer, message: request_response::Message::Request { request, channel, .. }, .. } => {
                let store = self.store.clone();
                let myself = self.myself.clone();
                let limits = self.limits.clone();
                let orders = self.orders.clone();
                let corrupt = self.corrupt_served_pieces;
                tokio::spawn(async move {
                    let mut response = serve(&store, &limits, &orders, peer, request).await;
                    if let (true, Response::Piece(data)) = (corrupt, &mut response) {
                        data[0] ^= 0xff;
                    }
                    if let Some(tx) = myself.upgrade() {
                        let _ = tx.send(Command::Respond { channel, response }).await;
                    }
                });
            }
            request_response::Event::Message { peer, message: request_response::Message::Response { request_id, response }, .. } => {
                if let Some(reply) = self.requests.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                } else {
                    tracing::debug!(%peer, "a response nobody waits for");
                }
            }
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                if let Some(reply) = self.requests.remove(&request_id) {
                    let _ = reply.send(Err(Error::Peer { peer: peer.to_string(), why: error.to_string() }));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "a piece request from a peer failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// Hands peers' order requests to the node (which verifies them) and its answers back; when
    /// the node is busy or not listening, refuses at once.
    fn on_orders(&mut self, event: request_response::Event<OrderRequest, OrderResponse>) {
        match event {
            request_response::Event::Message { peer, message: request_response::Message::Request { request, channel, .. }, .. } => {
                let (reply, answer) = oneshot::channel();
                let busy = self.inbound_orders.try_send(InboundOrder { peer, request, reply }).is_err();
                let myself = self.myself.clone();
                tokio::spawn(async move {
                    let response = match (busy, answer.await) {
                        (false, Ok(r)) => r,
                        _ => OrderResponse::Refused("the node is not taking prewarm orders now".into()),
                    };
                    if let Some(tx) = myself.upgrade() {
                        let _ = tx.send(Command::OrderRespond { channel, response }).await;
                    }
                });
            }
            request_response::Event::Message { message: request_response::Message::Response { request_id, response }, .. } => {
                if let Some(reply) = self.order_requests.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                if let Some(reply) = self.order_requests.remove(&request_id) {
                    let _ = reply.send(Err(Error::Peer { peer: peer.to_string(), why: error.to_string() }));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::info!(%peer, %error, "a prewarm order request from a peer failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }
}

//! Prewarm orders on a node: the ones it carries out, and the ones it hands on.
//!
//! `ferry prewarm apply` gives the node it runs on (through the admin socket) the signed orders
//! of a plan; that node delivers each to the node it names — itself, or a peer found by its node
//! name over `/ferry/prewarm/1` — and later asks those nodes how their orders are going. A node
//! receiving an order checks it ([`SignedOrder::verify`]: a trusted operator key, its own name,
//! in time), refuses an id it has seen before, and then fetches the image through the [`Warm`]
//! it was given (the snapshotter's: startup chunks first, then whole layers, through this node's
//! own mirror, so from peers where they have it), one order at a time, at a capped rate.
//!
//! Invariants: nothing is fetched for an order that failed verification or was seen before;
//! seen ids are on disk before an order is accepted, so a restarted node refuses replays too; the
//! book of orders is bounded. An accepted order is kept on disk (as it was signed) until it is
//! done or has failed, so one cut short by a restart or `kill -9` is taken up again
//! when the node starts — if it still verifies then (a trusted key, this node, not expired).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use p2p_node::prewarm::order::{OperatorKey, Order, OrderProgress, OrderState, Refusal, SignedOrder};
use p2p_node::prewarm::warm::{Warm, WarmProgress};
use p2p_node::store::Store;
use p2p_node::swarm::orders::{InboundOrder, OrderRequest, OrderResponse};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::fetcher::lock;
use crate::manifests::now as unix_now;
use crate::metrics::Metrics;

/// Orders remembered for `status`, finished ones dropped oldest first beyond this.
const BOOK_LIMIT: usize = 1000;
/// The store's metadata file of the seen ids (fsynced before an order is accepted).
const SEEN: &str = "prewarm/seen.json";
/// The store's metadata folder of accepted orders not yet ended, one file each, as signed.
const ACTIVE: &str = "prewarm/active";

/// How this node takes prewarm orders.
#[derive(Clone)]
pub struct PrewarmSettings {
    /// The name orders use for this node (its Kubernetes node name).
    pub node_name: String,
    /// Orders signed by these keys are carried out; with none, every order is refused.
    pub operator_keys: Vec<OperatorKey>,
    /// Bytes per second an order may use at most (an order may ask for less).
    pub rate: Option<u64>,
    pub warm: Arc<dyn Warm>,
}

impl std::fmt::Debug for PrewarmSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrewarmSettings")
            .field("node_name", &self.node_name)
            .field("operator_keys", &self.operator_keys.len())
            .field("rate", &self.rate)
            .finish()
    }
}

/// What became of handing one order to its node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: String,
    pub node: String,
    /// The node got the order and answered (`accepted` says how).
    pub reached: bool,
    pub accepted: bool,
    /// Why it was refused or could not be delivered.
    #[serde(default)]
    pub why: Option<String>,
}

/// Which of its orders to ask a node about (no ids: all of them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProgressQuery {
    pub node: String,
    #[serde(default)]
    pub ids: Vec<String>,
}

/// What a node said of its orders, or why it could not be asked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub node: String,
    pub orders: Vec<OrderProgress>,
    #[serde(default)]
    pub error: Option<String>,
}

struct Entry {
    order: Order,
    state: OrderState,
    progress: Arc<WarmProgress>,
    received: Instant,
    seconds: Option<f64>,
}

/// The node's prewarm orders.
pub struct Orders {
    settings: PrewarmSettings,
    swarm: Option<p2p_node::swarm::Client>,
    metrics: Arc<Metrics>,
    /// Where the seen ids and the accepted orders are kept ([`SEEN`], [`ACTIVE`]).
    store: Store,
    /// Order id → when it expires; kept (on disk too) until then.
    seen: Mutex<BTreeMap<String, u64>>,
    book: Mutex<BTreeMap<String, Entry>>,
    one_at_a_time: Arc<Semaphore>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl Orders {
    /// The orders of a node whose state the store keeps (metadata files [`SEEN`] and [`ACTIVE`]).
    pub fn new(
        settings: PrewarmSettings,
        store: Store,
        swarm: Option<p2p_node::swarm::Client>,
        metrics: Arc<Metrics>,
        tasks: TaskTracker,
        cancel: CancellationToken,
    ) -> Orders {
        let seen = match store.read_meta(SEEN) {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = SEEN, error = %e, "unreadable list of seen prewarm orders; starting a new one");
                BTreeMap::new()
            }),
            _ => BTreeMap::new(),
        };
        Orders {
            settings,
            swarm,
            metrics,
            store,
            seen: Mutex::new(seen),
            book: Mutex::new(BTreeMap::new()),
            one_at_a_time: Arc::new(Semaphore::new(1)),
            tasks,
            cancel,
        }
    }

    pub fn node_name(&self) -> &str {
        &self.settings.node_name
    }

    /// Takes up the orders a stopped or killed node had accepted and not ended; drops the ones
    /// that no longer verify (expired, or their key is no longer trusted).
    pub fn resume(self: &Arc<Self>) {
        let files = self.store.list_meta(ACTIVE).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot list the unfinished prewarm orders");
            Vec::new()
        });
        for file in files {
            let signed = match self.store.read_meta(&file) {
                Ok(Some(bytes)) => serde_json::from_slice::<SignedOrder>(&bytes).map_err(|e| e.to_string()),
                Ok(None) => continue,
                Err(e) => Err(e.to_string()),
            };
            let checked = signed
                .and_then(|s| s.verify(&self.settings.operator_keys, &self.settings.node_name, unix_now()).map_err(|e| e.to_string()));
            match checked {
                Ok(order) => {
                    tracing::info!(id = %order.id, image = %order.image, "taking up a prewarm order the node had not finished");
                    self.metrics.prewarm_order("resumed");
                    self.start(order);
                }
                Err(why) => {
                    tracing::warn!(%file, %why, "dropping an unfinished prewarm order");
                    let _ = self.store.remove_meta(&file);
                }
            }
        }
    }

    /// Where an accepted order waits for its end (named by a hash: ids are the operator's text).
    fn active_file(id: &str) -> String {
        format!("{ACTIVE}/{}.json", p2p_node::Digest::of(id.as_bytes()).hex())
    }

    /// Checks an order for this node and, if it holds, starts carrying it out.
    pub fn accept(self: &Arc<Self>, signed: &SignedOrder, from: &str) -> Result<(), Refusal> {
        let result = self.check(signed);
        match &result {
            Ok(order) => {
                tracing::info!(id = %order.id, image = %order.image, wave = order.wave, %from, "accepted a prewarm order");
                self.metrics.prewarm_order("accepted");
                // Three strings: serializing cannot fail.
                if let Err(e) = self.store.write_meta(&Self::active_file(&order.id), &serde_json::to_vec(signed).unwrap_or_default()) {
                    tracing::warn!(id = %order.id, error = %e, "cannot keep the order on disk: a restart before it ends drops it");
                }
                self.start(order.clone());
            }
            Err(why) => {
                tracing::warn!(%from, %why, "refused a prewarm order");
                self.metrics.prewarm_order("refused");
            }
        }
        result.map(drop)
    }

    fn check(&self, signed: &SignedOrder) -> Result<Order, Refusal> {
        let now = unix_now();
        let order = signed.verify(&self.settings.operator_keys, &self.settings.node_name, now)?;
        let mut seen = lock(&self.seen);
        seen.retain(|_, expires| *expires > now);
        if seen.contains_key(&order.id) {
            return Err(Refusal::Replay(order.id));
        }
        seen.insert(order.id.clone(), order.expires_at);
        // Ids to numbers: serializing cannot fail.
        if let Err(e) = self.store.write_meta(SEEN, &serde_json::to_vec(&*seen).unwrap_or_default()) {
            seen.remove(&order.id);
            return Err(Refusal::Unavailable(format!("cannot record the order as seen: {e}")));
        }
        Ok(order)
    }

    fn start(self: &Arc<Self>, order: Order) {
        let progress = Arc::new(WarmProgress::default());
        {
            let mut book = lock(&self.book);
            book.insert(
                order.id.clone(),
                Entry {
                    order: order.clone(),
                    state: OrderState::Queued,
                    progress: progress.clone(),
                    received: Instant::now(),
                    seconds: None,
                },
            );
            if book.len() > BOOK_LIMIT {
                let oldest = book.iter().filter(|(_, e)| e.state.is_final()).min_by_key(|(_, e)| e.received).map(|(id, _)| id.clone());
                if let Some(id) = oldest {
                    book.remove(&id);
                }
            }
        }
        let this = self.clone();
        self.tasks.spawn(async move {
            let Ok(_turn) = this.one_at_a_time.clone().acquire_owned().await else { return };
            this.set_state(&order.id, OrderState::Priority, None);
            let rate = match (order.rate, this.settings.rate) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let started = Instant::now();
            let result = tokio::select! {
                r = this.settings.warm.warm(&order.image, rate, &progress) => r,
                _ = this.cancel.cancelled() => Err("the node is shutting down".to_string()),
            };
            let secs = started.elapsed().as_secs_f64();
            // Ended, unless the node is stopping: then the next start takes it up again.
            if !this.cancel.is_cancelled() {
                let _ = this.store.remove_meta(&Self::active_file(&order.id));
            }
            match result {
                Ok(()) => {
                    tracing::info!(id = %order.id, image = %order.image, bytes = progress.done_bytes.load(Relaxed), secs, "prewarm order done");
                    this.metrics.prewarm_order("done");
                    this.set_state(&order.id, OrderState::Done, Some(secs));
                }
                Err(why) => {
                    tracing::warn!(id = %order.id, image = %order.image, %why, "prewarm order failed");
                    this.metrics.prewarm_order("failed");
                    this.set_state(&order.id, OrderState::Failed(why), Some(secs));
                }
            }
        });
    }

    /// Sets an order's state, and its duration once it has ended.
    fn set_state(&self, id: &str, state: OrderState, seconds: Option<f64>) {
        if let Some(e) = lock(&self.book).get_mut(id) {
            e.state = state;
            e.seconds = seconds.or(e.seconds);
        }
    }

    /// This node's orders with these ids (none: all), oldest first.
    pub fn progress(&self, ids: &[String]) -> Vec<OrderProgress> {
        let book = lock(&self.book);
        let mut out: Vec<(Instant, OrderProgress)> = book
            .values()
            .filter(|e| ids.is_empty() || ids.contains(&e.order.id))
            .map(|e| {
                let p = &e.progress;
                let state = match &e.state {
                    OrderState::Priority if p.layers.load(Relaxed) => OrderState::Layers,
                    s => s.clone(),
                };
                let progress = OrderProgress {
                    id: e.order.id.clone(),
                    node: e.order.node.clone(),
                    image: e.order.image.clone(),
                    wave: e.order.wave,
                    state,
                    total_bytes: p.total_bytes.load(Relaxed),
                    done_bytes: p.done_bytes.load(Relaxed),
                    priority_bytes: p.priority_bytes.load(Relaxed),
                    seconds: e.seconds.unwrap_or_else(|| e.received.elapsed().as_secs_f64()),
                };
                (e.received, progress)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.id.cmp(&b.1.id)));
        out.into_iter().map(|(_, p)| p).collect()
    }

    async fn ask(&self, node: &str, request: OrderRequest) -> Result<OrderResponse, String> {
        let swarm = self.swarm.as_ref().ok_or_else(|| format!("node {node:?} is not this node, and P2P is off here"))?;
        let peer = swarm
            .peer_named(node)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("node {node:?} is not connected to this node's swarm"))?;
        swarm.order_request(peer, request).await.map_err(|e| e.to_string())
    }

    /// Hands `signed` to the node it names (this one or a peer) and says what it answered.
    pub async fn deliver(self: &Arc<Self>, signed: SignedOrder) -> Delivery {
        let order = match signed.peek() {
            Ok(o) => o,
            Err(why) => {
                return Delivery { id: String::new(), node: String::new(), reached: false, accepted: false, why: Some(why.to_string()) }
            }
        };
        let (id, node) = (order.id, order.node);
        let (reached, answer) = if node == self.settings.node_name {
            (true, self.accept(&signed, "the admin socket").map_err(|e| e.to_string()))
        } else {
            match self.ask(&node, OrderRequest::Deliver(signed)).await {
                Ok(OrderResponse::Accepted) => (true, Ok(())),
                Ok(OrderResponse::Refused(why)) => (true, Err(why)),
                Ok(other) => (true, Err(format!("answered {other:?}"))),
                Err(why) => (false, Err(why)),
            }
        };
        Delivery { id, node, reached, accepted: answer.is_ok(), why: answer.err() }
    }

    /// What `query.node` says of its orders.
    pub async fn report(&self, query: ProgressQuery) -> Report {
        let ProgressQuery { node, ids } = query;
        if node == self.settings.node_name {
            return Report { orders: self.progress(&ids), node, error: None };
        }
        match self.ask(&node, OrderRequest::Progress { ids }).await {
            Ok(OrderResponse::Progress(orders)) => Report { node, orders, error: None },
            Ok(other) => Report { node, orders: Vec::new(), error: Some(format!("answered {other:?}")) },
            Err(why) => Report { node, orders: Vec::new(), error: Some(why) },
        }
    }

    /// Every order of this node and of each named peer.
    pub async fn site(&self) -> Vec<Report> {
        let mut nodes = vec![self.settings.node_name.clone()];
        if let Some(swarm) = &self.swarm {
            let mut peers: Vec<String> = swarm.site_peers().await.unwrap_or_default().into_iter().filter_map(|p| p.name).collect();
            peers.sort();
            nodes.extend(peers);
        }
        let queries = nodes.into_iter().map(|node| self.report(ProgressQuery { node, ids: Vec::new() }));
        futures_util::future::join_all(queries).await
    }

    /// Answers peers' order requests until `cancel`.
    pub async fn serve_peers(self: Arc<Self>, mut inbound: mpsc::Receiver<InboundOrder>, cancel: CancellationToken) {
        loop {
            let InboundOrder { peer, request, reply } = tokio::select! {
                r = inbound.recv() => match r { Some(r) => r, None => return },
                _ = cancel.cancelled() => return,
            };
            let response = match request {
                OrderRequest::Deliver(signed) => match self.accept(&signed, &peer.to_string()) {
                    Ok(()) => OrderResponse::Accepted,
                    Err(why) => OrderResponse::Refused(why.to_string()),
                },
                OrderRequest::Progress { ids } => OrderResponse::Progress(self.progress(&ids)),
            };
            let _ = reply.send(response);
        }
    }
}

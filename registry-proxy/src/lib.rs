//! # registry-proxy: the node's door to registries
//!
//! - the OCI Distribution pull API as a containerd mirror ([`mirror`]), requests parsed once into
//!   a [`route::Route`] and validated before anything goes upstream;
//! - the allow-listed [`upstream`] registries and their authentication;
//! - the [`fetcher::Fetcher`]: local store first, then the site's peers ([`site`]), then the
//!   origin, one fetch per piece per site, streamed;
//! - [`manifests`]: verified manifest cache with tag revalidation and stale-if-error;
//! - the admin API (`ferry status`, `ferry prewarm`) and Prometheus metrics ([`admin`],
//!   [`metrics`]);
//! - [`prewarm`]: prewarm orders, checked, carried out here or handed to the node they name.
//!
//! Data flow: containerd → [`mirror::Mirror`] → ([`manifests::Manifests`] | [`fetcher::Fetcher`])
//! → `p2p_node::store::Store` ↔ [`upstream::Upstream`].
//!
//! Invariants: only allow-listed upstreams are contacted; nothing is cached unverified (blobs by
//! whole-blob sha256 in the store, manifests by their digest); every upstream wait has a timeout;
//! memory per request is bounded whatever the blob size.

pub mod admin;
mod buffers;
mod error;
mod failures;
pub mod fetcher;
mod fill;
mod layer_index;
pub mod manifests;
pub mod metrics;
pub mod mirror;
pub mod names;
pub mod prewarm;
pub mod route;
pub mod serve;
pub mod settings;
pub mod site;
pub mod upstream;

use std::sync::Arc;

pub use error::Error;
use p2p_node::store::Store;
pub use settings::{MirrorSettings, UpstreamSettings};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The sockets the node serves on; bound by the caller, so tests can bind port 0.
pub struct Listeners {
    pub registry: tokio::net::TcpListener,
    pub metrics: Option<tokio::net::TcpListener>,
    pub admin: Option<tokio::net::UnixListener>,
}

/// Runs the mirror, metrics and admin endpoints until `cancel`; then waits for in-flight fetches
/// to stop and persists partial blobs' progress.
/// `swarm`, when P2P is on, is where blob pieces come from first, told about the blobs this node
/// caches, and shown in status; its fetch orders (pieces this node owns for the site) are carried
/// out here.
pub async fn run(
    settings: MirrorSettings,
    store: Store,
    listeners: Listeners,
    swarm: Option<p2p_node::swarm::Swarm>,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let (swarm, orders, prewarm_inbound) = match swarm {
        Some(s) => (Some(s.client), Some(s.orders), Some(s.prewarm)),
        None => (None, None, None),
    };
    let metrics = Arc::new(metrics::Metrics::new(settings.lazy_layers.clone()));
    let upstreams = upstream::Upstreams::new(&settings)?;
    let tasks = TaskTracker::new();
    let fetcher = Arc::new(fetcher::Fetcher::new(
        store.clone(),
        metrics.clone(),
        settings.piece_timeout,
        tasks.clone(),
        cancel.clone(),
        swarm.clone(),
    ));
    let manifests = manifests::Manifests::new(store.clone(), metrics.clone(), settings.manifest_timeout, settings.stale_if_error);
    let prewarm_orders = settings
        .prewarm
        .clone()
        .map(|p| Arc::new(prewarm::Orders::new(p, store.clone(), swarm.clone(), metrics.clone(), tasks.clone(), cancel.clone())));
    if let Some(o) = &prewarm_orders {
        o.resume();
    }
    if let (Some(o), Some(inbound)) = (&prewarm_orders, prewarm_inbound) {
        tasks.spawn(o.clone().serve_peers(inbound, cancel.clone()));
    }
    let admin = Arc::new(admin::AdminState {
        store: store.clone(),
        metrics: metrics.clone(),
        registry_listen: listeners.registry.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        upstreams: {
            let mut h: Vec<String> = upstreams.hosts().map(str::to_string).collect();
            h.sort();
            h
        },
        swarm,
        lazy: settings.lazy_layers.clone(),
        prewarm: prewarm_orders,
    });
    let mirror = Arc::new(mirror::Mirror {
        upstreams,
        fetcher,
        manifests,
        metrics,
        layer_index: settings.lazy_layers.is_some().then(Default::default),
    });
    if let Some(orders) = orders {
        tasks.spawn(mirror.clone().carry_out(orders, cancel.clone()));
    }

    let servers = TaskTracker::new();
    servers.spawn(serve::serve(listeners.registry, move |req| mirror.clone().handle(req), cancel.clone()));
    if let Some(l) = listeners.metrics {
        let a = admin.clone();
        servers.spawn(serve::serve(l, move |req| a.clone().handle_metrics(req), cancel.clone()));
    }
    if let Some(l) = listeners.admin {
        let a = admin.clone();
        servers.spawn(serve::serve(l, move |req| a.clone().handle_admin(req), cancel.clone()));
    }
    servers.close();
    servers.wait().await;
    // Fills stop at the cancel; streams end with their connections, which had their drain time.
    tasks.close();
    if tokio::time::timeout(std::time::Duration::from_secs(5), tasks.wait()).await.is_err() {
        tracing::warn!("some transfers did not stop in time; abandoning them");
    }
    tokio::task::spawn_blocking(move || store.flush()).await.map_err(fetcher::join_error)??;
    Ok(())
}

//! `ferry node`: opens the store, binds the sockets, runs the mirror until SIGTERM or SIGINT.

use anyhow::{Context, Result};
use p2p_node::store::Store;
use tokio_util::sync::CancellationToken;

use crate::cli::NodeArgs;
use crate::config;

pub async fn run(args: NodeArgs) -> Result<()> {
    let file = config::load(&args.flags)?;
    let mut s = file.node_settings()?;
    std::fs::create_dir_all(&s.store_path).with_context(|| format!("creating the store folder {}", s.store_path.display()))?;
    s.store.capacity = config::parse_capacity(&file.store.capacity, &s.store_path)?;
    let (path, store_config) = (s.store_path.clone(), s.store.clone());
    let store = tokio::task::spawn_blocking(move || Store::open(path, store_config))
        .await?
        .with_context(|| format!("opening the store at {}", s.store_path.display()))?;

    let registry = tokio::net::TcpListener::bind(s.registry_listen)
        .await
        .with_context(|| format!("binding the registry mirror to {}", s.registry_listen))?;
    let metrics = match s.metrics_listen {
        Some(a) => Some(tokio::net::TcpListener::bind(a).await.with_context(|| format!("binding the metrics endpoint to {a}"))?),
        None => None,
    };
    let admin = bind_admin(&s.admin_socket)?;
    tracing::info!(
        registry = %registry.local_addr()?,
        metrics = ?metrics.as_ref().and_then(|m| m.local_addr().ok()),
        admin = %s.admin_socket.display(),
        store = %s.store_path.display(),
        capacity = s.store.capacity,
        upstreams = ?s.mirror.upstreams.iter().map(|u| format!("{}={}", u.host, u.url)).collect::<Vec<_>>(),
        "ferry node listening"
    );

    let swarm = match &s.p2p {
        Some(p) => Some(start_swarm(p, &s.prewarm.node_name, &s.store_path, &store).await?),
        None => None,
    };
    let cancel = CancellationToken::new();
    tokio::spawn(shutdown_on_signal(cancel.clone()));
    let mirror_addr = registry.local_addr()?;
    tracing::info!(node_name = %s.prewarm.node_name, operator_keys = s.prewarm.operator_keys.len(), "taking prewarm orders");
    s.mirror.prewarm = Some(registry_proxy::prewarm::PrewarmSettings {
        node_name: s.prewarm.node_name.clone(),
        operator_keys: s.prewarm.operator_keys.clone(),
        rate: s.prewarm.rate,
        warm: std::sync::Arc::new(snapshotter::warm::Warmer { mirror: mirror_addr, store: store.clone() }),
    });
    let listeners = registry_proxy::Listeners { registry, metrics, admin: Some(admin) };
    // The mirror listens (connections wait in the backlog until it serves): point containerd at it.
    let hosts = match &s.containerd_hosts {
        Some(dir) => Some((dir.clone(), point_containerd(&file, dir)?)),
        None => None,
    };
    let snapshotter = match &s.snapshotter_socket {
        Some(socket) => {
            let source = snapshotter::service::remote::Source {
                store: store.clone(),
                mirror: mirror_addr,
                prefetch_rate: s.prefetch_rate,
                // The same counters the mirror reports (set whenever the snapshotter is on).
                stats: s.mirror.lazy_layers.clone().unwrap_or_default(),
            };
            let root = s.store_path.join("snapshotter");
            let bound = snapshotter::service::bind(&root, socket, Some(source)).context("starting the snapshotter")?;
            Some(tokio::spawn(bound.serve(cancel.clone())))
        }
        None => None,
    };
    let result = registry_proxy::run(s.mirror, store, listeners, swarm, cancel.clone()).await;
    cancel.cancel();
    if let Some((dir, registries)) = hosts {
        unpoint_containerd(&dir, &registries);
    }
    if let Some(task) = snapshotter {
        task.await?.context("running the snapshotter")?;
    }
    let _ = std::fs::remove_file(&s.admin_socket);
    result.context("running the node")?;
    tracing::info!("ferry node stopped");
    Ok(())
}

/// Writes the hosts.toml of every upstream into `dir`; returns the registries written.
fn point_containerd(file: &config::FileConfig, dir: &std::path::Path) -> Result<Vec<String>> {
    let mut registries = Vec::new();
    for (host, text) in crate::containerd_config::hosts_files(file)? {
        let (path, done) = crate::containerd_config::apply(dir, &host, &text).context("pointing containerd at the mirror")?;
        tracing::info!(path = %path.display(), "{done}");
        registries.push(host);
    }
    Ok(registries)
}

/// Takes the node's hosts.toml files out of `dir` again: containerd pulls from the registries
/// themselves while no node runs.
fn unpoint_containerd(dir: &std::path::Path, registries: &[String]) {
    match crate::containerd_config::restore(dir, Some(registries)) {
        Ok(done) => done.iter().for_each(|(path, what)| tracing::info!(path = %path.display(), "hosts.toml {what}")),
        Err(e) => tracing::error!("taking the hosts.toml files out of {}: {e:#}", dir.display()),
    }
}

/// Binds the admin socket, replacing a stale one left by a killed node, refusing a live one.
fn bind_admin(path: &std::path::Path) -> Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("another ferry node is running with admin socket {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing the stale admin socket {}", path.display()))?;
    }
    tokio::net::UnixListener::bind(path).with_context(|| format!("binding the admin socket {}", path.display()))
}

async fn shutdown_on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot listen for signals; stop the node with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    cancel.cancel();
}

/// Joins the site's swarm with the node's persistent identity (kept in the store folder).
async fn start_swarm(
    p: &config::P2pSettings,
    node_name: &str,
    store_path: &std::path::Path,
    store: &Store,
) -> Result<p2p_node::swarm::Swarm> {
    use p2p_node::swarm;
    let psk = swarm::load_psk(&p.psk_file)?;
    let key = swarm::load_or_create_identity(&store_path.join("p2p/identity.key"))?;
    let config = swarm::SwarmConfig {
        listen: p.listen.clone(),
        bootstrap: p.bootstrap.clone(),
        psk: Some(psk),
        mdns: p.mdns,
        region: p.region.clone(),
        zone: p.zone.clone(),
        node_name: node_name.to_string(),
        upload_rate: p.upload_rate,
        download_rate: p.download_rate,
        test_fault_corrupt_served_pieces: std::env::var("FERRY_TEST_FAULT_CORRUPT_SERVED_PIECES").as_deref() == Ok("1"),
        upload_per_peer: p.upload_per_peer,
    };
    let swarm = swarm::spawn(config, key, store.clone()).context("starting the P2P swarm")?;
    tracing::info!(peer_id = %swarm.client.peer_id(), listen = ?p.listen, bootstrap = p.bootstrap.len(), region = %p.region, zone = %p.zone, mdns = p.mdns, "joined the swarm");
    Ok(swarm)
}

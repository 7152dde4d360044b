//! `ferry status`: asks the local node over its admin socket and prints what it says.

use anyhow::{Context, Result};
use registry_proxy::admin::Status;

use crate::cli::StatusArgs;
use crate::config;

pub async fn run(args: StatusArgs) -> Result<()> {
    let file = config::load(&args.flags)?;
    let socket = file.admin.socket;
    let status = registry_proxy::admin::fetch_status(&socket)
        .await
        .with_context(|| format!("is `ferry node` running with admin socket {}?", socket.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}{}{}", render(&status), render_p2p(&status), render_lazy(&status));
    }
    Ok(())
}

/// `region` or `region/zone`; `?` for a region nobody said.
fn place(region: Option<&str>, zone: Option<&str>) -> String {
    match (region, zone.filter(|z| !z.is_empty())) {
        (Some(r), Some(z)) => format!("{r}/{z}"),
        (Some(r), None) => r.to_string(),
        (None, _) => "?".to_string(),
    }
}

fn render_p2p(s: &Status) -> String {
    let mut out = match &s.p2p {
        None => "p2p        off: every blob comes from the origin\n".to_string(),
        Some(p) => {
            let mut out = format!(
                "p2p        peer {} in region {} with {} peers; {} received from peers, {} served to them\n",
                p.peer_id,
                place(Some(&p.region), Some(&p.zone)),
                p.peers.len(),
                bytes(p.traffic.bytes_in),
                bytes(p.traffic.bytes_out)
            );
            if p.peers.is_empty() {
                out.push_str("  no peers connected: blobs come from the origin (check --bootstrap, mDNS, the cluster key)\n");
            }
            for peer in &p.peers {
                let t = &peer.traffic;
                out.push_str(&format!(
                    "  {} (node {}, region {}): {} in at {}/s, {} out, {} failures\n",
                    peer.peer_id,
                    peer.node.as_deref().unwrap_or("?"),
                    place(peer.region.as_deref(), peer.zone.as_deref()),
                    bytes(t.bytes_in),
                    bytes(t.rate as u64),
                    bytes(t.bytes_out),
                    t.failures
                ));
            }
            for ban in &p.bans {
                out.push_str(&format!("  banned {} for {} s more: {}\n", ban.peer_id, ban.seconds_left, ban.why));
            }
            let f = |k: &str| p.fallbacks.get(k).copied().unwrap_or(0);
            out.push_str(&format!(
                "  origin pieces: {} this node's share, {} no peer had in time, {} to repair bad peer bytes\n",
                f("owned"),
                f("no_peer"),
                f("repair")
            ));
            out
        }
    };
    for t in &s.transfers {
        let pct = if t.size == 0 { 100.0 } else { 100.0 * t.present_bytes as f64 / t.size as f64 };
        out.push_str(&format!(
            "fetching   {} {:.0}% of {} ({} from peers){}\n",
            t.digest,
            pct,
            bytes(t.size),
            bytes(t.from_peers_bytes),
            if t.repairing { ", repairing from the origin" } else { "" }
        ));
    }
    out
}

fn render_lazy(s: &Status) -> String {
    let Some(l) = &s.lazy else { return "lazy       off: no snapshotter socket\n".to_string() };
    let unpacked: Vec<String> = l.fallbacks.iter().filter(|(_, n)| **n > 0).map(|(why, n)| format!("{n} {why}")).collect();
    format!(
        "lazy       {} layers mounted; {} fetched on demand, {} prefetched; {} reads failed (EIO)\n         \x20 {} in their chunk caches (local disk, outside the store)\n         \x20 unpacked instead of mounted: {}\n",
        l.mounted,
        bytes(l.fetched_bytes),
        bytes(l.prefetched_bytes),
        l.read_errors,
        bytes(l.cache_bytes),
        if unpacked.is_empty() { "none".to_string() } else { unpacked.join(", ") }
    )
}

fn render(s: &Status) -> String {
    let t = &s.traffic;
    let st = &s.store.usage;
    let served = t.served_cache_bytes + t.served_peer_bytes + t.served_origin_bytes;
    let pct = |n: u64| if served == 0 { 0.0 } else { 100.0 * n as f64 / served as f64 };
    format!(
        "ferry {} — mirror on {} for {}\n\
         \n\
         store      {}\n\
         \x20 used      {} of {} ({} complete blobs, {} partial with {} present; {} evicted)\n\
         \n\
         served     {}\n\
         \x20 cache     {} ({:.1}%)\n\
         \x20 peers     {} ({:.1}%)\n\
         \x20 origin    {} ({:.1}%)\n\
         fetched    {} from upstreams\n\
         requests   blobs {} hits / {} misses, manifests {} hits / {} misses, {} stale tags served, {} failed fetches\n",
        s.version,
        s.registry_listen,
        s.upstreams.join(", "),
        s.store.path,
        bytes(st.used),
        bytes(st.capacity),
        st.complete_blobs,
        st.partial_blobs,
        bytes(st.partial_bytes_present),
        st.evicted_blobs,
        bytes(served),
        bytes(t.served_cache_bytes),
        pct(t.served_cache_bytes),
        bytes(t.served_peer_bytes),
        pct(t.served_peer_bytes),
        bytes(t.served_origin_bytes),
        pct(t.served_origin_bytes),
        bytes(t.origin_bytes),
        t.blob_hits,
        t.blob_misses,
        t.manifest_hits,
        t.manifest_misses,
        t.stale_served,
        t.fetch_failures,
    )
}

/// `1.5 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

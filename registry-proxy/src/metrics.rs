//! Prometheus metrics of the node (all named `ferry_*`), and a snapshot of them for status.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use p2p_node::layers::{Fallback, LazyStats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// `cache` (in the local store before the request), `peer` (fetched from a peer of the site)
    /// or `origin` (fetched upstream).
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `blob` or `manifest`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    pub kind: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `in` (received from peers) or `out` (served to peers).
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok`, `not_yet` (the peer is fetching it), `not_here` or `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `accepted`, `refused`, `done` or `failed`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

type HistogramFamily = Family<KindLabel, Histogram, fn() -> Histogram>;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub bytes_served: Family<SourceLabel, Counter>,
    pub origin_bytes: Counter,
    pub cache_hits: Family<KindLabel, Counter>,
    pub cache_misses: Family<KindLabel, Counter>,
    pub requests: Family<RequestLabel, Counter>,
    pub upstream_requests: Family<RequestLabel, Counter>,
    pub request_duration: HistogramFamily,
    pub fetch_duration: HistogramFamily,
    pub stale_served: Counter,
    pub fetch_failures: Counter,
    pub store_used: Gauge,
    pub store_capacity: Gauge,
    pub peer_bytes: Family<DirectionLabel, Counter>,
    pub peer_pieces: Family<ResultLabel, Counter>,
    pub peer_hedges: Counter,
    pub peer_bans: Counter,
    /// Pieces fetched from the origin although peers were there, by reason.
    pub peer_fallbacks: Family<ReasonLabel, Counter>,
    /// Prewarm orders this node received, by what became of them.
    pub prewarm_orders: Family<OutcomeLabel, Counter>,
    /// The swarm's totals at the last scrape, to add only what is new.
    peer_seen: std::sync::Mutex<p2p_node::swarm::Traffic>,
}

fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new(None)
    }
}

impl Metrics {
    /// The node's metrics; with `lazy`, the lazy-layer counters the snapshotter keeps as well.
    pub fn new(lazy: Option<Arc<LazyStats>>) -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            bytes_served: Family::default(),
            origin_bytes: Counter::default(),
            cache_hits: Family::default(),
            cache_misses: Family::default(),
            requests: Family::default(),
            upstream_requests: Family::default(),
            request_duration: Family::new_with_constructor(latency),
            fetch_duration: Family::new_with_constructor(latency),
            stale_served: Counter::default(),
            fetch_failures: Counter::default(),
            store_used: Gauge::default(),
            store_capacity: Gauge::default(),
            peer_bytes: Family::default(),
            peer_pieces: Family::default(),
            peer_hedges: Counter::default(),
            peer_bans: Counter::default(),
            peer_fallbacks: Family::default(),
            prewarm_orders: Family::default(),
            peer_seen: Default::default(),
            registry: Registry::default(),
        };
        registry.register("ferry_bytes_served", "Bytes sent to clients, by where they came from", m.bytes_served.clone());
        registry.register("ferry_origin_bytes", "Bytes received from upstream registries", m.origin_bytes.clone());
        registry.register("ferry_cache_hits", "Requests answered from the local store", m.cache_hits.clone());
        registry.register("ferry_cache_misses", "Requests that needed the upstream", m.cache_misses.clone());
        registry.register("ferry_requests", "Mirror requests by kind and status", m.requests.clone());
        registry.register("ferry_upstream_requests", "Requests sent upstream by kind and status", m.upstream_requests.clone());
        registry.register(
            "ferry_request_duration_seconds",
            "Time to answer a mirror request (until the response head)",
            m.request_duration.clone(),
        );
        registry.register(
            "ferry_fetch_duration_seconds",
            "Time of one upstream fetch of a run of pieces or a manifest",
            m.fetch_duration.clone(),
        );
        registry.register("ferry_stale_served", "Cached tags served because the upstream failed", m.stale_served.clone());
        registry.register("ferry_fetch_failures", "Upstream fetches that failed after retries", m.fetch_failures.clone());
        registry.register("ferry_store_used_bytes", "Bytes the content store holds or has reserved", m.store_used.clone());
        registry.register("ferry_store_capacity_bytes", "The content store's capacity", m.store_capacity.clone());
        registry.register("ferry_peer_bytes", "Bytes received from (in) and served to (out) peers", m.peer_bytes.clone());
        registry.register("ferry_peer_pieces", "Piece requests to peers, by answer", m.peer_pieces.clone());
        registry.register(
            "ferry_peer_hedges",
            "Piece requests repeated to a second peer because the first was slow",
            m.peer_hedges.clone(),
        );
        registry.register("ferry_peer_bans", "Peers banned for serving bytes that failed verification", m.peer_bans.clone());
        registry.register(
            "ferry_peer_fallbacks",
            "Pieces fetched from the origin while peers were connected: `owned` (this node's share), `no_peer` (no peer gave it in time), `repair` (peer bytes failed verification)",
            m.peer_fallbacks.clone(),
        );
        registry.register(
            "ferry_prewarm_orders",
            "Prewarm orders received: `accepted` or `refused` (bad signature, unknown key, other node, expired, replay), then `done` or `failed`",
            m.prewarm_orders.clone(),
        );
        // Known label sets exist from the start, at zero, so scrapers see them on a fresh node.
        for source in ["cache", "peer", "origin"] {
            let _ = m.bytes_served.get_or_create(&SourceLabel { source });
        }
        for outcome in ["accepted", "refused", "done", "failed"] {
            let _ = m.prewarm_orders.get_or_create(&OutcomeLabel { outcome });
        }
        for direction in ["in", "out"] {
            let _ = m.peer_bytes.get_or_create(&DirectionLabel { direction });
        }
        for kind in ["blob", "manifest"] {
            let _ = m.cache_hits.get_or_create(&KindLabel { kind });
            let _ = m.cache_misses.get_or_create(&KindLabel { kind });
        }
        if let Some(stats) = lazy {
            registry.register_collector(Box::new(LazyCollector(stats)));
        }
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn prewarm_order(&self, outcome: &'static str) {
        self.prewarm_orders.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    pub fn served(&self, source: &'static str, n: u64) {
        self.bytes_served.get_or_create(&SourceLabel { source }).inc_by(n);
    }

    pub fn peer_piece(&self, result: &'static str) {
        self.peer_pieces.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn fallback(&self, reason: &'static str, pieces: u64) {
        self.peer_fallbacks.get_or_create(&ReasonLabel { reason }).inc_by(pieces);
    }

    /// The fallback counters by reason.
    pub fn fallbacks(&self) -> std::collections::BTreeMap<String, u64> {
        ["owned", "no_peer", "repair"]
            .into_iter()
            .map(|reason| (reason.to_string(), self.peer_fallbacks.get_or_create(&ReasonLabel { reason }).get()))
            .collect()
    }

    pub fn hit(&self, kind: &'static str, hit: bool) {
        let family = if hit { &self.cache_hits } else { &self.cache_misses };
        family.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn upstream(&self, kind: &'static str, status: u16) {
        self.upstream_requests.get_or_create(&RequestLabel { kind, status }).inc();
    }

    /// Brings the peer byte counters up to the swarm's totals.
    pub fn sync_peers(&self, now: p2p_node::swarm::Traffic) {
        let mut seen = self.peer_seen.lock().unwrap_or_else(|p| p.into_inner());
        self.peer_bytes.get_or_create(&DirectionLabel { direction: "in" }).inc_by(now.bytes_in.saturating_sub(seen.bytes_in));
        self.peer_bytes.get_or_create(&DirectionLabel { direction: "out" }).inc_by(now.bytes_out.saturating_sub(seen.bytes_out));
        *seen = now;
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn snapshot(&self) -> Traffic {
        let served = |source| self.bytes_served.get_or_create(&SourceLabel { source }).get();
        let count = |f: &Family<KindLabel, Counter>, kind| f.get_or_create(&KindLabel { kind }).get();
        Traffic {
            served_cache_bytes: served("cache"),
            served_peer_bytes: served("peer"),
            served_origin_bytes: served("origin"),
            origin_bytes: self.origin_bytes.get(),
            blob_hits: count(&self.cache_hits, "blob"),
            blob_misses: count(&self.cache_misses, "blob"),
            manifest_hits: count(&self.cache_hits, "manifest"),
            manifest_misses: count(&self.cache_misses, "manifest"),
            stale_served: self.stale_served.get(),
            fetch_failures: self.fetch_failures.get(),
        }
    }
}

/// Traffic totals since the node started, for `ferry status`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Traffic {
    pub served_cache_bytes: u64,
    #[serde(default)]
    pub served_peer_bytes: u64,
    pub served_origin_bytes: u64,
    pub origin_bytes: u64,
    pub blob_hits: u64,
    pub blob_misses: u64,
    pub manifest_hits: u64,
    pub manifest_misses: u64,
    pub stale_served: u64,
    pub fetch_failures: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_node_exposes_its_counters_at_zero() {
        let text = Metrics::default().encode();
        for line in [
            "ferry_bytes_served_total{source=\"cache\"} 0",
            "ferry_bytes_served_total{source=\"peer\"} 0",
            "ferry_bytes_served_total{source=\"origin\"} 0",
            "ferry_cache_hits_total{kind=\"blob\"} 0",
            "ferry_cache_misses_total{kind=\"manifest\"} 0",
            "ferry_origin_bytes_total 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }
}

/// The snapshotter's lazy-layer counters, read at each scrape.
#[derive(Debug)]
struct LazyCollector(Arc<LazyStats>);

impl Collector for LazyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        for (name, help, value) in [
            ("ferry_lazy_layers_mounted", "Lazy layers mounted through FUSE now", load(&s.mounted)),
            (
                "ferry_lazy_cache_bytes",
                "Bytes the mounted lazy layers keep on local disk (verified chunks and whole files), outside the store's capacity",
                load(&s.cache_bytes),
            ),
        ] {
            let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        for (name, help, value) in [
            ("ferry_lazy_fetched_bytes", "Compressed bytes fetched for reads of lazy layers (on demand)", load(&s.bytes_fetched)),
            ("ferry_lazy_fetched_chunks", "Chunks fetched for reads of lazy layers (on demand)", load(&s.chunks_fetched)),
            ("ferry_lazy_prefetched_bytes", "Compressed bytes of lazy layers fetched in the background", load(&s.prefetched_bytes)),
            (
                "ferry_lazy_passthrough_opens",
                "Opens of lazy-layer files held whole on local disk, passed through to the kernel (FUSE passthrough)",
                load(&s.passthrough_opens),
            ),
            (
                "ferry_lazy_read_errors",
                "Reads of lazy layers answered with EIO (a chunk not fetched or verified in time)",
                load(&s.read_errors),
            ),
        ] {
            let c = ConstCounter::new(value);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let mut family = encoder.encode_descriptor(
            "ferry_lazy_fallbacks",
            "Layers containerd asked for as remote snapshots that were unpacked instead: `not_indexed` (the mirror did not serve the image's manifest), `not_lazy` (neither zstd:chunked nor eStargz), `bad_toc` (the TOC failed validation), `mount` (the FUSE mount failed)",
            None,
            MetricType::Counter,
        )?;
        for why in Fallback::ALL {
            ConstCounter::new(s.fallbacks(why)).encode(family.encode_family(&ReasonLabel { reason: why.as_str() })?)?;
        }
        Ok(())
    }
}

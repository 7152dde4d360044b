//! The configuration file, merged with flags and validated into each component's settings.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use p2p_node::store::StoreConfig;
use registry_proxy::{MirrorSettings, UpstreamSettings};
use serde::Deserialize;

use crate::cli::NodeFlags;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub store: StoreSection,
    pub registry: RegistrySection,
    pub metrics: MetricsSection,
    pub admin: AdminSection,
    pub p2p: P2pSection,
    pub snapshotter: SnapshotterSection,
    pub prewarm: PrewarmSection,
}

/// Prewarm orders: whose this node carries out, and how fast.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrewarmSection {
    /// The node's name in orders (its Kubernetes node name); the hostname when empty.
    pub node_name: String,
    /// Operators' public keys (`ed25519:<hex>`); with none, every order is refused.
    pub operator_keys: Vec<String>,
    /// The most an order may fetch per second ("50MiB"; "0": no cap), leaving the rest of the
    /// link to running workloads.
    pub rate: String,
}

impl Default for PrewarmSection {
    fn default() -> PrewarmSection {
        PrewarmSection { node_name: String::new(), operator_keys: Vec::new(), rate: "50MiB".into() }
    }
}

/// The prewarm settings, validated.
#[derive(Debug)]
pub struct PrewarmSettings {
    pub node_name: String,
    pub operator_keys: Vec<p2p_node::prewarm::order::OperatorKey>,
    pub rate: Option<u64>,
}

/// containerd's `proxy_plugins` snapshotter; off unless a socket is given.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotterSection {
    pub socket: Option<PathBuf>,
    /// Background fetch of lazily mounted layers, bytes per second ("50MiB", "0": no cap), or
    /// "off": only what containers read is fetched.
    pub prefetch_rate: String,
}

impl Default for SnapshotterSection {
    fn default() -> SnapshotterSection {
        SnapshotterSection { socket: None, prefetch_rate: "50MiB".into() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct P2pSection {
    /// Multiaddrs to listen on; P2P is off when empty.
    pub listen: Vec<String>,
    /// Peers to join at start (each ending in /p2p/<peer id>).
    pub bootstrap: Vec<String>,
    /// The cluster key; required when P2P is on.
    pub psk_file: Option<PathBuf>,
    pub region: String,
    /// The node's zone in its region (a rack, a switch); empty: none.
    pub zone: String,
    pub mdns: bool,
    /// Cap on what is served to peers, bytes per second with a unit ("50MiB"); "0": no cap.
    pub upload_rate: String,
    /// Cap on what is fetched from peers, likewise.
    pub download_rate: String,
    /// Pieces served to one peer at a time.
    pub upload_per_peer: usize,
}

impl Default for P2pSection {
    fn default() -> P2pSection {
        P2pSection {
            listen: Vec::new(),
            bootstrap: Vec::new(),
            psk_file: None,
            region: "default".into(),
            zone: String::new(),
            mdns: true,
            upload_rate: "0".into(),
            download_rate: "0".into(),
            upload_per_peer: 4,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    pub path: PathBuf,
    /// Bytes with a unit, or a share of the filesystem ("80%").
    pub capacity: String,
    pub high_watermark: f64,
    pub low_watermark: f64,
}

impl Default for StoreSection {
    fn default() -> StoreSection {
        StoreSection { path: "/var/lib/ferry".into(), capacity: "80%".into(), high_watermark: 0.9, low_watermark: 0.8 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySection {
    pub listen: SocketAddr,
    pub upstreams: Vec<UpstreamEntry>,
    pub default_upstream: Option<String>,
    pub ca_files: Vec<PathBuf>,
    pub docker_config: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub manifest_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub stale_if_error: Duration,
    #[serde(with = "humantime_serde")]
    pub piece_timeout: Duration,
    /// containerd's certs.d folder: while the node runs, its hosts.toml files there point
    /// containerd at the mirror for every upstream (see `ferry containerd-config`).
    pub containerd_hosts: Option<PathBuf>,
}

impl Default for RegistrySection {
    fn default() -> RegistrySection {
        let d = MirrorSettings::default();
        RegistrySection {
            listen: ([127, 0, 0, 1], 5050).into(),
            upstreams: Vec::new(),
            default_upstream: None,
            ca_files: Vec::new(),
            docker_config: None,
            connect_timeout: d.connect_timeout,
            read_timeout: d.read_timeout,
            manifest_timeout: d.manifest_timeout,
            stale_if_error: d.stale_if_error,
            piece_timeout: d.piece_timeout,
            containerd_hosts: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamEntry {
    /// The registry name containerd uses.
    pub host: String,
    /// Where to reach it; `https://<host>` when absent.
    pub url: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    pub enabled: bool,
    pub listen: SocketAddr,
}

impl Default for MetricsSection {
    fn default() -> MetricsSection {
        MetricsSection { enabled: true, listen: ([127, 0, 0, 1], 9464).into() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    pub socket: PathBuf,
}

impl Default for AdminSection {
    fn default() -> AdminSection {
        AdminSection { socket: "/run/ferry/admin.sock".into() }
    }
}

/// The swarm's settings, validated (the key file is read when the node starts).
#[derive(Debug)]
pub struct P2pSettings {
    pub listen: Vec<p2p_node::swarm::Multiaddr>,
    pub bootstrap: Vec<p2p_node::swarm::Multiaddr>,
    pub psk_file: PathBuf,
    pub region: String,
    pub zone: String,
    pub mdns: bool,
    pub upload_rate: Option<u64>,
    pub download_rate: Option<u64>,
    pub upload_per_peer: usize,
}

/// Everything `ferry node` needs, validated.
#[derive(Debug)]
pub struct NodeSettings {
    pub store_path: PathBuf,
    pub store: StoreConfig,
    pub registry_listen: SocketAddr,
    pub mirror: MirrorSettings,
    pub metrics_listen: Option<SocketAddr>,
    pub admin_socket: PathBuf,
    pub p2p: Option<P2pSettings>,
    /// containerd's certs.d folder, whose hosts.toml files the node keeps while it runs.
    pub containerd_hosts: Option<PathBuf>,
    /// The Snapshots API socket, when the snapshotter is on.
    pub snapshotter_socket: Option<PathBuf>,
    /// Background prefetch of lazy layers, bytes per second (0: no cap); `None`: off.
    pub prefetch_rate: Option<u64>,
    pub prewarm: PrewarmSettings,
}

/// Reads the file (if any) and applies the flags over it.
pub fn load(flags: &NodeFlags) -> Result<FileConfig> {
    let mut file = match &flags.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
            toml::from_str::<FileConfig>(&text).with_context(|| format!("parsing config file {}", path.display()))?
        }
        None => FileConfig::default(),
    };
    if let Some(p) = &flags.store {
        file.store.path = p.clone();
    }
    if let Some(c) = &flags.capacity {
        file.store.capacity = c.clone();
    }
    if let Some(a) = flags.registry_listen {
        file.registry.listen = a;
    }
    if !flags.upstreams.is_empty() {
        file.registry.upstreams = flags
            .upstreams
            .iter()
            .map(|spec| {
                let u = UpstreamSettings::parse(spec)?;
                Ok(UpstreamEntry { host: u.host, url: Some(u.url.to_string()), username: None, password: None })
            })
            .collect::<Result<_, registry_proxy::Error>>()?;
    }
    file.registry.ca_files.extend(flags.upstream_cas.iter().cloned());
    if let Some(d) = &flags.docker_config {
        file.registry.docker_config = Some(d.clone());
    }
    if let Some(m) = flags.metrics_listen {
        file.metrics.listen = m;
    }
    if let Some(s) = &flags.admin_socket {
        file.admin.socket = s.clone();
    }
    if let Some(d) = &flags.containerd_hosts {
        file.registry.containerd_hosts = Some(d.clone());
    }
    if let Some(s) = &flags.snapshotter_socket {
        file.snapshotter.socket = Some(s.clone());
    }
    if !flags.p2p_listen.is_empty() {
        file.p2p.listen = flags.p2p_listen.clone();
    }
    if !flags.bootstrap.is_empty() {
        file.p2p.bootstrap = flags.bootstrap.clone();
    }
    if let Some(k) = &flags.psk_file {
        file.p2p.psk_file = Some(k.clone());
    }
    // Empty: a Kubernetes node without the label the downward API reads it from.
    if let Some(r) = flags.region.as_ref().filter(|r| !r.is_empty()) {
        file.p2p.region = r.clone();
    }
    if let Some(z) = flags.zone.as_ref().filter(|z| !z.is_empty()) {
        file.p2p.zone = z.clone();
    }
    if let Some(m) = flags.mdns {
        file.p2p.mdns = m;
    }
    if let Some(n) = &flags.node_name {
        file.prewarm.node_name = n.clone();
    }
    if !flags.operator_keys.is_empty() {
        file.prewarm.operator_keys = flags.operator_keys.clone();
    }
    Ok(file)
}

impl FileConfig {
    pub fn upstream_settings(&self) -> Result<Vec<UpstreamSettings>> {
        self.registry
            .upstreams
            .iter()
            .map(|e| {
                let spec = match &e.url {
                    Some(url) => format!("{}={url}", e.host),
                    None => e.host.clone(),
                };
                let mut u = UpstreamSettings::parse(&spec)?;
                u.username = e.username.clone();
                u.password = e.password.clone();
                Ok(u)
            })
            .collect()
    }

    /// Validates into the node's settings.
    pub fn node_settings(&self) -> Result<NodeSettings> {
        let s = &self.store;
        if !(0.0 < s.low_watermark && s.low_watermark < s.high_watermark && s.high_watermark <= 1.0) {
            bail!(
                "store watermarks must satisfy 0 < low_watermark < high_watermark <= 1 (got {} and {})",
                s.low_watermark,
                s.high_watermark
            );
        }
        let upstreams = self.upstream_settings()?;
        if upstreams.is_empty() {
            bail!("no upstream registry configured: add --upstream HOST[=URL] or [[registry.upstreams]] in the config file");
        }
        let r = &self.registry;
        Ok(NodeSettings {
            store_path: s.path.clone(),
            store: StoreConfig { capacity: 0, high_watermark: s.high_watermark, low_watermark: s.low_watermark },
            registry_listen: r.listen,
            mirror: MirrorSettings {
                upstreams,
                default_upstream: r.default_upstream.clone(),
                extra_ca_files: r.ca_files.clone(),
                docker_config: r.docker_config.clone(),
                connect_timeout: r.connect_timeout,
                read_timeout: r.read_timeout,
                manifest_timeout: r.manifest_timeout,
                stale_if_error: r.stale_if_error,
                piece_timeout: r.piece_timeout,
                lazy_layers: self.snapshotter.socket.is_some().then(Default::default),
                // Set by `ferry node`, which has the mirror's address the warmer reads through.
                prewarm: None,
            },
            metrics_listen: self.metrics.enabled.then_some(self.metrics.listen),
            admin_socket: self.admin.socket.clone(),
            containerd_hosts: r.containerd_hosts.clone(),
            snapshotter_socket: self.snapshotter.socket.clone(),
            prefetch_rate: match self.snapshotter.prefetch_rate.trim() {
                "off" => None,
                spec => Some(parse_capacity(spec, Path::new("/")).context("snapshotter.prefetch_rate")?),
            },
            p2p: self.p2p_settings()?,
            prewarm: self.prewarm_settings()?,
        })
    }

    fn prewarm_settings(&self) -> Result<PrewarmSettings> {
        let p = &self.prewarm;
        let node_name = match p.node_name.trim() {
            "" => std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default(),
            name => name.to_string(),
        };
        if node_name.is_empty() || node_name.contains(char::is_whitespace) {
            bail!("prewarm.node_name {node_name:?}: give the node's name (its Kubernetes node name) with --node-name, without spaces");
        }
        let operator_keys = p
            .operator_keys
            .iter()
            .map(|k| k.parse().map_err(|e: String| anyhow::anyhow!("prewarm.operator_keys: {e}")))
            .collect::<Result<_>>()?;
        let rate = parse_capacity(&p.rate, Path::new("/")).context("prewarm.rate")?;
        Ok(PrewarmSettings { node_name, operator_keys, rate: (rate > 0).then_some(rate) })
    }

    fn p2p_settings(&self) -> Result<Option<P2pSettings>> {
        let p = &self.p2p;
        if p.listen.is_empty() {
            return Ok(None);
        }
        let parse =
            |what: &str, a: &String| a.parse::<p2p_node::swarm::Multiaddr>().with_context(|| format!("{what} {a:?} is not a multiaddr"));
        let listen = p.listen.iter().map(|a| parse("--p2p-listen", a)).collect::<Result<Vec<_>>>()?;
        let bootstrap = p.bootstrap.iter().map(|a| parse("--bootstrap", a)).collect::<Result<Vec<_>>>()?;
        let Some(psk_file) = p.psk_file.clone() else {
            bail!(
                "P2P needs the cluster key: add --psk-file FILE (make one with deploy/make-cluster-key.sh); without it anyone could join"
            );
        };
        let rate = |what: &str, spec: &str| -> Result<Option<u64>> {
            if spec.trim().ends_with('%') {
                bail!("p2p.{what} is a rate in bytes per second (\"50MiB\"), not a share");
            }
            let r = parse_capacity(spec, Path::new("/")).with_context(|| format!("p2p.{what}"))?;
            Ok((r > 0).then_some(r))
        };
        Ok(Some(P2pSettings {
            listen,
            bootstrap,
            psk_file,
            region: p.region.clone(),
            zone: p.zone.clone(),
            mdns: p.mdns,
            upload_rate: rate("upload_rate", &p.upload_rate)?,
            download_rate: rate("download_rate", &p.download_rate)?,
            upload_per_peer: p.upload_per_peer.max(1),
        }))
    }
}

/// Parses a capacity: `500GiB`, `2TB`, `1048576`, or `80%` of the filesystem holding `dir`.
pub fn parse_capacity(spec: &str, dir: &Path) -> Result<u64> {
    let spec = spec.trim();
    if let Some(pct) = spec.strip_suffix('%') {
        let pct: f64 = pct.trim().parse().with_context(|| format!("capacity {spec:?}: not a percentage"))?;
        if !(0.0 < pct && pct <= 100.0) {
            bail!("capacity {spec:?}: a percentage must be in (0, 100]");
        }
        let fs = rustix::fs::statvfs(dir).with_context(|| format!("reading the size of the filesystem of {}", dir.display()))?;
        return Ok((fs.f_blocks as f64 * fs.f_frsize as f64 * pct / 100.0) as u64);
    }
    let split = spec.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(spec.len());
    let (num, unit) = spec.split_at(split);
    let num: f64 = num.parse().with_context(|| format!("capacity {spec:?}: expected a number with a unit, like 500GiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        u => bail!("capacity {spec:?}: unknown unit {u:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB or %)"),
    };
    Ok((num * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacities() {
        let d = Path::new("/");
        assert_eq!(parse_capacity("10GiB", d).expect("ok"), 10 << 30);
        assert_eq!(parse_capacity("1.5 GB", d).expect("ok"), 1_500_000_000);
        assert_eq!(parse_capacity("4096", d).expect("ok"), 4096);
        assert!(parse_capacity("50%", d).expect("ok") > 0);
        for bad in ["", "GiB", "10 parsecs", "0%", "120%", "-1GiB"] {
            assert!(parse_capacity(bad, d).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_documented_example_config_loads() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/ferry.toml")).expect("deploy/ferry.toml");
        let cfg: FileConfig = toml::from_str(&text).expect("example config parses");
        let s = cfg.node_settings().expect("example config validates");
        assert!(!s.mirror.upstreams.is_empty());
    }

    #[test]
    fn an_empty_region_or_zone_flag_leaves_the_files() {
        // As the DaemonSet passes them where the pod does not carry its node's topology labels.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ferry.toml");
        std::fs::write(&path, "[p2p]\nregion = \"site-a\"\nzone = \"rack-1\"\n").expect("write");
        let flags = |region: &str, zone: &str| NodeFlags {
            config: Some(path.clone()),
            region: Some(region.into()),
            zone: Some(zone.into()),
            ..NodeFlags::default()
        };
        let file = load(&flags("", "")).expect("loads");
        assert_eq!((file.p2p.region.as_str(), file.p2p.zone.as_str()), ("site-a", "rack-1"));
        let file = load(&flags("site-b", "rack-9")).expect("loads");
        assert_eq!((file.p2p.region.as_str(), file.p2p.zone.as_str()), ("site-b", "rack-9"));
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        assert!(toml::from_str::<FileConfig>("[store]\npaht = \"/x\"").is_err());
        assert!(toml::from_str::<FileConfig>("[registry]\nmanifest_timeout = \"soon\"").is_err());
        let cfg: FileConfig =
            toml::from_str("[store]\nhigh_watermark = 0.5\nlow_watermark = 0.7\n[[registry.upstreams]]\nhost = \"x\"").expect("parses");
        assert!(cfg.node_settings().is_err());
        let flags = NodeFlags { upstreams: vec!["x=ftp://nope".into()], ..NodeFlags::default() };
        assert!(load(&flags).is_err());
    }
}

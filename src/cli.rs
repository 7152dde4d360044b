//! Command-line arguments, parsed without any I/O.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "Moves container images to GPU nodes at the edge: a caching, verifying registry mirror for containerd."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node: the registry mirror containerd pulls through, its store, metrics and admin socket.
    Node(NodeArgs),
    /// Show what the local node holds and where the bytes it served came from.
    Status(StatusArgs),
    /// Print (or write) the containerd hosts.toml that makes containerd pull through this node.
    ContainerdConfig(ContainerdConfigArgs),
    /// Convert an image's layers to zstd:chunked, so they can be loaded lazily.
    Convert(ConvertArgs),
    /// Pull an image through the node into containerd on the ferry snapshotter: lazy layers are
    /// mounted, not downloaded, so `ctr run --snapshotter ferry IMAGE` starts at once.
    Pull(PullArgs),
    /// Run a command in a lazy image and record what it reads, in first-access order: the
    /// `--prioritize` file for `ferry convert`.
    Profile(ProfileArgs),
    /// GPU-aware prewarming: which nodes a rollout's pods will land on, ranked.
    Prewarm(PrewarmArgs),
    /// Check this host's setup for the node: containerd's version and config, the hosts.toml
    /// files, FUSE, ports, the running node, disk. Exits non-zero when a check FAILs.
    Doctor(DoctorArgs),
}

/// Flags shared by commands that read the node's configuration; each overrides the file.
#[derive(Debug, Args, Clone, Default)]
pub struct NodeFlags {
    /// TOML configuration file (see deploy/ferry.toml).
    #[arg(long, value_name = "FILE", env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where blobs and metadata are kept.
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Store capacity: bytes with a unit (500GiB, 2TB) or a share of the filesystem (80%).
    #[arg(long, value_name = "SIZE")]
    pub capacity: Option<String>,
    /// Address of the registry mirror [default: 127.0.0.1:5050].
    #[arg(long, value_name = "ADDR")]
    pub registry_listen: Option<SocketAddr>,
    /// An allowed upstream registry, `HOST` or `HOST=URL` (repeatable); replaces the file's list.
    #[arg(long = "upstream", value_name = "HOST[=URL]")]
    pub upstreams: Vec<String>,
    /// Extra CA certificate (PEM) for HTTPS upstreams (repeatable).
    #[arg(long = "upstream-ca", value_name = "FILE")]
    pub upstream_cas: Vec<PathBuf>,
    /// Docker config.json with upstream credentials.
    #[arg(long, value_name = "FILE")]
    pub docker_config: Option<PathBuf>,
    /// Address of the Prometheus /metrics endpoint [default: 127.0.0.1:9464].
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// The node's admin socket [default: /run/ferry/admin.sock].
    #[arg(long, value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,
    /// containerd's certs.d folder: the node writes its hosts.toml files there at start and takes
    /// them out at a clean stop.
    #[arg(long, value_name = "DIR")]
    pub containerd_hosts: Option<PathBuf>,
    /// Serve containerd's Snapshots API here (`[proxy_plugins.ferry]`); off without it.
    #[arg(long, value_name = "PATH")]
    pub snapshotter_socket: Option<PathBuf>,
    /// Where the P2P swarm listens (repeatable), e.g. /ip4/0.0.0.0/tcp/4001; P2P is off without one.
    #[arg(long = "p2p-listen", value_name = "MULTIADDR")]
    pub p2p_listen: Vec<String>,
    /// A peer to join at start, ending in /p2p/<peer id> (repeatable).
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// The cluster key (libp2p swarm.key format): only nodes holding it can connect.
    #[arg(long, value_name = "FILE")]
    pub psk_file: Option<PathBuf>,
    /// This node's region, told to peers (an empty value leaves the file's).
    #[arg(long, value_name = "NAME", env = "FERRY_REGION")]
    pub region: Option<String>,
    /// This node's zone in its region (a rack, a switch), told to peers: same-zone peers are
    /// preferred (an empty value leaves the file's).
    #[arg(long, value_name = "NAME", env = "FERRY_ZONE")]
    pub zone: Option<String>,
    /// Find peers on the local network by mDNS [default: true].
    #[arg(long, value_name = "true|false")]
    pub mdns: Option<bool>,
    /// This node's name in prewarm orders: its Kubernetes node name [default: the hostname].
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// An operator's public key (`ed25519:<hex>`, from `ferry prewarm keygen`) whose prewarm
    /// orders this node carries out (repeatable); replaces the file's list.
    #[arg(long = "operator-key", value_name = "KEY")]
    pub operator_keys: Vec<String>,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub flags: NodeFlags,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub flags: NodeFlags,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ContainerdConfigArgs {
    #[command(flatten)]
    pub flags: NodeFlags,
    /// Write DIR/<registry>/hosts.toml (containerd's certs.d folder), keeping an operator's file
    /// that was there as hosts.toml.ferry-orig.
    #[arg(long, value_name = "DIR", conflicts_with = "restore")]
    pub apply: Option<PathBuf>,
    /// Take Ferry's hosts.toml files out of DIR, putting back the ones they replaced.
    #[arg(long, value_name = "DIR")]
    pub restore: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The node's configuration, as `ferry node` takes it: doctor checks what that node needs.
    #[command(flatten)]
    pub flags: NodeFlags,
    /// containerd's configuration file (its `imports` are followed).
    #[arg(long, default_value = "/etc/containerd/config.toml", value_name = "PATH")]
    pub containerd_config: PathBuf,
    /// containerd's socket [default: the config's [grpc] address, else /run/containerd/containerd.sock].
    #[arg(long, value_name = "PATH")]
    pub containerd_address: Option<PathBuf>,
    /// The folder of hosts.toml files (`<dir>/<registry>/hosts.toml`) containerd should read.
    #[arg(long, default_value = "/etc/containerd/certs.d", value_name = "DIR")]
    pub certs_dir: PathBuf,
    /// `text` (a list with fixes) or `json` (the checks, for scripts).
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The image to convert: `oci:DIR[:TAG]` (an OCI layout) or `HOST/REPO[:TAG|@DIGEST]`.
    pub src: String,
    /// Where the converted image goes: `oci:DIR[:TAG]` (created if absent) or `HOST/REPO[:TAG]`.
    pub dst: String,
    /// What a workload reads at startup, in first-access order: `PATH` or `PATH OFFSET LENGTH`
    /// per line. Listed files go first in their layer and their chunks are marked for prefetch.
    #[arg(long, value_name = "FILE")]
    pub prioritize: Option<PathBuf>,
    /// zstd compression level.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub level: i32,
    /// Files are cut into chunks of this size (each fetched and verified on its own).
    #[arg(long, default_value = "1MiB", value_name = "SIZE")]
    pub chunk_size: String,
    /// Docker config.json with registry credentials [default: ~/.docker/config.json].
    #[arg(long, value_name = "FILE")]
    pub docker_config: Option<PathBuf>,
    /// Extra CA certificate (PEM) for HTTPS registries (repeatable).
    #[arg(long = "upstream-ca", value_name = "FILE")]
    pub upstream_cas: Vec<PathBuf>,
    /// Talk plain HTTP to the registries (always done for loopback hosts).
    #[arg(long)]
    pub plain_http: bool,
    /// Where temporary layouts and spool files go [default: $TMPDIR or /tmp].
    #[arg(long, value_name = "DIR")]
    pub tmp_dir: Option<PathBuf>,
    /// `text` (with a progress bar) or `json` (the report, for scripts).
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
}

/// How a client command finds the local node's mirror.
#[derive(Debug, Args, Clone)]
pub struct MirrorFlags {
    /// TOML configuration file of the node (see deploy/ferry.toml).
    #[arg(long, value_name = "FILE", env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the node's registry mirror [default: 127.0.0.1:5050].
    #[arg(long, value_name = "ADDR")]
    pub registry_listen: Option<SocketAddr>,
}

impl MirrorFlags {
    pub fn node_flags(&self) -> NodeFlags {
        NodeFlags { config: self.config.clone(), registry_listen: self.registry_listen, ..NodeFlags::default() }
    }
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// The image: `HOST/REPO[:TAG|@DIGEST]`, HOST one of the node's upstreams.
    pub image: String,
    #[command(flatten)]
    pub mirror: MirrorFlags,
    /// containerd's socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock", value_name = "PATH")]
    pub address: PathBuf,
    /// containerd namespace.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// The snapshotter's name in containerd's `[proxy_plugins]`.
    #[arg(long, default_value = "ferry")]
    pub snapshotter: String,
    /// `text` or `json` (the report, for scripts).
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// A lazy image (one `ferry convert` wrote): `HOST/REPO[:TAG|@DIGEST]`.
    pub image: String,
    /// The command to profile, after `--` (e.g. `-- python3 -c 'import torch'`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
    #[command(flatten)]
    pub mirror: MirrorFlags,
    /// Write the profile here instead of to standard output.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Stop the command after this long; what it read until then is the profile.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    /// containerd's socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock", value_name = "PATH")]
    pub address: PathBuf,
    /// containerd namespace.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
}

#[derive(Debug, Args)]
pub struct PrewarmArgs {
    #[command(subcommand)]
    pub command: PrewarmCommand,
}

#[derive(Debug, Subcommand)]
pub enum PrewarmCommand {
    /// Rank the nodes a rollout's pods will land on (GPU fit, free GPUs, affinity, taints, pools,
    /// what is cached) and pick the ones to warm, one WAN seed per region first.
    Plan(PlanArgs),
    /// Have the plan's nodes fetch their images: signed orders, handed to the local node, which
    /// sends them over the swarm; wave 0 (the WAN seeds) first, then wave 1 from the seeds.
    Apply(ApplyArgs),
    /// The prewarm orders of this node and of every peer it can ask.
    Status(PrewarmStatusArgs),
    /// Make an operator key: the secret signs orders, nodes trust the public key
    /// (`--operator-key` or `prewarm.operator_keys`).
    Keygen(KeygenArgs),
}

/// How a client command finds the local node's admin socket.
#[derive(Debug, Args, Clone)]
pub struct AdminFlags {
    /// TOML configuration file of the node (see deploy/ferry.toml).
    #[arg(long, value_name = "FILE", env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// The node's admin socket [default: /run/ferry/admin.sock].
    #[arg(long, value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,
}

impl AdminFlags {
    pub fn node_flags(&self) -> NodeFlags {
        NodeFlags { config: self.config.clone(), admin_socket: self.admin_socket.clone(), ..NodeFlags::default() }
    }
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The plan, as `ferry prewarm plan -o FILE` wrote it.
    pub plan: PathBuf,
    /// The operator's secret key (from `ferry prewarm keygen`).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    #[command(flatten)]
    pub admin: AdminFlags,
    /// Give up waiting after this long and report where each node stands.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    /// Orders not started within this long are refused by their nodes.
    #[arg(long, default_value = "6h", value_parser = humantime::parse_duration)]
    pub valid_for: std::time::Duration,
    /// Bytes per second each node may spend ("50MiB"); nodes keep to their own cap too.
    #[arg(long, value_name = "RATE")]
    pub rate: Option<String>,
    /// Only these nodes' orders (repeatable).
    #[arg(long = "node", value_name = "NAME")]
    pub nodes: Vec<String>,
    /// `text` (progress bars, then a report) or `json` (the report).
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct PrewarmStatusArgs {
    #[command(flatten)]
    pub admin: AdminFlags,
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the secret key (created with mode 0600; an existing file is kept).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: PathBuf,
}

// The cluster comes from files (`--nodes`, `--pods`) or, live, from the API (`--kubeconfig`):
// exactly one of the two.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("cluster").required(true).args(["nodes", "kubeconfig"])))]
pub struct PlanArgs {
    /// The rollout: Deployment, StatefulSet, Job or DaemonSet manifests (YAML or JSON, several
    /// documents per file). Other kinds are skipped with a note.
    #[arg(required = true, value_name = "MANIFEST")]
    pub rollouts: Vec<PathBuf>,
    /// The nodes, as `kubectl get nodes -o json` prints them.
    #[arg(long, value_name = "FILE")]
    pub nodes: Option<PathBuf>,
    /// The pods already running, as `kubectl get pods -A -o json` prints them.
    #[arg(long, value_name = "FILE", conflicts_with = "kubeconfig")]
    pub pods: Option<PathBuf>,
    /// Live mode: list the nodes and pods from the Kubernetes API this kubeconfig points at
    /// (auth: token, token file, client certificate, basic; the user needs `list` on nodes and
    /// pods). Given explicitly: `KUBECONFIG` is not read.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig's context to use [default: its current-context].
    // `requires` alone lets `--context` pass with `--nodes` (which excludes `--kubeconfig`).
    #[arg(long, value_name = "NAME", requires = "kubeconfig", conflicts_with = "nodes")]
    pub context: Option<String>,
    /// What each ferry node holds and what each image is made of (JSON or YAML:
    /// `{"nodes": {NODE: [DIGEST…]}, "images": {IMAGE: [{"digest", "size"}…]}}`).
    #[arg(long, value_name = "FILE")]
    pub holdings: Option<PathBuf>,
    /// Planner settings (TOML: strategy, gpu_weight, headroom, seeds_per_region, pools, …);
    /// the flags below override it.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// How the cluster's scheduler scores resource fit: `spread` (LeastAllocated, Kubernetes'
    /// default) or `binpack` (MostAllocated).
    #[arg(long, value_parser = ["spread", "binpack"])]
    pub strategy: Option<String>,
    /// Weight of GPU-like resources in the scheduler's resource-fit score (cpu and memory weigh
    /// 1): 3 by default, for a scheduler configured to score GPUs; 0 for Kubernetes' default.
    #[arg(long, value_name = "N")]
    pub gpu_weight: Option<u32>,
    /// Warm ceil(HEADROOM × replicas) nodes per image.
    #[arg(long, value_name = "HEADROOM")]
    pub headroom: Option<f64>,
    /// Nodes per region that fetch over the WAN first (wave 0).
    #[arg(long, value_name = "N")]
    pub seeds_per_region: Option<u32>,
    /// A node pool, as a label selector (`pool=edge`, `tier in (idc,edge)`); pools fill in the
    /// order given (repeatable). Replaces the policy file's pools.
    #[arg(long = "pool", value_name = "SELECTOR")]
    pub pools: Vec<String>,
    /// Also write the plan as JSON to FILE (what `ferry prewarm apply` takes).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub write: Option<PathBuf>,
    /// `text`: a table; `json`: the plan.
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
}

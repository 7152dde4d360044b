//! Command-line arguments, parsed without any I/O.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    /// Write DIR/<registry>/hosts.toml (containerd's certs.d folder), keeping a backup of any
    /// file that was there.
    #[arg(long, value_name = "DIR")]
    pub apply: Option<PathBuf>,
}

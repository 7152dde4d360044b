//! `ferry`: the command line. Parses, loads config, sets up logging and calls the libraries; no
//! logic of its own lives here.

mod cli;
mod config;
mod containerd_config;
mod convert;
mod doctor;
mod node;
mod prewarm;
mod profile;
mod pull;
mod status;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("FERRY_LOG").or_else(|_| EnvFilter::try_from_default_env()).unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            cli::Command::Node(a) => node::run(a).await,
            cli::Command::Status(a) => status::run(a).await,
            cli::Command::ContainerdConfig(a) => containerd_config::run(a),
            cli::Command::Convert(a) => convert::run(a).await,
            cli::Command::Pull(a) => pull::run(a).await,
            cli::Command::Profile(a) => profile::run(a).await,
            cli::Command::Prewarm(a) => prewarm::run(a).await,
            cli::Command::Doctor(a) => doctor::run(a).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

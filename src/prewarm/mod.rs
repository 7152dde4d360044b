//! `ferry prewarm`: plan a rollout's prewarming ([`plan`], from files or live from the cluster's
//! API through [`kube`]), make the operator key ([`keys`]), and have the nodes carry the plan out
//! and report ([`apply`]).

mod apply;
mod keys;
mod kube;
mod plan;

use std::path::Path;

use anyhow::{Context, Result};

use crate::cli::{PrewarmArgs, PrewarmCommand};

pub async fn run(args: PrewarmArgs) -> Result<()> {
    match args.command {
        PrewarmCommand::Plan(a) => plan::run(a).await,
        PrewarmCommand::Apply(a) => apply::apply(a).await,
        PrewarmCommand::Status(a) => apply::status(a).await,
        PrewarmCommand::Keygen(a) => keys::keygen(a),
    }
}

/// A file's text and the name errors call it by (as given on the command line).
fn read(path: &Path) -> Result<(String, String)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((path.display().to_string(), text))
}

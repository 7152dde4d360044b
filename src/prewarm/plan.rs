//! `ferry prewarm plan`: reads the files operators already have (kubectl's node and pod lists, the
//! rollout's manifests, what ferry nodes hold), hands them to the pure planner
//! (`p2p_node::prewarm`) and prints the plan: a table, or JSON for `ferry prewarm apply`. In live
//! mode (`--kubeconfig`) the node and pod lists come from the Kubernetes API instead ([`kube`]).
//!
//! [`kube`]: super::kube

use anyhow::{Context, Result};
use p2p_node::prewarm::{self, Cluster, Holdings, LabelSelector, PlanInput, Policy, Strategy};

use super::kube::Api;
use super::read;
use crate::cli::{OutputFormat, PlanArgs};

pub async fn run(args: PlanArgs) -> Result<()> {
    let mut input = PlanInput { cluster: cluster(&args).await?, ..Default::default() };
    for path in &args.rollouts {
        let (name, text) = read(path)?;
        let manifests = prewarm::parse_manifests(&name, &text)?;
        input.rollouts.extend(manifests.rollouts);
        input.notes.extend(manifests.skipped);
    }
    anyhow::ensure!(!input.rollouts.is_empty(), "no Deployment, StatefulSet, Job or DaemonSet in {:?}", args.rollouts);
    input.holdings = match &args.holdings {
        Some(p) => {
            let (name, text) = read(p)?;
            prewarm::parse_holdings(&name, &text)?
        }
        None => Holdings::default(),
    };
    let plan = prewarm::plan(&input, &policy(&args)?)?;
    let json = serde_json::to_string_pretty(&plan)?;
    if let Some(out) = &args.write {
        std::fs::write(out, format!("{json}\n")).with_context(|| format!("writing {}", out.display()))?;
    }
    match args.output {
        OutputFormat::Json => println!("{json}"),
        OutputFormat::Text => print!("{}", plan.render_table()),
    }
    Ok(())
}

/// The nodes and pods: from the API with `--kubeconfig`, else from the files.
async fn cluster(args: &PlanArgs) -> Result<Cluster> {
    let (nodes, pods) = match &args.kubeconfig {
        Some(kubeconfig) => {
            let api = Api::from_kubeconfig(kubeconfig, args.context.as_deref())?;
            let (name, text) = api.nodes().await?;
            let nodes = prewarm::parse_nodes(&name, &text)?;
            let (name, text) = api.pods().await?;
            (nodes, prewarm::parse_pods(&name, &text)?)
        }
        None => {
            let (name, text) = read(args.nodes.as_ref().context("--nodes FILE or --kubeconfig FILE is needed")?)?;
            let nodes = prewarm::parse_nodes(&name, &text)?;
            let pods = match &args.pods {
                Some(p) => {
                    let (name, text) = read(p)?;
                    prewarm::parse_pods(&name, &text)?
                }
                None => Vec::new(),
            };
            (nodes, pods)
        }
    };
    Ok(Cluster::new(nodes, &pods)?)
}

/// The policy file (if any), then the flags over it.
fn policy(args: &PlanArgs) -> Result<Policy> {
    let mut policy = match &args.policy {
        Some(p) => {
            let (name, text) = read(p)?;
            toml::from_str(&text).with_context(|| format!("{name}: not a prewarm policy"))?
        }
        None => Policy::default(),
    };
    if let Some(s) = &args.strategy {
        policy.strategy = if s == "binpack" { Strategy::Binpack } else { Strategy::Spread };
    }
    if let Some(w) = args.gpu_weight {
        policy.gpu_weight = w;
    }
    if let Some(h) = args.headroom {
        policy.headroom = h;
    }
    if let Some(n) = args.seeds_per_region {
        policy.seeds_per_region = n;
    }
    if !args.pools.is_empty() {
        policy.pools =
            args.pools.iter().map(|s| s.parse::<LabelSelector>().with_context(|| format!("--pool {s}"))).collect::<Result<_>>()?;
    }
    policy.validate()?;
    Ok(policy)
}

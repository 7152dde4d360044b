//! # prewarm: the pure, GPU-aware prewarm planner
//!
//! Before a rollout, the operator asks which nodes its pods will land on, so that exactly those
//! nodes fetch the images ahead of time. Inputs are what operators already have: `kubectl get
//! nodes -o json`, `kubectl get pods -A -o json`, the rollout's manifests, and optionally what each
//! ferry node holds ([`Holdings`]). Output: a [`Plan`] per image: ranked nodes with score,
//! placement likelihood, missing bytes, wave and reasons; ineligible nodes with the reason; and
//! which nodes to warm.
//!
//! Data flow: [`parse_nodes`] + [`parse_pods`] → [`Cluster`]; [`parse_manifests`] → [`Rollout`]s;
//! [`parse_holdings`] → [`Holdings`]; all in a [`PlanInput`] → [`plan`] → [`Plan`]
//! (serde, and [`Plan::render_table`]). The plan's warm nodes become [`order::Order`]s, signed
//! by the operator and checked by each node before it fetches anything.
//!
//! How: `filter` refuses nodes as the scheduler's filters would; `score` scores the rest as its
//! scoring would (resource fit by [`Strategy`], preferred affinity, `PreferNoSchedule` taints)
//! plus Ferry's pool order and a small bonus for what a node already caches; `simulate` places
//! the replicas one at a time, deducting resources and honoring topology spread, [`Policy::runs`]
//! times with small seeded perturbations that stand for the scheduler's random tie-breaking.
//! A node's likelihood is the share of runs that put at least one pod of the image there.
//!
//! Invariants: pure and deterministic: no I/O, no clock, no randomness but a seeded splitmix64;
//! the same input gives a byte-identical serialized plan, whatever the order of nodes and pods in
//! it (nodes are sorted by name; output uses sorted collections only). Capacity arithmetic is in
//! integer milli-units ([`Quantity`]). The cache never makes an ineligible node eligible. Several
//! rollouts are placed in input order, each seeing what the previous ones took.

mod cluster;
mod doc;
mod filter;
mod holdings;
pub mod order;
mod plan;
mod quantity;
mod rollout;
mod score;
mod selector;
mod simulate;
mod table;
pub mod warm;

use std::collections::BTreeMap;

pub use cluster::{parse_nodes, parse_pods, Cluster, Effect, Node, PodUsage, Taint};
pub use holdings::{parse_holdings, Holdings, Layer, Missing};
pub use plan::{ImagePlan, Ineligible, Plan, RankedNode, RolloutSummary};
pub use quantity::{human_bytes, NotAQuantity, Quantity};
pub use rollout::{parse_manifests, Kind, Manifests, PodTemplate, Rollout, Spread, Unsatisfiable};
pub use selector::{LabelSelector, Op, Requirement, Term, Toleration, TolerationOp};

use crate::Error;

/// Resource name → amount (`cpu`, `memory`, `nvidia.com/gpu`, `nvidia.com/mig-1g.10gb`, ...).
pub type Resources = BTreeMap<String, Quantity>;

/// Everything the planner looks at.
#[derive(Clone, Debug, Default)]
pub struct PlanInput {
    pub cluster: Cluster,
    /// In the order they will be applied: each sees what the previous ones took.
    pub rollouts: Vec<Rollout>,
    pub holdings: Holdings,
    /// Carried into the plan (objects skipped while reading the manifests, ...).
    pub notes: Vec<String>,
}

/// How the cluster's scheduler scores resource fit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// `LeastAllocated`, the Kubernetes default: emptier nodes first.
    #[default]
    Spread,
    /// `MostAllocated`: fuller nodes first, keeping whole nodes free for big jobs.
    Binpack,
}

/// The operator's knobs. Every field has a default; a config file may set any of them.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    pub strategy: Strategy,
    /// Weight of each GPU-like resource (GPUs, MIG slices, shared GPU memory) in the resource-fit
    /// score, next to cpu and memory at 1 each: 3 for a scheduler configured to score GPUs (the
    /// default here), 0 for the Kubernetes default, which scores only cpu and memory.
    pub gpu_weight: u32,
    /// Warm `ceil(headroom × replicas)` nodes per image (DaemonSets: every eligible node).
    pub headroom: f64,
    /// Nodes per region that fetch over the WAN (wave 0); the rest of the region fetch from them.
    pub seeds_per_region: u32,
    /// Placement simulations per plan (1..=64).
    pub runs: u32,
    /// Seed of the perturbations; the same seed gives the same plan.
    pub seed: u64,
    /// Perturbation of each node's score per run, in thousandths of a score point. The
    /// scheduler's scores are integers and it breaks ties at random: 1000 models exactly that.
    pub jitter: u32,
    /// Score bonus of a node holding all of the image, in thousandths of a point (scaled by the
    /// cached share). Below a point by default: it breaks ties and nothing more.
    pub cache_weight: u32,
    /// Node pools in the order the cluster fills them (the "resource policy" pattern): pods go to
    /// the first pool with room. Nodes in no pool come last.
    pub pools: Vec<LabelSelector>,
    /// At most this many ranked and ineligible nodes listed per image (all nodes to warm are
    /// always listed; counts by reason are always complete).
    pub list_limit: usize,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            strategy: Strategy::Spread,
            gpu_weight: 3,
            headroom: 1.25,
            seeds_per_region: 1,
            runs: 16,
            seed: 0x5eed_f0e7_7e55_0001,
            jitter: 1000,
            cache_weight: 500,
            pools: Vec::new(),
            list_limit: 200,
        }
    }
}

impl Policy {
    /// Checks the ranges; [`plan`] calls it.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |setting: &str, why: String| Err(Error::BadPolicy { setting: setting.to_string(), why });
        if !(self.headroom.is_finite() && (1.0..=100.0).contains(&self.headroom)) {
            return bad("headroom", format!("{} is not between 1 and 100", self.headroom));
        }
        if !(1..=64).contains(&self.runs) {
            return bad("runs", format!("{} is not between 1 and 64", self.runs));
        }
        if self.seeds_per_region == 0 {
            return bad("seeds_per_region", "must be at least 1".to_string());
        }
        if self.gpu_weight > 100 {
            return bad("gpu_weight", format!("{} is over 100", self.gpu_weight));
        }
        if self.jitter > 100_000 || self.cache_weight > 100_000 {
            return bad("jitter/cache_weight", "at most 100000 (100 points)".to_string());
        }
        Ok(())
    }

    /// `ceil(headroom × replicas)` in integer arithmetic (headroom to 1/1000).
    pub(crate) fn budget(&self, replicas: u64) -> u64 {
        let milli = (self.headroom * 1000.0).round() as u64;
        (replicas * milli).div_ceil(1000)
    }
}

/// Plans the prewarming of every image of `input.rollouts`. Pure: see the module invariants.
pub fn plan(input: &PlanInput, policy: &Policy) -> Result<Plan, Error> {
    policy.validate()?;
    Ok(plan::build(input, policy))
}

//! The plan: per image, nodes ranked by placement likelihood, the nodes to warm in waves, and
//! the ineligible nodes with their reasons; and how it is assembled from the simulation.
//!
//! Invariants: images appear in the order the rollouts first name them; nodes are ranked by
//! likelihood, then score, then name; warm nodes are the first `budget` ranked ones, in wave 0
//! for the first [`Policy::seeds_per_region`] of each region and wave 1 for the rest; the plan
//! holds only sorted collections, so its serialized form is byte-identical for the same input.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::cluster::Node;
use super::filter::{self, Exclusion};
use super::rollout::{Kind, Rollout};
use super::score::{is_gpu_like, POINT};
use super::simulate::{Engine, Outcome};
use super::{PlanInput, Policy};
use crate::Digest;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The plan file format.
    pub version: u32,
    pub policy: Policy,
    /// Nodes in the cluster snapshot.
    pub nodes: usize,
    pub images: Vec<ImagePlan>,
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImagePlan {
    pub image: String,
    pub rollouts: Vec<RolloutSummary>,
    /// Sum of the image's layer sizes, when the holdings list them.
    pub size_bytes: Option<u64>,
    pub eligible: usize,
    /// How many of the ranked nodes to warm: `ceil(headroom × replicas)`, every eligible node
    /// for a DaemonSet, never more than are eligible.
    pub budget: usize,
    /// The nodes to warm first, then more up to the policy's list limit.
    pub ranked: Vec<RankedNode>,
    pub ineligible_total: usize,
    /// Ineligible nodes by kind of reason (`insufficient nvidia.com/gpu`), complete.
    pub ineligible_counts: BTreeMap<String, usize>,
    /// Ineligible nodes with the full reason, by name, up to the policy's list limit.
    pub ineligible: Vec<Ineligible>,
}

impl ImagePlan {
    /// The nodes to warm, in rank order.
    pub fn warm(&self) -> impl Iterator<Item = &RankedNode> {
        self.ranked.iter().filter(|n| n.wave.is_some())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutSummary {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    /// Pods to place (a DaemonSet: its eligible nodes).
    pub replicas: u32,
    pub eligible: usize,
    /// The most pods that found no node in any simulation run.
    pub unplaced: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankedNode {
    pub rank: u32,
    pub node: String,
    pub region: String,
    pub zone: String,
    /// Score points (the scheduler's, plus pool order and the cache bonus) before the rollout.
    pub score: f64,
    /// Share of simulation runs that put at least one pod of the image here.
    pub likelihood: f64,
    /// Bytes of the image the node lacks, when holdings are known.
    pub missing_bytes: Option<u64>,
    /// `Some(0)`: fetches over the WAN first; `Some(1)`: fetches from wave-0 peers; `None`: not
    /// warmed.
    pub wave: Option<u32>,
    pub reasons: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ineligible {
    pub node: String,
    /// The reason without node-specific detail, as in `ineligible_counts`.
    pub kind: String,
    pub reason: String,
}

/// One image's share of the simulation, gathered over the rollouts that use it.
#[derive(Default)]
struct Acc<'a> {
    rollouts: Vec<RolloutSummary>,
    /// Node → (runs with a pod, best key, first rollout where eligible).
    nodes: BTreeMap<u32, (u64, i64, usize)>,
    daemonset_nodes: BTreeSet<u32>,
    replicas: u64,
    excluded: Option<Vec<(u32, Exclusion<'a>)>>,
}

impl<'a> Acc<'a> {
    fn merge(&mut self, index: usize, rollout: &Rollout, out: &Outcome<'a>) {
        let daemonset = rollout.kind == Kind::DaemonSet;
        for (c, hits) in out.candidates.iter().zip(&out.hits) {
            let e = self.nodes.entry(c.node).or_insert((0, c.key, index));
            e.0 |= hits;
            e.1 = e.1.max(c.key);
            if daemonset && *hits != 0 {
                self.daemonset_nodes.insert(c.node);
            }
        }
        if !daemonset {
            self.replicas += u64::from(rollout.replicas);
        }
        self.excluded.get_or_insert_with(|| out.excluded.clone());
        let replicas = if daemonset { out.candidates.len() as u32 } else { rollout.replicas };
        self.rollouts.push(RolloutSummary {
            kind: rollout.kind,
            namespace: rollout.namespace.clone(),
            name: rollout.name.clone(),
            replicas,
            eligible: out.candidates.len(),
            unplaced: out.unplaced,
        });
    }
}

pub(crate) fn build(input: &PlanInput, policy: &Policy) -> Plan {
    let nodes = &input.cluster.nodes;
    let mut images: Vec<(&str, usize)> = Vec::new(); // (image, last rollout using it)
    for (ri, r) in input.rollouts.iter().enumerate() {
        for image in &r.images {
            match images.iter_mut().find(|(i, _)| *i == image.as_str()) {
                Some(slot) => slot.1 = ri,
                None => images.push((image.as_str(), ri)),
            }
        }
    }
    let mut engine = Engine::new(nodes, &input.rollouts, policy);
    let mut accs: Vec<Acc> = images.iter().map(|_| Acc::default()).collect();
    let mut done: Vec<Option<ImagePlan>> = images.iter().map(|_| None).collect();
    let held = held(input);
    for (ri, rollout) in input.rollouts.iter().enumerate() {
        let bonus = cache_bonus(input, &held, rollout, policy);
        let out = engine.place(ri, rollout, &|n| bonus.get(n as usize).copied().unwrap_or(0));
        for image in &rollout.images {
            let Some(ii) = images.iter().position(|(i, _)| *i == image.as_str()) else { continue };
            accs[ii].merge(ri, rollout, &out);
            if images[ii].1 == ri {
                done[ii] = Some(finish(input, policy, image, std::mem::take(&mut accs[ii])));
            }
        }
    }
    let mut notes = input.cluster.notes.clone();
    notes.extend(input.notes.iter().cloned());
    Plan { version: 1, policy: policy.clone(), nodes: nodes.len(), images: done.into_iter().flatten().collect(), notes }
}

/// The nodes of the holdings, as node indices, with what they hold.
type Held<'a> = Vec<(usize, &'a BTreeSet<Digest>)>;

fn held(input: &PlanInput) -> Held<'_> {
    let nodes = &input.cluster.nodes;
    let Some(held) = &input.holdings.nodes else { return Vec::new() };
    held.iter().filter_map(|(name, blobs)| nodes.binary_search_by(|n| n.name.as_str().cmp(name)).ok().map(|i| (i, blobs))).collect()
}

/// Cache bonus per node for a rollout, in thousandths of a point: the cached share of the bytes
/// of all its images, scaled by the policy's cache weight. Empty when nothing is known.
fn cache_bonus(input: &PlanInput, held: &Held, rollout: &Rollout, policy: &Policy) -> Vec<i64> {
    if held.is_empty() || policy.cache_weight == 0 {
        return Vec::new();
    }
    let layers: BTreeMap<Digest, u64> =
        rollout.images.iter().filter_map(|i| input.holdings.images.get(i)).flatten().map(|l| (l.digest, l.size)).collect();
    let total: u128 = layers.values().map(|s| u128::from(*s)).sum();
    if total == 0 {
        return Vec::new();
    }
    let mut bonus = vec![0; input.cluster.nodes.len()];
    for (i, blobs) in held {
        // Walk the smaller side: a store may hold many blobs, an image has a few layers.
        let cached: u128 = if blobs.len() < layers.len() {
            blobs.iter().filter_map(|d| layers.get(d)).map(|s| u128::from(*s)).sum()
        } else {
            layers.iter().filter(|(d, _)| blobs.contains(d)).map(|(_, s)| u128::from(*s)).sum()
        };
        bonus[*i] = (cached * u128::from(policy.cache_weight) / total) as i64;
    }
    bonus
}

fn finish(input: &PlanInput, policy: &Policy, image: &str, acc: Acc) -> ImagePlan {
    let nodes = &input.cluster.nodes;
    let mut ranked: Vec<(u32, u64, i64, usize)> = acc.nodes.iter().map(|(n, (hits, key, ri))| (*n, *hits, *key, *ri)).collect();
    ranked.sort_by(|a, b| b.1.count_ones().cmp(&a.1.count_ones()).then(b.2.cmp(&a.2)).then(a.0.cmp(&b.0)));
    let eligible = ranked.len();
    let budget = (acc.daemonset_nodes.len() as u64 + policy.budget(acc.replicas)).min(eligible as u64) as usize;
    let listed = budget.max(policy.list_limit.min(eligible));
    let mut seeds: BTreeMap<&str, u32> = BTreeMap::new();
    let ranked = ranked[..listed]
        .iter()
        .enumerate()
        .map(|(i, &(n, hits, key, ri))| {
            let node = &nodes[n as usize];
            let wave = (i < budget).then(|| {
                let seen = seeds.entry(node.region()).or_insert(0);
                *seen += 1;
                u32::from(*seen > policy.seeds_per_region)
            });
            RankedNode {
                rank: i as u32 + 1,
                node: node.name.clone(),
                region: node.region().to_string(),
                zone: node.zone().to_string(),
                score: key as f64 / POINT as f64,
                likelihood: f64::from(hits.count_ones()) / f64::from(policy.runs),
                missing_bytes: input.holdings.missing(&node.name, image).map(|m| m.bytes),
                wave,
                reasons: reasons(input, policy, image, node, &input.rollouts[ri]),
            }
        })
        .collect();
    let excluded: Vec<(u32, Exclusion)> =
        acc.excluded.unwrap_or_default().into_iter().filter(|(n, _)| !acc.nodes.contains_key(n)).collect();
    let mut kinds: BTreeMap<Exclusion, usize> = BTreeMap::new();
    for (_, e) in &excluded {
        *kinds.entry(e.kind()).or_default() += 1;
    }
    let mut ineligible_counts = BTreeMap::new();
    for (kind, count) in kinds {
        *ineligible_counts.entry(kind.kind_label()).or_default() += count;
    }
    let ineligible = excluded
        .iter()
        .take(policy.list_limit)
        .map(|(n, e)| Ineligible { node: nodes[*n as usize].name.clone(), kind: e.kind().kind_label(), reason: e.to_string() })
        .collect();
    ImagePlan {
        image: image.to_string(),
        rollouts: acc.rollouts,
        size_bytes: input.holdings.image_size(image),
        eligible,
        budget,
        ranked,
        ineligible_total: excluded.len(),
        ineligible_counts,
        ineligible,
    }
}

/// Why a node ranks where it does, in a few words each.
fn reasons(input: &PlanInput, policy: &Policy, image: &str, node: &Node, rollout: &Rollout) -> Vec<String> {
    let mut out = Vec::new();
    if rollout.kind == Kind::DaemonSet {
        out.push("DaemonSet".to_string());
    }
    if let Some(product) = node.label("nvidia.com/gpu.product") {
        out.push(match node.label("nvidia.com/gpu.memory") {
            Some(mib) => format!("{product} {mib} MiB"),
            None => product.to_string(),
        });
    }
    for name in rollout.pod.requests.keys().filter(|n| is_gpu_like(n)) {
        let alloc = node.allocatable.get(name).map_or(0, |q| q.units());
        let free = alloc - node.requested.get(name).map_or(0, |q| q.units());
        out.push(match name.as_str() {
            "nvidia.com/gpu" => format!("{free}/{alloc} GPUs free"),
            other => format!("{free}/{alloc} {} free", other.rsplit('/').next().unwrap_or(other)),
        });
    }
    if !rollout.pod.required.is_empty() {
        out.push("required affinity matched".to_string());
    }
    let preferred: u32 = rollout.pod.preferred.iter().filter(|(_, t)| t.matches(node)).map(|(w, _)| w).sum();
    if preferred > 0 {
        out.push(format!("preferred affinity +{preferred}"));
    }
    if filter::preferred_taints(node, &rollout.pod) > 0 {
        out.push("PreferNoSchedule taint".to_string());
    }
    if !policy.pools.is_empty() {
        out.push(match policy.pools.iter().position(|p| p.matches(node)) {
            Some(i) => format!("pool {} ({})", i + 1, policy.pools[i]),
            None => "in no pool".to_string(),
        });
    }
    if let Some(m) = input.holdings.missing(&node.name, image) {
        out.push(format!("{}% cached", m.cached_permille() / 10));
    }
    match (node.region(), node.zone()) {
        ("", "") => {}
        (region, "") => out.push(format!("region {region}")),
        (region, zone) => out.push(format!("region {region}/{zone}")),
    }
    out
}

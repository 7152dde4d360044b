//! The cluster as `kubectl get nodes -o json` and `kubectl get pods -A -o json` show it: each
//! node's labels, taints, readiness, cordon, allocatable resources, and what the pods bound to it
//! already request.
//!
//! Invariants: nodes are kept sorted by name (so the order of the input never shows in a plan);
//! a name appears once; only pods that hold resources count (bound to a node, not Succeeded or
//! Failed), each with the scheduler's effective request (see [`super::rollout::pod_requests`]).

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use super::doc::{documents, items, Ctx};
use super::rollout::pod_requests;
use super::Resources;
use crate::Error;

/// What a taint does to pods that do not tolerate it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Effect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

impl Effect {
    pub(crate) fn parse(s: &str) -> Option<Effect> {
        match s {
            "NoSchedule" => Some(Effect::NoSchedule),
            "PreferNoSchedule" => Some(Effect::PreferNoSchedule),
            "NoExecute" => Some(Effect::NoExecute),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: Effect,
}

/// `key=value:Effect`, or `key:Effect` without a value, as `kubectl taint` writes it.
impl fmt::Display for Taint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{:?}", self.key, self.effect)
        } else {
            write!(f, "{}={}:{:?}", self.key, self.value, self.effect)
        }
    }
}

/// One node of the cluster.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// `status.allocatable`: what pods may request in total (GPUs, MIG slices, shared GPU memory
    /// and every other extended resource included).
    pub allocatable: Resources,
    /// What the pods already bound here request; filled by [`Cluster::new`].
    pub requested: Resources,
    /// How many such pods there are (checked against `allocatable["pods"]`).
    pub pods: u32,
    /// The `Ready` condition is `True`.
    pub ready: bool,
    /// `spec.unschedulable`: cordoned.
    pub unschedulable: bool,
}

impl Node {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    /// `topology.kubernetes.io/region`, `""` when the node has none.
    pub fn region(&self) -> &str {
        self.label("topology.kubernetes.io/region").unwrap_or("")
    }

    pub fn zone(&self) -> &str {
        self.label("topology.kubernetes.io/zone").unwrap_or("")
    }
}

/// A pod that holds resources on a node.
#[derive(Clone, Debug)]
pub struct PodUsage {
    /// `namespace/name`, for messages.
    pub name: String,
    pub node: String,
    pub requests: Resources,
}

/// Nodes with what is already requested on them, sorted by name.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    pub nodes: Vec<Node>,
    /// Things worth telling the operator (pods bound to nodes not in the node list).
    pub notes: Vec<String>,
}

impl Cluster {
    /// Adds each pod's requests to its node. Pods bound to a node missing from `nodes` are
    /// counted in a note, not an error: node and pod lists are never taken at the same instant.
    pub fn new(mut nodes: Vec<Node>, pods: &[PodUsage]) -> Result<Cluster, Error> {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = nodes.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(Error::BadDocument { object: format!("node {}", w[0].name), why: "listed twice".to_string() });
        }
        let mut orphans = 0usize;
        for pod in pods {
            let Ok(i) = nodes.binary_search_by(|n| n.name.as_str().cmp(&pod.node)) else {
                orphans += 1;
                continue;
            };
            let node = &mut nodes[i];
            node.pods += 1;
            for (name, q) in &pod.requests {
                let slot = node.requested.entry(name.clone()).or_default();
                *slot = super::Quantity::from_milli(slot.milli() + q.milli());
            }
        }
        let mut notes = Vec::new();
        if orphans > 0 {
            notes.push(format!("{orphans} pods are bound to nodes missing from the node list; they were ignored"));
        }
        Ok(Cluster { nodes, notes })
    }
}

fn item_ctx(source: &str, index: Option<usize>, name: Option<&str>) -> Ctx {
    let mut object = match index {
        Some(i) => format!("{source} item {i}"),
        None => source.to_string(),
    };
    if let Some(name) = name {
        object.push_str(&format!(" ({name})"));
    }
    Ctx::new(object)
}

/// Parses `kubectl get nodes -o json` (a `List`, or one `Node`; YAML is read too). `source`
/// names the input in messages (`nodes.json item 7: metadata.name missing`; items count from 0,
/// like `.items[7]`).
pub fn parse_nodes(source: &str, text: &str) -> Result<Vec<Node>, Error> {
    let mut nodes = Vec::new();
    for (_, doc) in documents(source, text)? {
        for (index, item) in items(&Ctx::new(source), &doc)? {
            nodes.push(parse_node(source, index, item)?);
        }
    }
    Ok(nodes)
}

fn parse_node(source: &str, index: Option<usize>, item: &Value) -> Result<Node, Error> {
    let ctx = item_ctx(source, index, None);
    let meta = ctx.map(item.get("metadata"), "metadata")?.ok_or_else(|| ctx.missing("metadata.name"))?;
    let name = ctx.required_str(meta.get("name"), "metadata.name")?;
    let ctx = item_ctx(source, index, Some(name));
    if let Some(kind) = ctx.str(item.get("kind"), "kind")? {
        if kind != "Node" {
            return Err(ctx.err("kind", format!("expected Node, got {kind:?}")));
        }
    }
    let labels = ctx.string_map(meta.get("labels"), "metadata.labels")?;
    let spec = ctx.map(item.get("spec"), "spec")?;
    let unschedulable = ctx.bool(spec.and_then(|s| s.get("unschedulable")), "spec.unschedulable")?.unwrap_or(false);
    let mut taints = Vec::new();
    for (i, t) in ctx.list(spec.and_then(|s| s.get("taints")), "spec.taints")?.iter().enumerate() {
        let field = format!("spec.taints[{i}]");
        let key = ctx.required_str(t.get("key"), &format!("{field}.key"))?;
        let value = ctx.str(t.get("value"), &format!("{field}.value"))?.unwrap_or("");
        let effect = ctx.required_str(t.get("effect"), &format!("{field}.effect"))?;
        let effect = Effect::parse(effect).ok_or_else(|| {
            ctx.err(&format!("{field}.effect"), format!("{effect:?} is not one of NoSchedule, PreferNoSchedule, NoExecute"))
        })?;
        taints.push(Taint { key: key.to_string(), value: value.to_string(), effect });
    }
    let status = ctx.map(item.get("status"), "status")?.ok_or_else(|| ctx.missing("status.allocatable"))?;
    let allocatable = ctx.quantities(status.get("allocatable"), "status.allocatable")?;
    if allocatable.is_empty() {
        return Err(ctx.missing("status.allocatable"));
    }
    let mut ready = false;
    for (i, c) in ctx.list(status.get("conditions"), "status.conditions")?.iter().enumerate() {
        if ctx.str(c.get("type"), &format!("status.conditions[{i}].type"))? == Some("Ready") {
            ready = ctx.str(c.get("status"), &format!("status.conditions[{i}].status"))? == Some("True");
        }
    }
    Ok(Node { name: name.to_string(), labels, taints, allocatable, requested: Resources::new(), pods: 0, ready, unschedulable })
}

/// Parses `kubectl get pods -A -o json` into what the pods that hold resources request: bound to
/// a node (`spec.nodeName`) and not `Succeeded` or `Failed`.
pub fn parse_pods(source: &str, text: &str) -> Result<Vec<PodUsage>, Error> {
    let mut pods = Vec::new();
    for (_, doc) in documents(source, text)? {
        for (index, item) in items(&Ctx::new(source), &doc)? {
            let ctx = item_ctx(source, index, None);
            let meta = ctx.map(item.get("metadata"), "metadata")?.ok_or_else(|| ctx.missing("metadata.name"))?;
            let name = ctx.required_str(meta.get("name"), "metadata.name")?;
            let namespace = ctx.str(meta.get("namespace"), "metadata.namespace")?.unwrap_or("default");
            let full = format!("{namespace}/{name}");
            let ctx = item_ctx(source, index, Some(&full));
            let phase = ctx.str(item.get("status").and_then(|s| s.get("phase")), "status.phase")?;
            if matches!(phase, Some("Succeeded" | "Failed")) {
                continue;
            }
            let spec = ctx.map(item.get("spec"), "spec")?.ok_or_else(|| ctx.missing("spec.containers"))?;
            let Some(node) = ctx.str(spec.get("nodeName"), "spec.nodeName")?.filter(|n| !n.is_empty()) else {
                continue;
            };
            let requests = pod_requests(&ctx, spec, "spec")?;
            pods.push(PodUsage { name: full, node: node.to_string(), requests });
        }
    }
    Ok(pods)
}

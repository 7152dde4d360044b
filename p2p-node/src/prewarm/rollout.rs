//! The rollout: Deployment, StatefulSet, Job and DaemonSet manifests (YAML or JSON, several per
//! file, `kind: List` too) read into what placement needs: images, replicas, the pod's effective
//! requests, and its node constraints.
//!
//! Invariants: other kinds are skipped with a note, never an error; a field that is present but
//! wrong is an error naming the document, the object and the field path; requests follow the
//! scheduler (containers summed, init containers as a maximum, sidecars added, limits standing
//! in for absent requests, `spec.overhead` added).

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

use super::doc::{documents, items, kind_of, Ctx};
use super::selector::{label_selector_matches, parse_term, parse_tolerations, Term, Toleration};
use super::{Quantity, Resources};
use crate::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    Deployment,
    StatefulSet,
    Job,
    DaemonSet,
}

/// What the scheduler does when a spread constraint cannot be met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsatisfiable {
    DoNotSchedule,
    ScheduleAnyway,
}

/// A `topologySpreadConstraint` over the rollout's own pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spread {
    pub max_skew: u32,
    pub topology_key: String,
    pub when_unsatisfiable: Unsatisfiable,
}

/// Everything about one pod of the rollout that decides where it can go.
#[derive(Clone, Debug, Default)]
pub struct PodTemplate {
    pub labels: BTreeMap<String, String>,
    /// The scheduler's effective request, per resource (only resources above zero).
    pub requests: Resources,
    pub node_selector: BTreeMap<String, String>,
    /// Required node affinity: terms ORed. Empty: no requirement.
    pub required: Vec<Term>,
    /// Preferred node affinity: (weight 1..=100, term).
    pub preferred: Vec<(u32, Term)>,
    pub tolerations: Vec<Toleration>,
    pub spread: Vec<Spread>,
    /// Topology keys of required pod anti-affinity terms that select the pod's own labels: at
    /// most one pod of the rollout per domain of each.
    pub anti_affinity: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Rollout {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    /// Where it was read from (`rollout.yaml document 3`), for messages.
    pub source: String,
    /// Container and init container images, in order, without repeats.
    pub images: Vec<String>,
    /// Pods to place: `spec.replicas` (default 1), or a Job's parallelism capped by its
    /// completions. Unused for a DaemonSet (one pod per eligible node).
    pub replicas: u32,
    pub pod: PodTemplate,
}

impl fmt::Display for Rollout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// The rollouts of one file, in file order, and the objects skipped.
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    pub rollouts: Vec<Rollout>,
    pub skipped: Vec<String>,
}

/// Parses manifests; `source` names the file in messages (`rollout.yaml document 3 (Deployment
/// ml/llm-serve): spec.replicas: expected an integer, got "three"`). Documents count from 1.
pub fn parse_manifests(source: &str, text: &str) -> Result<Manifests, Error> {
    let mut out = Manifests::default();
    for (n, doc) in documents(source, text)? {
        let doc_name = format!("{source} document {n}");
        for (index, item) in items(&Ctx::new(doc_name.clone()), &doc)? {
            let at = match index {
                Some(i) => format!("{doc_name} item {i}"),
                None => doc_name.clone(),
            };
            if !item.is_object() {
                return Err(Error::BadDocument { object: at, why: format!("expected a mapping, got {}", kind_of(item)) });
            }
            let ctx = Ctx::new(at.clone());
            let kind_name = ctx.required_str(item.get("kind"), "kind")?;
            let meta = ctx.map(item.get("metadata"), "metadata")?;
            let namespace = ctx.str(meta.and_then(|m| m.get("namespace")), "metadata.namespace")?.unwrap_or("default");
            let name = ctx.str(meta.and_then(|m| m.get("name")), "metadata.name")?.unwrap_or("");
            let kind = match kind_name {
                "Deployment" => Kind::Deployment,
                "StatefulSet" => Kind::StatefulSet,
                "Job" => Kind::Job,
                "DaemonSet" => Kind::DaemonSet,
                other => {
                    out.skipped.push(format!("{at} ({other} {namespace}/{name}): kind {other} is not a rollout; skipped"));
                    continue;
                }
            };
            if name.is_empty() {
                return Err(Ctx::new(format!("{at} ({kind_name})")).missing("metadata.name"));
            }
            let ctx = Ctx::new(format!("{at} ({kind_name} {namespace}/{name})"));
            out.rollouts.push(parse_rollout(&ctx, item, kind, namespace, name, &at)?);
        }
    }
    Ok(out)
}

fn parse_rollout(ctx: &Ctx, item: &Value, kind: Kind, namespace: &str, name: &str, source: &str) -> Result<Rollout, Error> {
    let spec = ctx.map(item.get("spec"), "spec")?.ok_or_else(|| ctx.missing("spec"))?;
    let count = |field: &str| -> Result<Option<u32>, Error> {
        match ctx.int(spec.get(field), &format!("spec.{field}"))? {
            Some(n) => u32::try_from(n).map(Some).map_err(|_| ctx.err(&format!("spec.{field}"), format!("{n} is out of range"))),
            None => Ok(None),
        }
    };
    let replicas = match kind {
        Kind::Deployment | Kind::StatefulSet => count("replicas")?.unwrap_or(1),
        Kind::Job => {
            let parallelism = count("parallelism")?.unwrap_or(1);
            count("completions")?.map_or(parallelism, |c| c.min(parallelism))
        }
        Kind::DaemonSet => 0,
    };
    let template = ctx.map(spec.get("template"), "spec.template")?.ok_or_else(|| ctx.missing("spec.template"))?;
    let tmeta = ctx.map(template.get("metadata"), "spec.template.metadata")?;
    let labels = ctx.string_map(tmeta.and_then(|m| m.get("labels")), "spec.template.metadata.labels")?;
    let pspec = ctx.map(template.get("spec"), "spec.template.spec")?.ok_or_else(|| ctx.missing("spec.template.spec.containers"))?;
    let base = "spec.template.spec";
    let mut images = Vec::new();
    for part in ["containers", "initContainers"] {
        for (i, c) in ctx.list(pspec.get(part), &format!("{base}.{part}"))?.iter().enumerate() {
            let image = ctx.required_str(c.get("image"), &format!("{base}.{part}[{i}].image"))?;
            if !images.iter().any(|x| x == image) {
                images.push(image.to_string());
            }
        }
    }
    let requests = pod_requests(ctx, pspec, base)?;
    let node_selector = ctx.string_map(pspec.get("nodeSelector"), &format!("{base}.nodeSelector"))?;
    let tolerations = parse_tolerations(ctx, pspec.get("tolerations"), &format!("{base}.tolerations"))?;
    let mut pod = PodTemplate { labels, requests, node_selector, tolerations, ..PodTemplate::default() };
    parse_affinity(ctx, pspec, base, &mut pod)?;
    for (i, c) in ctx.list(pspec.get("topologySpreadConstraints"), &format!("{base}.topologySpreadConstraints"))?.iter().enumerate() {
        let at = |f: &str| format!("{base}.topologySpreadConstraints[{i}].{f}");
        let max_skew = ctx.int(c.get("maxSkew"), &at("maxSkew"))?.ok_or_else(|| ctx.missing(&at("maxSkew")))?;
        let max_skew = u32::try_from(max_skew)
            .ok()
            .filter(|s| *s >= 1)
            .ok_or_else(|| ctx.err(&at("maxSkew"), format!("{max_skew} is not a positive integer")))?;
        let topology_key = ctx.required_str(c.get("topologyKey"), &at("topologyKey"))?.to_string();
        let when_unsatisfiable = match ctx.required_str(c.get("whenUnsatisfiable"), &at("whenUnsatisfiable"))? {
            "DoNotSchedule" => Unsatisfiable::DoNotSchedule,
            "ScheduleAnyway" => Unsatisfiable::ScheduleAnyway,
            other => return Err(ctx.err(&at("whenUnsatisfiable"), format!("{other:?} is not one of DoNotSchedule, ScheduleAnyway"))),
        };
        pod.spread.push(Spread { max_skew, topology_key, when_unsatisfiable });
    }
    Ok(Rollout { kind, namespace: namespace.to_string(), name: name.to_string(), source: source.to_string(), images, replicas, pod })
}

fn parse_affinity(ctx: &Ctx, pspec: &Map<String, Value>, base: &str, pod: &mut PodTemplate) -> Result<(), Error> {
    let field = format!("{base}.affinity");
    let Some(affinity) = ctx.map(pspec.get("affinity"), &field)? else { return Ok(()) };
    if let Some(na) = ctx.map(affinity.get("nodeAffinity"), &format!("{field}.nodeAffinity"))? {
        let field = format!("{field}.nodeAffinity");
        let req_field = format!("{field}.requiredDuringSchedulingIgnoredDuringExecution");
        if let Some(req) = ctx.map(na.get("requiredDuringSchedulingIgnoredDuringExecution"), &req_field)? {
            let terms = ctx.list(req.get("nodeSelectorTerms"), &format!("{req_field}.nodeSelectorTerms"))?;
            if terms.is_empty() {
                return Err(ctx.missing(&format!("{req_field}.nodeSelectorTerms")));
            }
            for (i, t) in terms.iter().enumerate() {
                let at = format!("{req_field}.nodeSelectorTerms[{i}]");
                let term = parse_term(ctx, t, &at)?;
                if term.requirements.is_empty() {
                    return Err(ctx.err(&at, "an empty term matches no node"));
                }
                pod.required.push(term);
            }
        }
        let pref_field = format!("{field}.preferredDuringSchedulingIgnoredDuringExecution");
        for (i, p) in ctx.list(na.get("preferredDuringSchedulingIgnoredDuringExecution"), &pref_field)?.iter().enumerate() {
            let at = format!("{pref_field}[{i}]");
            let weight = ctx.int(p.get("weight"), &format!("{at}.weight"))?.ok_or_else(|| ctx.missing(&format!("{at}.weight")))?;
            let weight = u32::try_from(weight)
                .ok()
                .filter(|w| (1..=100).contains(w))
                .ok_or_else(|| ctx.err(&format!("{at}.weight"), format!("{weight} is not in 1..100")))?;
            let pref = p.get("preference").ok_or_else(|| ctx.missing(&format!("{at}.preference")))?;
            pod.preferred.push((weight, parse_term(ctx, pref, &format!("{at}.preference"))?));
        }
    }
    if let Some(anti) = ctx.map(affinity.get("podAntiAffinity"), &format!("{field}.podAntiAffinity"))? {
        let req_field = format!("{field}.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution");
        for (i, t) in ctx.list(anti.get("requiredDuringSchedulingIgnoredDuringExecution"), &req_field)?.iter().enumerate() {
            let at = format!("{req_field}[{i}]");
            let key = ctx.required_str(t.get("topologyKey"), &format!("{at}.topologyKey"))?;
            let selects_self = match t.get("labelSelector") {
                Some(sel) if !sel.is_null() => label_selector_matches(ctx, sel, &format!("{at}.labelSelector"), &pod.labels)?,
                _ => false,
            };
            if selects_self && !pod.anti_affinity.iter().any(|k| k == key) {
                pod.anti_affinity.push(key.to_string());
            }
        }
    }
    Ok(())
}

/// The scheduler's effective request of a pod spec at `base` (`spec` or
/// `spec.template.spec`): max(sum of containers and sidecars, each init container plus the
/// sidecars started before it), plus `overhead`. A resource in `limits` but not in `requests`
/// is requested at its limit, as the API server defaults it.
pub(crate) fn pod_requests(ctx: &Ctx, pspec: &Map<String, Value>, base: &str) -> Result<Resources, Error> {
    let containers = ctx.list(pspec.get("containers"), &format!("{base}.containers"))?;
    if containers.is_empty() {
        return Err(ctx.missing(&format!("{base}.containers")));
    }
    let mut sum = Resources::new();
    for (i, c) in containers.iter().enumerate() {
        add(&mut sum, &container_requests(ctx, c, &format!("{base}.containers[{i}]"))?);
    }
    let mut sidecars = Resources::new();
    let mut init_max = Resources::new();
    for (i, c) in ctx.list(pspec.get("initContainers"), &format!("{base}.initContainers"))?.iter().enumerate() {
        let field = format!("{base}.initContainers[{i}]");
        let req = container_requests(ctx, c, &field)?;
        if ctx.str(c.get("restartPolicy"), &format!("{field}.restartPolicy"))? == Some("Always") {
            add(&mut sidecars, &req);
            add(&mut sum, &req);
            max_into(&mut init_max, &sidecars);
        } else {
            let mut running = sidecars.clone();
            add(&mut running, &req);
            max_into(&mut init_max, &running);
        }
    }
    max_into(&mut sum, &init_max);
    add(&mut sum, &ctx.quantities(pspec.get("overhead"), &format!("{base}.overhead"))?);
    sum.retain(|_, q| q.milli() > 0);
    Ok(sum)
}

fn container_requests(ctx: &Ctx, c: &Value, field: &str) -> Result<Resources, Error> {
    if !c.is_object() {
        return Err(ctx.err(field, format!("expected a mapping, got {}", kind_of(c))));
    }
    let res = ctx.map(c.get("resources"), &format!("{field}.resources"))?;
    let mut requests = ctx.quantities(res.and_then(|r| r.get("requests")), &format!("{field}.resources.requests"))?;
    for (name, limit) in ctx.quantities(res.and_then(|r| r.get("limits")), &format!("{field}.resources.limits"))? {
        requests.entry(name).or_insert(limit);
    }
    Ok(requests)
}

fn add(into: &mut Resources, more: &Resources) {
    for (name, q) in more {
        let slot = into.entry(name.clone()).or_default();
        *slot = Quantity::from_milli(slot.milli() + q.milli());
    }
}

fn max_into(into: &mut Resources, other: &Resources) {
    for (name, q) in other {
        let slot = into.entry(name.clone()).or_default();
        *slot = (*slot).max(*q);
    }
}

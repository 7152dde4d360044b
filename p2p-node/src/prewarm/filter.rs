//! Which nodes a rollout's pod may go to, and why not, as the scheduler's filters decide:
//! readiness, cordon, `NoSchedule`/`NoExecute` taints against tolerations, `nodeSelector`,
//! required node affinity, topology labels for hard spread constraints, and resource fit.
//!
//! Invariants: a node is refused for the first filter it fails, in the order above, and the
//! reason names the label, taint or resource (`insufficient nvidia.com/gpu (needs 2, 1 free)`).
//! DaemonSet pods get the tolerations the DaemonSet controller adds, so cordoned nodes stay
//! eligible for them. Nothing here looks at Ferry's cache.

use std::fmt;

use super::cluster::{Effect, Node, Taint};
use super::quantity::{human, Quantity};
use super::rollout::{PodTemplate, Unsatisfiable};
use super::selector::Requirement;

/// Why a node cannot take a pod of the rollout.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Exclusion<'a> {
    NotReady,
    Cordoned,
    Taint(&'a Taint),
    Selector { key: &'a str, want: &'a str, have: Option<&'a str> },
    Affinity { requirement: &'a Requirement, have: Option<&'a str>, terms: usize },
    EmptyAffinity,
    TopologyLabel { key: &'a str },
    NoResource { resource: &'a str },
    Insufficient { resource: &'a str, need: Quantity, free: Quantity },
}

impl<'a> Exclusion<'a> {
    /// The same reason without what varies from node to node, to count nodes by reason.
    pub fn kind(&self) -> Exclusion<'a> {
        match *self {
            Exclusion::Selector { key, want, .. } => Exclusion::Selector { key, want, have: None },
            Exclusion::Affinity { requirement, terms, .. } => Exclusion::Affinity { requirement, have: None, terms },
            Exclusion::Insufficient { resource, .. } => Exclusion::Insufficient { resource, need: Quantity::ZERO, free: Quantity::ZERO },
            ref other => other.clone(),
        }
    }

    /// The short form of [`Exclusion::kind`]: `insufficient nvidia.com/gpu`.
    pub fn kind_label(&self) -> String {
        match self {
            Exclusion::Selector { key, want, .. } => format!("node selector {key}={want}"),
            Exclusion::Affinity { requirement, terms: 1, .. } => format!("required affinity {requirement}"),
            Exclusion::Affinity { terms, .. } => format!("required affinity (none of {terms} terms)"),
            Exclusion::Insufficient { resource, .. } => format!("insufficient {resource}"),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for Exclusion<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = |have: &Option<&str>| match have {
            Some(v) => format!("label is {v}"),
            None => "label missing".to_string(),
        };
        match self {
            Exclusion::NotReady => write!(f, "not ready"),
            Exclusion::Cordoned => write!(f, "cordoned"),
            Exclusion::Taint(t) => write!(f, "untolerated taint {t}"),
            Exclusion::Selector { key, want, have } => write!(f, "node selector {key}={want}: {}", label(have)),
            Exclusion::Affinity { requirement, have, terms: 1 } => write!(f, "required affinity {requirement}: {}", label(have)),
            Exclusion::Affinity { requirement, have, terms } => {
                write!(f, "required affinity (none of {terms} terms; the first needs {requirement}: {})", label(have))
            }
            Exclusion::EmptyAffinity => write!(f, "required affinity has only empty terms, which match no node"),
            Exclusion::TopologyLabel { key } => write!(f, "no {key} label (needed by a DoNotSchedule spread constraint)"),
            Exclusion::NoResource { resource } => write!(f, "no {resource} on this node"),
            Exclusion::Insufficient { resource, need, free } => {
                write!(
                    f,
                    "insufficient {resource} (needs {}, {} free)",
                    human(resource, *need),
                    human(resource, (*free).max(Quantity::ZERO))
                )
            }
        }
    }
}

/// Taints the DaemonSet controller tolerates on its pods (key, effect).
const DAEMONSET_TOLERATES: [(&str, Effect); 6] = [
    ("node.kubernetes.io/not-ready", Effect::NoExecute),
    ("node.kubernetes.io/unreachable", Effect::NoExecute),
    ("node.kubernetes.io/disk-pressure", Effect::NoSchedule),
    ("node.kubernetes.io/memory-pressure", Effect::NoSchedule),
    ("node.kubernetes.io/pid-pressure", Effect::NoSchedule),
    ("node.kubernetes.io/unschedulable", Effect::NoSchedule),
];

fn tolerated(taint: &Taint, pod: &PodTemplate, daemonset: bool) -> bool {
    pod.tolerations.iter().any(|t| t.tolerates(taint))
        || (daemonset && DAEMONSET_TOLERATES.iter().any(|(k, e)| *k == taint.key && *e == taint.effect))
}

/// Taints with `PreferNoSchedule` the pod does not tolerate (a score, not a filter).
pub(crate) fn preferred_taints(node: &Node, pod: &PodTemplate) -> usize {
    node.taints.iter().filter(|t| t.effect == Effect::PreferNoSchedule && !pod.tolerations.iter().any(|x| x.tolerates(t))).count()
}

/// `nodeSelector` and required node affinity: the part of the filters that also decides which
/// topology domains a spread constraint counts.
pub(crate) fn check_selectors<'a>(node: &'a Node, pod: &'a PodTemplate) -> Result<(), Exclusion<'a>> {
    for (key, want) in &pod.node_selector {
        let have = node.label(key);
        if have != Some(want.as_str()) {
            return Err(Exclusion::Selector { key: key.as_str(), want: want.as_str(), have });
        }
    }
    if !pod.required.is_empty() && !pod.required.iter().any(|t| t.matches(node)) {
        let terms = pod.required.len();
        return Err(match pod.required.iter().find_map(|t| t.first_failure(node).or(t.requirements.first())) {
            Some(requirement) => {
                let have = if requirement.field { Some(node.name.as_str()) } else { node.label(&requirement.key) };
                Exclusion::Affinity { requirement, have, terms }
            }
            None => Exclusion::EmptyAffinity,
        });
    }
    Ok(())
}

/// Every filter but resource fit (which depends on what else was placed; see `simulate`).
pub(crate) fn check<'a>(node: &'a Node, pod: &'a PodTemplate, daemonset: bool) -> Result<(), Exclusion<'a>> {
    if !node.ready {
        return Err(Exclusion::NotReady);
    }
    if node.unschedulable && !daemonset {
        return Err(Exclusion::Cordoned);
    }
    let hard = |e: Effect| matches!(e, Effect::NoSchedule | Effect::NoExecute);
    if let Some(t) = node.taints.iter().find(|t| hard(t.effect) && !tolerated(t, pod, daemonset)) {
        return Err(Exclusion::Taint(t));
    }
    check_selectors(node, pod)?;
    for s in pod.spread.iter().filter(|s| s.when_unsatisfiable == Unsatisfiable::DoNotSchedule) {
        if node.label(&s.topology_key).is_none() {
            return Err(Exclusion::TopologyLabel { key: &s.topology_key });
        }
    }
    Ok(())
}

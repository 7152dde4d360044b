//! Node selector requirements, terms and tolerations, with the scheduler's matching rules; and
//! the label selectors that name node pools in a [`super::Policy`].
//!
//! Rules kept from Kubernetes: a term ANDs its requirements and an empty term matches nothing;
//! `NotIn` and `DoesNotExist` match a node without the label; `Gt`/`Lt` compare the label as an
//! integer and fail when it is not one; a toleration with an empty key and `Exists` tolerates
//! every taint; an empty effect matches every effect.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use super::cluster::{Effect, Node, Taint};
use super::doc::Ctx;
use crate::Error;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    Gt(i64),
    Lt(i64),
}

/// One `matchExpressions` (or `matchFields`, then `field` is set and the key is `metadata.name`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
    pub values: Vec<String>,
    pub field: bool,
}

impl Requirement {
    pub fn matches(&self, node: &Node) -> bool {
        let have = if self.field { Some(node.name.as_str()) } else { node.label(&self.key) };
        match (&self.op, have) {
            (Op::In, Some(v)) => self.values.iter().any(|x| x == v),
            (Op::NotIn, v) => v.is_none_or(|v| !self.values.iter().any(|x| x == v)),
            (Op::Exists, v) => v.is_some(),
            (Op::DoesNotExist, v) => v.is_none(),
            (Op::Gt(n), Some(v)) => v.parse::<i64>().is_ok_and(|v| v > *n),
            (Op::Lt(n), Some(v)) => v.parse::<i64>().is_ok_and(|v| v < *n),
            _ => false,
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.op {
            Op::In => write!(f, "{} In [{}]", self.key, self.values.join(", ")),
            Op::NotIn => write!(f, "{} NotIn [{}]", self.key, self.values.join(", ")),
            Op::Exists => write!(f, "{} Exists", self.key),
            Op::DoesNotExist => write!(f, "{} DoesNotExist", self.key),
            Op::Gt(n) => write!(f, "{} Gt {n}", self.key),
            Op::Lt(n) => write!(f, "{} Lt {n}", self.key),
        }
    }
}

/// A `nodeSelectorTerm`: its requirements ANDed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Term {
    pub requirements: Vec<Requirement>,
}

impl Term {
    pub fn matches(&self, node: &Node) -> bool {
        !self.requirements.is_empty() && self.requirements.iter().all(|r| r.matches(node))
    }

    /// The first requirement the node fails, if any.
    pub fn first_failure(&self, node: &Node) -> Option<&Requirement> {
        self.requirements.iter().find(|r| !r.matches(node))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TolerationOp {
    Equal,
    Exists,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toleration {
    pub key: String,
    pub op: TolerationOp,
    pub value: String,
    /// `None` tolerates every effect.
    pub effect: Option<Effect>,
}

impl Toleration {
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != taint.effect) {
            return false;
        }
        match self.op {
            TolerationOp::Exists => self.key.is_empty() || self.key == taint.key,
            TolerationOp::Equal => self.key == taint.key && self.value == taint.value,
        }
    }
}

/// Reads one `matchExpressions`/`matchFields` entry at `field`.
fn parse_requirement(ctx: &Ctx, v: &Value, field: &str, is_field: bool) -> Result<Requirement, Error> {
    let key = ctx.required_str(v.get("key"), &format!("{field}.key"))?;
    let op_name = ctx.required_str(v.get("operator"), &format!("{field}.operator"))?;
    let mut values = Vec::new();
    for (i, x) in ctx.list(v.get("values"), &format!("{field}.values"))?.iter().enumerate() {
        match x {
            Value::String(s) => values.push(s.clone()),
            Value::Number(n) => values.push(n.to_string()),
            other => return Err(ctx.err(&format!("{field}.values[{i}]"), format!("expected a string, got {other}"))),
        }
    }
    let int_value = |values: &[String]| -> Result<i64, Error> {
        match values {
            [one] => one.parse().map_err(|_| ctx.err(&format!("{field}.values"), format!("{op_name} needs an integer, got {one:?}"))),
            _ => Err(ctx.err(&format!("{field}.values"), format!("{op_name} needs exactly one value, got {}", values.len()))),
        }
    };
    let op = match op_name {
        "In" | "NotIn" if values.is_empty() => {
            return Err(ctx.err(&format!("{field}.values"), format!("{op_name} needs at least one value")))
        }
        "In" => Op::In,
        "NotIn" => Op::NotIn,
        "Exists" | "DoesNotExist" if !values.is_empty() => {
            return Err(ctx.err(&format!("{field}.values"), format!("{op_name} takes no values")));
        }
        "Exists" => Op::Exists,
        "DoesNotExist" => Op::DoesNotExist,
        "Gt" => Op::Gt(int_value(&values)?),
        "Lt" => Op::Lt(int_value(&values)?),
        other => {
            return Err(ctx.err(&format!("{field}.operator"), format!("{other:?} is not one of In, NotIn, Exists, DoesNotExist, Gt, Lt")));
        }
    };
    if matches!(op, Op::Gt(_) | Op::Lt(_)) {
        values.clear();
    }
    if is_field && key != "metadata.name" {
        return Err(ctx.err(&format!("{field}.key"), format!("matchFields supports only metadata.name, got {key:?}")));
    }
    Ok(Requirement { key: key.to_string(), op, values, field: is_field })
}

/// Reads a `nodeSelectorTerm` (or a preferred term's `preference`) at `field`.
pub(crate) fn parse_term(ctx: &Ctx, v: &Value, field: &str) -> Result<Term, Error> {
    ctx.map(Some(v), field)?;
    let mut requirements = Vec::new();
    for (part, is_field) in [("matchExpressions", false), ("matchFields", true)] {
        for (i, r) in ctx.list(v.get(part), &format!("{field}.{part}"))?.iter().enumerate() {
            requirements.push(parse_requirement(ctx, r, &format!("{field}.{part}[{i}]"), is_field)?);
        }
    }
    Ok(Term { requirements })
}

pub(crate) fn parse_tolerations(ctx: &Ctx, v: Option<&Value>, field: &str) -> Result<Vec<Toleration>, Error> {
    let mut out = Vec::new();
    for (i, t) in ctx.list(v, field)?.iter().enumerate() {
        let at = |f: &str| format!("{field}[{i}].{f}");
        let key = ctx.str(t.get("key"), &at("key"))?.unwrap_or("").to_string();
        let value = ctx.str(t.get("value"), &at("value"))?.unwrap_or("").to_string();
        let op = match ctx.str(t.get("operator"), &at("operator"))?.unwrap_or("Equal") {
            "Equal" => TolerationOp::Equal,
            "Exists" => TolerationOp::Exists,
            other => return Err(ctx.err(&at("operator"), format!("{other:?} is not one of Equal, Exists"))),
        };
        if op == TolerationOp::Exists && !value.is_empty() {
            return Err(ctx.err(&at("value"), "must be empty when operator is Exists"));
        }
        if op == TolerationOp::Equal && key.is_empty() {
            return Err(ctx.err(&at("key"), "an empty key needs operator Exists"));
        }
        let effect = match ctx.str(t.get("effect"), &at("effect"))?.unwrap_or("") {
            "" => None,
            e => Some(
                Effect::parse(e)
                    .ok_or_else(|| ctx.err(&at("effect"), format!("{e:?} is not one of NoSchedule, PreferNoSchedule, NoExecute")))?,
            ),
        };
        out.push(Toleration { key, op, value, effect });
    }
    Ok(out)
}

/// Whether a `labelSelector` (matchLabels + matchExpressions) selects `labels`; used to tell a
/// pod anti-affinity term that is about the rollout's own pods.
pub(crate) fn label_selector_matches(
    ctx: &Ctx,
    v: &Value,
    field: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<bool, Error> {
    let wanted = ctx.string_map(v.get("matchLabels"), &format!("{field}.matchLabels"))?;
    let mut ok = wanted.iter().all(|(k, v)| labels.get(k) == Some(v));
    for (i, r) in ctx.list(v.get("matchExpressions"), &format!("{field}.matchExpressions"))?.iter().enumerate() {
        let req = parse_requirement(ctx, r, &format!("{field}.matchExpressions[{i}]"), false)?;
        let have = labels.get(&req.key).map(String::as_str);
        ok &= match req.op {
            Op::In => have.is_some_and(|h| req.values.iter().any(|x| x == h)),
            Op::NotIn => have.is_none_or(|h| !req.values.iter().any(|x| x == h)),
            Op::Exists => have.is_some(),
            Op::DoesNotExist => have.is_none(),
            Op::Gt(_) | Op::Lt(_) => false,
        };
    }
    Ok(ok)
}

/// A node pool named by labels, written like `kubectl -l`: `pool=edge`, `tier!=spot`, `gpu`
/// (exists), `!spot` (absent), comma-separated and ANDed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelSelector {
    text: String,
    term: Term,
}

impl LabelSelector {
    pub fn matches(&self, node: &Node) -> bool {
        self.term.matches(node)
    }
}

impl FromStr for LabelSelector {
    type Err = Error;

    fn from_str(s: &str) -> Result<LabelSelector, Error> {
        let bad = |why: String| Error::BadPolicy { setting: format!("pool {s:?}"), why };
        let mut requirements = Vec::new();
        for part in s.split(',').map(str::trim) {
            let req = |key: &str, op: Op, values: Vec<String>| Requirement { key: key.trim().to_string(), op, values, field: false };
            let r = if let Some((k, v)) = part.split_once("!=") {
                req(k, Op::NotIn, vec![v.trim().to_string()])
            } else if let Some((k, v)) = part.split_once('=') {
                req(k, Op::In, vec![v.trim_start_matches('=').trim().to_string()])
            } else if let Some(k) = part.strip_prefix('!') {
                req(k, Op::DoesNotExist, vec![])
            } else {
                req(part, Op::Exists, vec![])
            };
            if r.key.is_empty() || r.key.contains(char::is_whitespace) {
                return Err(bad(format!("{part:?} is not key=value, key!=value, key or !key")));
            }
            requirements.push(r);
        }
        Ok(LabelSelector { text: s.trim().to_string(), term: Term { requirements } })
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl serde::Serialize for LabelSelector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for LabelSelector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<LabelSelector, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prewarm::Resources;

    fn node(labels: &[(&str, &str)]) -> Node {
        Node {
            name: "n1".into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            taints: vec![],
            allocatable: Resources::new(),
            requested: Resources::new(),
            pods: 0,
            ready: true,
            unschedulable: false,
        }
    }

    fn req(key: &str, op: Op, values: &[&str]) -> Requirement {
        Requirement { key: key.into(), op, values: values.iter().map(|v| v.to_string()).collect(), field: false }
    }

    #[test]
    fn operators_match_as_the_scheduler_does() {
        let n = node(&[("gpu", "a100"), ("mem", "81920"), ("odd", "lots")]);
        assert!(req("gpu", Op::In, &["h100", "a100"]).matches(&n));
        assert!(!req("gpu", Op::In, &["h100"]).matches(&n));
        assert!(!req("absent", Op::In, &["x"]).matches(&n));
        assert!(req("absent", Op::NotIn, &["x"]).matches(&n), "NotIn matches a missing label");
        assert!(!req("gpu", Op::NotIn, &["a100"]).matches(&n));
        assert!(req("gpu", Op::Exists, &[]).matches(&n));
        assert!(req("absent", Op::DoesNotExist, &[]).matches(&n));
        assert!(req("mem", Op::Gt(40000), &[]).matches(&n));
        assert!(!req("mem", Op::Lt(40000), &[]).matches(&n));
        assert!(!req("odd", Op::Gt(1), &[]).matches(&n), "Gt on a non-integer label fails");
        assert!(!req("absent", Op::Lt(1), &[]).matches(&n));
        let by_name = Requirement { key: "metadata.name".into(), op: Op::In, values: vec!["n1".into()], field: true };
        assert!(by_name.matches(&n));
        assert!(!Term::default().matches(&n), "an empty term matches nothing");
    }

    #[test]
    fn tolerations() {
        let taint = Taint { key: "dedicated".into(), value: "training".into(), effect: Effect::NoSchedule };
        let t = |key: &str, op, value: &str, effect| Toleration { key: key.into(), op, value: value.into(), effect };
        assert!(t("", TolerationOp::Exists, "", None).tolerates(&taint), "empty key with Exists tolerates all");
        assert!(t("dedicated", TolerationOp::Exists, "", Some(Effect::NoSchedule)).tolerates(&taint));
        assert!(t("dedicated", TolerationOp::Equal, "training", None).tolerates(&taint));
        assert!(!t("dedicated", TolerationOp::Equal, "serving", None).tolerates(&taint));
        assert!(!t("dedicated", TolerationOp::Exists, "", Some(Effect::NoExecute)).tolerates(&taint));
        assert_eq!(taint.to_string(), "dedicated=training:NoSchedule");
    }

    #[test]
    fn pool_selectors() {
        let edge: LabelSelector = "pool=edge, !spot".parse().expect("parse");
        assert!(edge.matches(&node(&[("pool", "edge")])));
        assert!(!edge.matches(&node(&[("pool", "edge"), ("spot", "true")])));
        assert!(!edge.matches(&node(&[("pool", "cloud")])));
        let not_cloud: LabelSelector = "pool!=cloud,gpu".parse().expect("parse");
        assert!(not_cloud.matches(&node(&[("gpu", "l4")])));
        assert!(!not_cloud.matches(&node(&[("gpu", "l4"), ("pool", "cloud")])));
        assert_eq!(edge.to_string(), "pool=edge, !spot");
        assert!("".parse::<LabelSelector>().is_err());
    }
}

//! What operators read about a node stays true to it: a node with the snapshotter and P2P on
//! exposes exactly the `ferry_*` metrics README's metrics table lists (name and type), and the
//! Grafana dashboard (`deploy/grafana/ferry-dashboard.json`) parses and queries only metrics the
//! node exposes.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use crate::harness::ferry::{FerryNode, FerryOptions};
use crate::harness::temp_dir;

const README: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));
const DASHBOARD: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/ferry-dashboard.json"));

/// A node with every part on: snapshotter, P2P, metrics.
async fn node_with_everything_on(work: &std::path::Path) -> FerryNode {
    let key = Command::new("bash").arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/make-cluster-key.sh")).output().expect("make key");
    assert!(key.status.success(), "make-cluster-key.sh failed");
    let psk = work.join("site.key");
    std::fs::write(&psk, key.stdout).expect("write key");
    // Nothing is pulled: the upstream is never contacted.
    let mut options = FerryOptions::upstream("registry.local", "http://127.0.0.1:9");
    options.extra_args = vec![
        "--snapshotter-socket".into(),
        work.join("snapshotter.sock").display().to_string(),
        "--p2p-listen".into(),
        "/ip4/127.0.0.1/tcp/0".into(),
        "--psk-file".into(),
        psk.display().to_string(),
        "--mdns".into(),
        "false".into(),
    ];
    FerryNode::start(options).await
}

/// Metric families of an exposition, by the name queries use (`_total` on counters), with their
/// type.
fn exposed_families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| {
            let name = if kind == "counter" { format!("{name}_total") } else { name.to_string() };
            (name, kind.to_string())
        })
        .collect()
}

/// Every series name a query may use: counters' `_total`, histograms' `_bucket`, `_sum`, `_count`.
fn queryable(families: &BTreeMap<String, String>) -> BTreeSet<String> {
    families
        .iter()
        .flat_map(|(name, kind)| match kind.as_str() {
            "histogram" => vec![format!("{name}_bucket"), format!("{name}_sum"), format!("{name}_count")],
            _ => vec![name.clone()],
        })
        .collect()
}

/// README's Operations → Metrics table: `| \`name\` | type | labels | meaning |` rows.
fn readme_metrics() -> BTreeMap<String, String> {
    let ops = README.split("\n## Operations\n").nth(1).expect("README has an `## Operations` section");
    let ops = ops.split("\n## ").next().unwrap_or(ops);
    let metrics = ops.split("\n### Metrics\n").nth(1).expect("README's Operations section has a `### Metrics` subsection");
    let metrics = metrics.split("\n### ").next().unwrap_or(metrics);
    metrics
        .lines()
        .filter(|l| l.starts_with("| `ferry_"))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            (cells[1].trim_matches('`').to_string(), cells[2].to_string())
        })
        .collect()
}

/// The `ferry_*` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("ferry_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Every `expr` of every panel (nested rows included), with the panel's title.
fn dashboard_queries(panel: &serde_json::Value, out: &mut Vec<(String, String)>) {
    let title = panel["title"].as_str().unwrap_or("?").to_string();
    for target in panel["targets"].as_array().into_iter().flatten() {
        if let Some(expr) = target["expr"].as_str() {
            out.push((title.clone(), expr.to_string()));
        }
    }
    for inner in panel["panels"].as_array().into_iter().flatten() {
        dashboard_queries(inner, out);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_metrics_table_and_the_dashboard_match_what_a_node_exposes() {
    let work = temp_dir("operations");
    let node = node_with_everything_on(work.path()).await;
    let text = node.metrics_text().await;
    let exposed = exposed_families(&text);
    assert!(exposed.keys().all(|n| n.starts_with("ferry_")), "every metric is named ferry_*: {:?}", exposed.keys());
    assert!(exposed.contains_key("ferry_lazy_layers_mounted") && exposed.contains_key("ferry_peer_bytes_total"), "snapshotter and P2P on");

    let documented = readme_metrics();
    let undocumented: Vec<_> = exposed.keys().filter(|n| !documented.contains_key(*n)).collect();
    let gone: Vec<_> = documented.keys().filter(|n| !exposed.contains_key(*n)).collect();
    assert!(undocumented.is_empty(), "exposed but not in README's metrics table: {undocumented:?}");
    assert!(gone.is_empty(), "in README's metrics table but not exposed: {gone:?}");
    for (name, kind) in &exposed {
        assert_eq!(&documented[name], kind, "README's type of {name}");
    }

    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS", "the datasource is an input");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        dashboard_queries(panel, &mut queries);
    }
    assert!(queries.len() >= 10, "the dashboard queries something: {queries:?}");
    let names = queryable(&exposed);
    for (title, expr) in &queries {
        let used = metric_names(expr);
        assert!(!used.is_empty(), "panel {title:?} queries no ferry metric: {expr}");
        for name in used {
            assert!(names.contains(&name), "panel {title:?} queries {name}, which the node does not expose: {expr}");
        }
    }
    let queried: BTreeSet<String> = queries.iter().flat_map(|(_, e)| metric_names(e)).collect();
    for wanted in ["ferry_bytes_served_total", "ferry_origin_bytes_total", "ferry_prewarm_orders_total", "ferry_lazy_read_errors_total"] {
        assert!(queried.contains(wanted), "the dashboard shows {wanted}");
    }
}

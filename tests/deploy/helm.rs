//! `deploy/helm/ferry`, rendered by Helm itself (`helm template ferry deploy/helm/ferry -n
//! ferry-system -f overrides.yaml`) and linted with `helm lint --strict`, which also fails on a
//! template that reads a value the values do not have.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Service, ServiceAccount};
use serde_json::{json, Value};

use super::kubernetes::{check_node_daemonset, kustomized};
use super::*;

const CHART: &str = "deploy/helm/ferry";

/// Runs helm with `args`, then the chart and `overrides` (YAML, as `-f` takes it).
fn helm(args: &[&str], overrides: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let values = dir.path().join("overrides.yaml");
    std::fs::write(&values, overrides).expect("write overrides");
    let out = run(Command::new(k8s_tool("helm")).args(args).arg(repo_path(CHART)).arg("-f").arg(&values));
    String::from_utf8(out.stdout).expect("helm prints UTF-8")
}

/// The chart's objects with `overrides`, after `helm lint --strict` passes on them.
fn render(overrides: &str) -> Vec<Value> {
    let lint = helm(&["lint", "--strict"], overrides);
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    documents(&helm(&["template", "ferry", "--namespace", "ferry-system"], overrides), "helm template's output")
}

/// Where two JSON values differ, as paths.
fn differences(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                differences(x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null), &format!("{path}.{k}"), out);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                differences(p, q, &format!("{path}[{i}]"), out);
            }
        }
        (p, q) if p != q => out.push(format!("{path}: {p} vs {q}")),
        _ => {}
    }
}

fn assert_same<T: serde::Serialize>(chart: &T, plain: &T, what: &str) {
    let mut out = Vec::new();
    differences(&serde_json::to_value(chart).expect("json"), &serde_json::to_value(plain).expect("json"), what, &mut out);
    assert!(out.is_empty(), "the chart and deploy/kubernetes differ (chart vs plain):\n{}", out.join("\n"));
}

fn pod(ds: &DaemonSet) -> &PodSpec {
    ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("a pod spec")
}

fn node(ds: &DaemonSet) -> &Container {
    pod(ds).containers.iter().find(|c| c.name == "ferry").expect("the ferry container")
}

fn config(docs: &[Value]) -> (String, toml::Value) {
    let text = ferry_toml(&one::<ConfigMap>(docs));
    let parsed = toml::from_str(&text).unwrap_or_else(|e| panic!("rendered ferry.toml is not TOML: {e}\n{text}"));
    (text, parsed)
}

#[test]
fn with_its_defaults_the_chart_gives_the_plain_manifests_objects() {
    let chart = render("");
    let plain = kustomized();
    let mut plain_kinds = check_kinds(&plain);
    // Helm creates the release's namespace (--create-namespace); the chart does not hold one.
    plain_kinds.retain(|k| k != "Namespace");
    assert_eq!(check_kinds(&chart), plain_kinds);
    for d in &chart {
        assert_eq!(d["metadata"]["namespace"], "ferry-system", "{}", d["kind"]);
        assert_eq!(d["metadata"]["labels"]["helm.sh/chart"], "ferry-0.1.0", "{}", d["kind"]);
        assert_eq!(d["metadata"]["labels"]["app.kubernetes.io/instance"], "ferry", "{}", d["kind"]);
    }

    let (chart_ds, plain_ds) = (one::<DaemonSet>(&chart), one::<DaemonSet>(&plain));
    let (_, chart_config) = config(&chart);
    let (_, plain_config) = config(&plain);
    assert_eq!(chart_config, plain_config, "the same ferry.toml, comments aside");
    check_node_daemonset(&chart_ds, &chart_config, "ferry-config", "ferry");
    let (c, p) = (chart_ds.spec.as_ref().expect("spec"), plain_ds.spec.as_ref().expect("spec"));
    assert_same(&c.selector, &p.selector, "selector");
    assert_same(&c.update_strategy, &p.update_strategy, "updateStrategy");
    assert_same(&c.min_ready_seconds, &p.min_ready_seconds, "minReadySeconds");
    assert_same(
        &c.template.metadata.as_ref().map(|m| &m.annotations),
        &p.template.metadata.as_ref().map(|m| &m.annotations),
        "pod annotations",
    );
    assert_same(pod(&chart_ds), pod(&plain_ds), "pod");
    assert_same(&one::<Service>(&chart).spec, &one::<Service>(&plain).spec, "Service");
    let (sa_chart, sa_plain) = (one::<ServiceAccount>(&chart), one::<ServiceAccount>(&plain));
    assert_same(&sa_chart.automount_service_account_token, &sa_plain.automount_service_account_token, "ServiceAccount");
}

#[test]
fn the_chart_follows_its_values() {
    let keygen = run(Command::new(FERRY).args(["prewarm", "keygen", "-o"]).arg(tempfile::tempdir().expect("tmp").path().join("k")));
    let operator = String::from_utf8(keygen.stdout).expect("utf8").trim().to_string();
    let docs = render(&format!(
        r#"
image: {{repository: registry.example.com/ferry, tag: "0.2.0"}}
upstreams:
  - host: docker.io
  - host: registry.site-a.example
    url: http://10.0.0.5:5000
ports: {{metrics: 9100}}
snapshotter: {{prefetchRate: "off"}}
p2p: {{region: site-a, pskSecret: site-a-swarm-key, uploadRate: 20MiB}}
prewarm: {{rate: 10MiB, operatorKeySecret: "", operatorKeys: ["{operator}"]}}
resources: {{requests: {{cpu: "1", memory: 1Gi}}, limits: {{memory: 4Gi}}}}
nodeSelector: {{topology.kubernetes.io/region: site-a}}
tolerations: [{{operator: Exists}}]
priorityClassName: system-node-critical
updateStrategy: {{type: OnDelete, rollingUpdate: null}}
serviceMonitor: {{enabled: true, interval: 1m, labels: {{release: prometheus}}}}
"#
    ));
    assert_eq!(check_kinds(&docs), ["ConfigMap", "DaemonSet", "Service", "ServiceAccount", "ServiceMonitor"]);
    let sm = docs.iter().find(|d| d["kind"] == "ServiceMonitor").expect("ServiceMonitor");
    assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(sm["metadata"]["labels"]["app.kubernetes.io/name"], "ferry");
    assert_eq!(sm["spec"]["endpoints"][0]["interval"], "1m");
    assert_eq!(one::<Service>(&docs).spec.expect("spec").ports.expect("ports")[0].port, 9100);

    let ds: DaemonSet = one(&docs);
    let strategy = ds.spec.as_ref().and_then(|s| s.update_strategy.clone()).expect("updateStrategy");
    assert_eq!((strategy.type_.as_deref(), strategy.rolling_update), (Some("OnDelete"), None));
    let pod = pod(&ds);
    let node = node(&ds);
    assert_eq!(node.image.as_deref(), Some("registry.example.com/ferry:0.2.0"));
    assert_eq!(pod.init_containers.as_ref().expect("init")[0].image, node.image);
    assert_eq!(
        node.args.as_deref().expect("args"),
        ["node", "--config", "/etc/ferry/ferry.toml", "--containerd-hosts", "/etc/containerd/certs.d", "--node-name", "$(NODE_NAME)"]
    );
    assert!(node.env.iter().flatten().all(|e| e.name != "FERRY_OPERATOR_KEY"), "keys come from the values");
    let key = pod.volumes.iter().flatten().find(|v| v.name == "swarm-key").and_then(|v| v.secret.as_ref()).expect("key volume");
    assert_eq!(key.secret_name.as_deref(), Some("site-a-swarm-key"));
    assert_eq!(pod.node_selector.as_ref().and_then(|s| s.get("topology.kubernetes.io/region")).map(String::as_str), Some("site-a"));
    let tolerations = pod.tolerations.as_ref().expect("tolerations");
    assert_eq!((tolerations.len(), tolerations[0].operator.as_deref(), tolerations[0].key.as_deref()), (1, Some("Exists"), None));
    assert_eq!(pod.priority_class_name.as_deref(), Some("system-node-critical"));
    let annotations =
        ds.spec.as_ref().and_then(|s| s.template.metadata.as_ref()).and_then(|m| m.annotations.as_ref()).expect("annotations");
    assert_eq!(annotations["prometheus.io/port"], "9100");
    assert!(node.ports.iter().flatten().any(|p| p.name.as_deref() == Some("metrics") && p.container_port == 9100));
    let resources = node.resources.as_ref().expect("resources");
    assert_eq!(resources.requests.as_ref().expect("requests")["cpu"].0, "1");
    assert_eq!(resources.limits.as_ref().expect("limits")["memory"].0, "4Gi");

    let (text, config) = config(&docs);
    assert_eq!(config["p2p"]["region"].as_str(), Some("site-a"));
    assert_eq!(config["p2p"]["upload_rate"].as_str(), Some("20MiB"));
    assert_eq!(config["snapshotter"]["prefetch_rate"].as_str(), Some("off"));
    assert_eq!(config["prewarm"]["rate"].as_str(), Some("10MiB"));
    assert_eq!(config["prewarm"]["operator_keys"].as_array().map(|a| a.len()), Some(1));
    assert_eq!(config["metrics"]["listen"].as_str(), Some("0.0.0.0:9100"));
    let hosts = containerd_config(&text);
    assert_eq!(hosts.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>(), ["docker.io", "registry.site-a.example"]);
    assert!(hosts[1].1.contains("server = \"http://10.0.0.5:5000\""), "{}", hosts[1].1);
    // The node takes the rendered file as it is (operator keys, rates, region included).
    let status = node_status_with(&text);
    assert_eq!(status["upstreams"], json!(["docker.io", "registry.site-a.example"]));
    assert_eq!(status["p2p"]["region"], "site-a");
}

#[test]
fn without_snapshotter_and_p2p_the_pod_is_not_privileged() {
    let docs = render(
        r#"
snapshotter: {enabled: false}
p2p: {enabled: false, bootstrap: ["/ip4/192.0.2.7/tcp/4001/p2p/12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X"]}
"#,
    );
    check_kinds(&docs);
    let ds: DaemonSet = one(&docs);
    let pod = pod(&ds);
    let node = node(&ds);
    let sec = node.security_context.as_ref().expect("securityContext");
    assert_eq!(sec.privileged, None);
    assert_eq!(sec.allow_privilege_escalation, Some(false));
    assert_eq!(sec.capabilities.as_ref().and_then(|c| c.drop.clone()), Some(vec!["ALL".to_string()]));
    assert!(node.volume_mounts.iter().flatten().all(|m| m.mount_propagation.is_none()), "no mount to propagate");
    let volumes: Vec<_> = pod.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    assert_eq!(volumes, ["config", "store", "run", "containerd-certs", "tmp"]);

    let (text, config) = config(&docs);
    assert!(config["snapshotter"].get("socket").is_none(), "{text}");
    assert_eq!(config["p2p"]["listen"].as_array().map(Vec::len), Some(0), "{text}");
    assert!(config["p2p"].get("psk_file").is_none(), "{text}");
    assert_eq!(config["p2p"]["bootstrap"][0].as_str().map(|b| b.starts_with("/ip4/192.0.2.7/")), Some(true));
    let hosts = containerd_config(&text);
    assert_eq!(hosts.len(), 1);
}

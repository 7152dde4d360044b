//! `deploy/kubernetes`: the plain manifests.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Service, ServiceAccount, Volume};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use super::*;

const DIR: &str = "deploy/kubernetes";

/// What `kubectl apply -k deploy/kubernetes` applies: `kubectl kustomize`'s output.
pub fn kustomized() -> Vec<Value> {
    let out = run(Command::new(k8s_tool("kubectl")).arg("kustomize").arg(repo_path(DIR)));
    documents(&String::from_utf8(out.stdout).expect("UTF-8"), "kubectl kustomize's output")
}

#[test]
fn every_manifest_is_made_of_kubernetes_api_fields() {
    let mut files: Vec<String> = std::fs::read_dir(repo_path(DIR))
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    files.sort();
    let mut all = Vec::new();
    for f in &files {
        let docs = documents(&read(&repo_path(&format!("{DIR}/{f}"))), f);
        assert!(!docs.is_empty(), "{f} holds no object");
        for d in &docs {
            assert!(d.pointer("/metadata/name").and_then(Value::as_str).is_some(), "{f}: an object without a name");
            if d["kind"] != "Namespace" {
                assert_eq!(d["metadata"]["namespace"], "ferry-system", "{f}: {}", d["kind"]);
            }
        }
        all.extend(docs);
    }
    let kinds = check_kinds(&all);
    assert_eq!(kinds, ["ConfigMap", "DaemonSet", "Namespace", "Service", "ServiceAccount", "ServiceMonitor"]);

    // kustomization.yaml lists every file but the ServiceMonitor (it needs Prometheus
    // Operator's CRDs), so `kubectl apply -k` works on any cluster.
    let listed = check_kinds(&kustomized());
    assert_eq!(listed, ["ConfigMap", "DaemonSet", "Namespace", "Service", "ServiceAccount"]);
}

fn pod(ds: &DaemonSet) -> &PodSpec {
    ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("a pod spec")
}

fn container<'a>(list: &'a [Container], name: &str) -> &'a Container {
    list.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no container {name}"))
}

fn volume<'a>(spec: &'a PodSpec, name: &str) -> &'a Volume {
    spec.volumes.iter().flatten().find(|v| v.name == name).unwrap_or_else(|| panic!("no volume {name}"))
}

/// Volume name → (mount path, propagation) of a container.
fn mounts(c: &Container) -> BTreeMap<String, (String, Option<String>)> {
    c.volume_mounts.iter().flatten().map(|m| (m.name.clone(), (m.mount_path.clone(), m.mount_propagation.clone()))).collect()
}

/// What a DaemonSet must say for `ferry node` to work on a node, whoever wrote it: the plain
/// manifest, or the chart with its default values (`helm` checks the same). `config` is its
/// ConfigMap's ferry.toml, parsed.
pub fn check_node_daemonset(ds: &DaemonSet, config: &toml::Value, configmap: &str, service_account: &str) {
    let spec = ds.spec.as_ref().expect("spec");
    let strategy = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(strategy.rolling_update.as_ref().and_then(|r| r.max_unavailable.clone()), Some(IntOrString::Int(1)));
    let annotations = spec.template.metadata.as_ref().and_then(|m| m.annotations.clone()).expect("pod annotations");
    assert_eq!(annotations.get("prometheus.io/scrape").map(String::as_str), Some("true"));

    let pod = pod(ds);
    assert_eq!(pod.host_network, Some(true), "containerd reaches the mirror on the node's loopback");
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(pod.service_account_name.as_deref(), Some(service_account));
    assert_eq!(pod.automount_service_account_token, Some(false), "ferry does not use the API");
    let gpu = pod.tolerations.iter().flatten().find(|t| t.key.as_deref() == Some("nvidia.com/gpu")).expect("a GPU toleration");
    assert_eq!((gpu.operator.as_deref(), gpu.effect.as_deref()), (Some("Exists"), Some("NoSchedule")));

    // Host paths: the store, the sockets, containerd's certs.d, the FUSE device.
    for (name, path, kind) in [
        ("store", "/var/lib/ferry", "DirectoryOrCreate"),
        ("run", "/run/ferry", "DirectoryOrCreate"),
        ("containerd-certs", "/etc/containerd/certs.d", "DirectoryOrCreate"),
        ("dev-fuse", "/dev/fuse", "CharDevice"),
        ("containerd-config", "/etc/containerd", "DirectoryOrCreate"),
        ("containerd-run", "/run/containerd", "DirectoryOrCreate"),
    ] {
        let host = volume(pod, name).host_path.as_ref().unwrap_or_else(|| panic!("volume {name} is not a hostPath"));
        assert_eq!((host.path.as_str(), host.type_.as_deref()), (path, Some(kind)), "volume {name}");
    }
    assert_eq!(volume(pod, "config").config_map.as_ref().map(|c| c.name.as_str()), Some(configmap));
    let key = volume(pod, "swarm-key").secret.as_ref().expect("the cluster key is a Secret volume");
    assert_eq!(key.secret_name.as_deref(), Some("ferry-swarm-key"));
    assert_eq!(key.default_mode, Some(0o400));
    assert_eq!(key.items.iter().flatten().map(|i| (i.key.as_str(), i.path.as_str())).collect::<Vec<_>>(), [("swarm.key", "swarm.key")]);

    // The init container points containerd at the node.
    let inits = pod.init_containers.as_deref().expect("init containers");
    let init = container(inits, "containerd-hosts");
    assert_eq!(
        init.command.as_deref().expect("command"),
        ["ferry", "containerd-config", "--config", "/etc/ferry/ferry.toml", "--apply", "/etc/containerd/certs.d"]
    );
    let init_mounts = mounts(init);
    assert_eq!(init_mounts["containerd-certs"].0, "/etc/containerd/certs.d");
    assert_eq!(init_mounts["config"].0, "/etc/ferry");
    let init_sec = init.security_context.as_ref().expect("init securityContext");
    assert_eq!(init_sec.privileged, None, "writing files needs no privilege");
    assert_eq!(init_sec.allow_privilege_escalation, Some(false));

    // The node.
    let node = container(&pod.containers, "ferry");
    assert_eq!(node.image, init.image, "one image for both");
    assert_eq!(node.command.as_deref(), Some(&["ferry".to_string()][..]));
    assert_eq!(
        node.args.as_deref().expect("args"),
        [
            "node",
            "--config",
            "/etc/ferry/ferry.toml",
            "--containerd-hosts",
            "/etc/containerd/certs.d",
            "--node-name",
            "$(NODE_NAME)",
            "--operator-key",
            "$(FERRY_OPERATOR_KEY)"
        ]
    );
    let env: BTreeMap<_, _> = node.env.iter().flatten().map(|e| (e.name.as_str(), e)).collect();
    let node_name = env["NODE_NAME"].value_from.as_ref().and_then(|v| v.field_ref.as_ref()).expect("NODE_NAME from the downward API");
    assert_eq!(node_name.field_path, "spec.nodeName");
    for (var, label) in [("FERRY_REGION", "topology.kubernetes.io/region"), ("FERRY_ZONE", "topology.kubernetes.io/zone")] {
        let field =
            env[var].value_from.as_ref().and_then(|v| v.field_ref.as_ref()).unwrap_or_else(|| panic!("{var} from the downward API"));
        assert_eq!(field.field_path, format!("metadata.labels['{label}']"));
    }
    let operator =
        env["FERRY_OPERATOR_KEY"].value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()).expect("operator key from a Secret");
    assert_eq!((operator.name.as_str(), operator.key.as_str(), operator.optional), ("ferry-operator-key", "operator-key", None));

    let sec = node.security_context.as_ref().expect("securityContext");
    assert_eq!(sec.privileged, Some(true), "Bidirectional propagation is accepted only for privileged containers");
    assert_eq!(sec.read_only_root_filesystem, Some(true));
    let m = mounts(node);
    assert_eq!(m["store"], ("/var/lib/ferry".to_string(), Some("Bidirectional".to_string())), "FUSE mounts must reach the host");
    for name in ["config", "swarm-key", "run", "dev-fuse", "tmp", "containerd-certs"] {
        assert_eq!(m[name].1, None, "only the store propagates mounts ({name})");
    }
    assert_eq!(m["config"].0, "/etc/ferry");
    assert_eq!(m["run"].0, "/run/ferry");
    assert_eq!(m["dev-fuse"].0, "/dev/fuse");
    assert_eq!(m["containerd-certs"].0, init_mounts["containerd-certs"].0, "the node takes out what the init container wrote");
    // `ferry doctor` in the pod sees containerd's config and socket where they are on the host,
    // and cannot change them.
    for (name, path) in [("containerd-config", "/etc/containerd"), ("containerd-run", "/run/containerd")] {
        let mount = node.volume_mounts.iter().flatten().find(|v| v.name == name).unwrap_or_else(|| panic!("no {name} mount"));
        assert_eq!((mount.mount_path.as_str(), mount.read_only), (path, Some(true)), "{name}");
    }
    let resources = node.resources.as_ref().expect("resources");
    assert!(resources.requests.as_ref().is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory")));
    assert!(resources.limits.as_ref().is_some_and(|r| r.contains_key("memory")));

    // ferry.toml agrees with the pod: paths inside the mounts, ports where the pod says.
    let get = |path: &str| -> &toml::Value {
        path.split('.').try_fold(config, |v, k| v.get(k)).unwrap_or_else(|| panic!("ferry.toml has no {path}"))
    };
    assert_eq!(get("store.path").as_str(), Some("/var/lib/ferry"), "the same path inside and on the host: containerd mounts it");
    assert_eq!(get("admin.socket").as_str(), Some("/run/ferry/admin.sock"));
    assert_eq!(get("snapshotter.socket").as_str(), Some("/run/ferry/snapshotter.sock"));
    assert_eq!(get("p2p.psk_file").as_str(), Some(format!("{}/swarm.key", m["swarm-key"].0).as_str()));
    let ports: BTreeMap<_, _> = node.ports.iter().flatten().map(|p| (p.name.clone().expect("port name"), p.container_port)).collect();
    assert_eq!(get("registry.listen").as_str(), Some(format!("127.0.0.1:{}", ports["registry"]).as_str()));
    assert_eq!(
        get("metrics.listen").as_str(),
        Some(format!("0.0.0.0:{}", ports["metrics"]).as_str()),
        "Prometheus scrapes the node's address"
    );
    assert_eq!(annotations.get("prometheus.io/port"), Some(&ports["metrics"].to_string()));
    assert_eq!(get("p2p.listen").as_array().map(|a| a[0].as_str()), Some(Some(format!("/ip4/0.0.0.0/tcp/{}", ports["p2p"]).as_str())));

    // Probes: GET /v2/ on the mirror, at 127.0.0.1 (the node's address has no mirror).
    for (what, probe) in [("startup", &node.startup_probe), ("liveness", &node.liveness_probe), ("readiness", &node.readiness_probe)] {
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).unwrap_or_else(|| panic!("{what} probe is not httpGet"));
        assert_eq!(get.host.as_deref(), Some("127.0.0.1"), "{what}");
        assert_eq!(get.path.as_deref(), Some("/v2/"), "{what}");
        assert_eq!(get.port, IntOrString::String("registry".into()), "{what}");
    }
}

#[test]
fn the_daemonset_runs_the_node_as_it_needs() {
    let docs = kustomized();
    let ds: DaemonSet = one(&docs);
    let cm: ConfigMap = one(&docs);
    let sa: ServiceAccount = one(&docs);
    let config: toml::Value = toml::from_str(&ferry_toml(&cm)).expect("ferry.toml is TOML");
    check_node_daemonset(&ds, &config, cm.metadata.name.as_deref().expect("name"), sa.metadata.name.as_deref().expect("name"));
    let node = container(&pod(&ds).containers, "ferry");
    assert_eq!(node.image.as_deref(), Some("ghcr.io/example/ferry:0.1.0"));

    // The pods match the selector; the metrics Service selects them and names their port.
    let spec = ds.spec.as_ref().expect("spec");
    let pod_labels = spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).expect("pod labels");
    let selector = spec.selector.match_labels.clone().expect("matchLabels");
    assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)), "{selector:?} does not select {pod_labels:?}");
    let svc: Service = one(&docs);
    let svc_spec = svc.spec.expect("spec");
    assert_eq!(svc_spec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(svc_spec.selector.as_ref(), Some(&selector));
    assert_eq!(svc_spec.ports.expect("ports")[0].target_port, Some(IntOrString::String("metrics".into())));

    // The Namespace lets privileged pods in where Pod Security is enforced.
    let ns = docs.iter().find(|d| d["kind"] == "Namespace").expect("namespace");
    assert_eq!(ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged");
}

#[test]
fn the_configmap_is_a_config_the_node_runs_with() {
    let cm: ConfigMap = one(&kustomized());
    let toml = ferry_toml(&cm);
    // What the init container runs.
    let hosts = containerd_config(&toml);
    assert_eq!(hosts.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>(), ["docker.io"]);
    assert!(hosts[0].1.contains("server = \"https://registry-1.docker.io\""), "{}", hosts[0].1);
    assert!(hosts[0].1.contains("[host.\"http://127.0.0.1:5050\"]"), "{}", hosts[0].1);
    // What the DaemonSet runs, with the rest of the file as it is.
    let status = node_status_with(&toml);
    assert_eq!(status["upstreams"], serde_json::json!(["docker.io"]));
    assert_eq!(status["p2p"]["region"], "default");
    assert!(status["lazy"].is_object(), "the snapshotter is on: {status}");
}

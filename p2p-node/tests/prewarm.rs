//! The prewarm planner against a realistic 48-node GPU cluster (fixtures/prewarm, written by
//! generate.py) and small constructed cases, plus the error messages of bad input, one file each
//! under fixtures/prewarm/errors/ with the exact message in `<file>.expect`.

use std::path::{Path, PathBuf};

use p2p_node::prewarm::{
    parse_holdings, parse_manifests, parse_nodes, parse_pods, plan, Cluster, Holdings, ImagePlan, Plan, PlanInput, Policy, Strategy,
};
use serde_json::{json, Value};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prewarm")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(fixtures().join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
}

/// The fixture cluster and both rollout files, from the texts given (so tests can shuffle them).
fn input_from(nodes: &str, pods: &str) -> PlanInput {
    let nodes = parse_nodes("nodes.json", nodes).expect("nodes");
    let pods = parse_pods("pods.json", pods).expect("pods");
    let mut rollouts = Vec::new();
    let mut notes = Vec::new();
    for file in ["rollouts.yaml", "rollouts-gpu-sharing.json"] {
        let m = parse_manifests(file, &read(file)).expect("manifests");
        rollouts.extend(m.rollouts);
        notes.extend(m.skipped);
    }
    let holdings = parse_holdings("holdings.json", &read("holdings.json")).expect("holdings");
    PlanInput { cluster: Cluster::new(nodes, &pods).expect("cluster"), rollouts, holdings, notes }
}

fn fixture_input() -> PlanInput {
    input_from(&read("nodes.json"), &read("pods.json"))
}

fn image<'a>(plan: &'a Plan, name: &str) -> &'a ImagePlan {
    plan.images.iter().find(|i| i.image == name).unwrap_or_else(|| panic!("no plan for {name}"))
}

fn warm(image: &ImagePlan) -> Vec<&str> {
    image.warm().map(|n| n.node.as_str()).collect()
}

fn reason<'a>(image: &'a ImagePlan, node: &str) -> &'a str {
    image.ineligible.iter().find(|i| i.node == node).map(|i| i.reason.as_str()).unwrap_or_else(|| panic!("{node} is not ineligible"))
}

const LLM: &str = "registry.local/ml/llm-serve:1.4";
const TRAIN: &str = "registry.local/ml/train:2.0";
const VECTOR: &str = "registry.local/data/vectordb:5.1";
const DCGM: &str = "nvcr.io/nvidia/k8s/dcgm-exporter:3.3.8-3.6.0-ubuntu22.04";
const EMBED: &str = "registry.local/ml/embed:0.9";
const ASR: &str = "registry.local/ml/asr:1.1";

#[test]
fn fixture_ineligible_nodes_are_never_chosen_and_each_says_why() {
    let plan = plan(&fixture_input(), &Policy::default()).expect("plan");
    assert_eq!(plan.nodes, 48);
    for image in &plan.images {
        assert_eq!(image.eligible + image.ineligible_total, 48, "{}", image.image);
        assert_eq!(image.ineligible_counts.values().sum::<usize>(), image.ineligible_total, "{}", image.image);
        for node in &image.ranked {
            assert!(!image.ineligible.iter().any(|i| i.node == node.node), "{} both ranked and ineligible for {}", node.node, image.image);
        }
    }
    let llm = image(&plan, LLM);
    assert_eq!(reason(llm, "gpu-a100-80-02"), "insufficient nvidia.com/gpu (needs 1, 0 free)");
    assert_eq!(reason(llm, "gpu-a100-80-07"), "not ready");
    assert_eq!(reason(llm, "gpu-a100-mig-02"), "no nvidia.com/gpu on this node");
    assert_eq!(reason(llm, "gpu-a10-01"), "node selector nvidia.com/gpu.product=NVIDIA-A100-SXM4-80GB: label is NVIDIA-A10G");
    assert_eq!(reason(llm, "cpu-01"), "node selector nvidia.com/gpu.product=NVIDIA-A100-SXM4-80GB: label missing");
    assert_eq!(reason(llm, "edge-l4-05"), "cordoned");
    assert_eq!(llm.ineligible_counts.get("not ready"), Some(&1));

    let train = image(&plan, TRAIN);
    assert_eq!(reason(train, "gpu-h100-01"), "insufficient nvidia.com/gpu (needs 8, 0 free)");
    assert_eq!(
        reason(train, "gpu-a100-80-04"),
        "required affinity nvidia.com/gpu.product In [NVIDIA-H100-80GB-HBM3]: label is NVIDIA-A100-SXM4-80GB"
    );
    assert_eq!(reason(train, "cpu-02"), "required affinity nvidia.com/gpu.product In [NVIDIA-H100-80GB-HBM3]: label missing");
    assert_eq!(train.ineligible_counts.get("insufficient nvidia.com/gpu"), Some(&5));
    let mut train_nodes = warm(train);
    train_nodes.sort();
    assert_eq!(train_nodes, ["gpu-h100-06", "gpu-h100-07", "gpu-h100-08"]);
    assert_eq!(train.budget, 3, "ceil(1.25 × 2)");

    let vector = image(&plan, VECTOR);
    assert_eq!(reason(vector, "gpu-a10-01"), "untolerated taint nvidia.com/gpu=present:NoSchedule");
    assert_eq!(reason(vector, "cpu-08"), "insufficient cpu (needs 6, 3400m free)");
    assert_eq!(reason(vector, "edge-l4-01"), "untolerated taint nvidia.com/gpu=present:NoSchedule");

    let dcgm = image(&plan, DCGM);
    assert_eq!(reason(dcgm, "gpu-a100-80-07"), "not ready");
    assert_eq!(reason(dcgm, "cpu-03"), "node selector nvidia.com/gpu.present=true: label missing");
    assert!(warm(dcgm).contains(&"edge-l4-05"), "DaemonSet pods tolerate a cordon");
    assert_eq!(dcgm.budget, dcgm.eligible, "a DaemonSet warms every eligible node");
    assert_eq!(dcgm.eligible, 38);

    let embed = image(&plan, EMBED);
    let mut embed_nodes = warm(embed);
    embed_nodes.sort();
    assert_eq!(embed_nodes, ["gpu-a100-mig-01", "gpu-a100-mig-02", "gpu-a100-mig-03"]);
    assert_eq!(reason(embed, "cpu-01"), "no nvidia.com/mig-1g.10gb on this node");
    assert_eq!(reason(embed, "gpu-a10-01"), "no nvidia.com/mig-1g.10gb on this node");
    assert_eq!(reason(embed, "gpu-h100-06"), "untolerated taint dedicated=training:NoSchedule");

    let asr = image(&plan, ASR);
    let mut asr_nodes = warm(asr);
    asr_nodes.sort();
    assert_eq!(asr_nodes, ["edge-l4-09", "edge-l4-10"]);
    assert_eq!(reason(asr, "edge-l4-08"), "insufficient aliyun.com/gpu-mem (needs 8, 6 free)");
    assert_eq!(asr.rollouts[0].unplaced, 0, "edge-l4-09 takes two pods, edge-l4-10 one");
    assert!(plan.notes.iter().any(|n| n.contains("kind Service is not a rollout")), "{:?}", plan.notes);
}

#[test]
fn ranking_follows_free_gpus_and_spread_constraints() {
    let plan = plan(&fixture_input(), &Policy::default()).expect("plan");
    let llm = image(&plan, LLM);
    assert_eq!(llm.budget, 4, "ceil(1.25 × 3)");
    let top = &llm.ranked[0];
    assert_eq!(top.node, "gpu-a100-80-04", "8 of 8 GPUs free (a Succeeded pod holds nothing)");
    assert_eq!(top.likelihood, 1.0);
    assert!(top.reasons.iter().any(|r| r == "NVIDIA-A100-SXM4-80GB 81920 MiB"), "{:?}", top.reasons);
    assert!(top.reasons.iter().any(|r| r == "8/8 GPUs free"), "{:?}", top.reasons);
    let rank = |n: &str| llm.ranked.iter().position(|r| r.node == n).unwrap_or(usize::MAX);
    assert!(rank("gpu-a100-80-08") < rank("gpu-a100-80-05"), "7 free before 4 free");
    assert!(rank("gpu-a100-80-05") < rank("gpu-a100-80-06"), "4 free before 1 free");
    assert!(!warm(llm).contains(&"gpu-a100-80-06"));

    // Zone spread (DoNotSchedule, maxSkew 1) and a preference for us-east: one pod in each
    // us-east zone, on the emptiest node there, in every run.
    let vector = image(&plan, VECTOR);
    for node in ["cpu-04", "cpu-05", "cpu-06"] {
        let n = vector.ranked.iter().find(|r| r.node == node).expect("ranked");
        assert_eq!(n.likelihood, 1.0, "{node}");
        assert!(n.wave.is_some(), "{node}");
    }
    assert_eq!(vector.ranked.iter().filter(|r| r.likelihood > 0.0).count(), 3);
}

#[test]
fn output_is_deterministic_whatever_the_input_order() {
    let first = serde_json::to_string_pretty(&plan(&fixture_input(), &Policy::default()).expect("plan")).expect("json");
    let again = serde_json::to_string_pretty(&plan(&fixture_input(), &Policy::default()).expect("plan")).expect("json");
    assert_eq!(first, again);

    let shuffle = |text: String| -> String {
        let mut doc: Value = serde_json::from_str(&text).expect("json");
        let items = doc["items"].as_array_mut().expect("items");
        items.reverse();
        let k = items.len() / 3;
        items.rotate_left(k);
        doc.to_string()
    };
    let shuffled = input_from(&shuffle(read("nodes.json")), &shuffle(read("pods.json")));
    let third = serde_json::to_string_pretty(&plan(&shuffled, &Policy::default()).expect("plan")).expect("json");
    assert_eq!(first, third);

    let back: Plan = serde_json::from_str(&first).expect("a plan file reads back");
    assert_eq!(serde_json::to_string_pretty(&back).expect("json"), first);
}

#[test]
fn waves_have_one_seed_per_region_by_default() {
    let input = fixture_input();
    let plan1 = plan(&input, &Policy::default()).expect("plan");
    let dcgm = image(&plan1, DCGM);
    for region in ["us-east", "eu-west", "ap-south"] {
        let seeds: Vec<_> = dcgm.warm().filter(|n| n.region == region && n.wave == Some(0)).collect();
        assert_eq!(seeds.len(), 1, "{region}");
        let first_in_region = dcgm.warm().find(|n| n.region == region).expect("a warm node");
        assert_eq!(first_in_region.wave, Some(0), "the best-ranked node of a region seeds it");
    }
    assert_eq!(dcgm.warm().filter(|n| n.wave == Some(1)).count(), dcgm.budget - 3);

    let two = plan(&input, &Policy { seeds_per_region: 2, ..Policy::default() }).expect("plan");
    let dcgm = image(&two, DCGM);
    for region in ["us-east", "eu-west", "ap-south"] {
        assert_eq!(dcgm.warm().filter(|n| n.region == region && n.wave == Some(0)).count(), 2, "{region}");
    }
}

#[test]
fn missing_bytes_and_cached_share_come_from_holdings() {
    let input = fixture_input();
    let plan1 = plan(&input, &Policy::default()).expect("plan");
    let llm = image(&plan1, LLM);
    let mib = 1024 * 1024;
    assert_eq!(llm.size_bytes, Some((29 + 3900 + 2600 + 900 + 12) * mib));
    let n01 = llm.ranked.iter().find(|r| r.node == "gpu-a100-80-01").expect("ranked");
    assert_eq!(n01.missing_bytes, Some((900 + 12) * mib), "holds base, cuda and torch");
    assert!(n01.reasons.iter().any(|r| r == "87% cached"), "{:?}", n01.reasons);
    let n04 = llm.ranked.iter().find(|r| r.node == "gpu-a100-80-04").expect("ranked");
    assert_eq!(n04.missing_bytes, llm.size_bytes, "holds nothing");

    let unknown = PlanInput { holdings: Holdings::default(), ..input };
    let plan2 = plan(&unknown, &Policy::default()).expect("plan");
    assert!(image(&plan2, LLM).ranked.iter().all(|r| r.missing_bytes.is_none()));
}

// --- constructed cases -------------------------------------------------------------------

fn gpu_node(name: &str, region: &str, labels: &[(&str, &str)], gpus: u32) -> Value {
    let mut l = json!({
        "kubernetes.io/hostname": name,
        "topology.kubernetes.io/region": region,
        "topology.kubernetes.io/zone": format!("{region}-a"),
        "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
        "nvidia.com/gpu.memory": "81920",
    });
    for (k, v) in labels {
        l[*k] = json!(v);
    }
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": l},
        "spec": {},
        "status": {
            "allocatable": {"cpu": "96", "memory": "1000Gi", "nvidia.com/gpu": gpus.to_string(), "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    })
}

fn gpu_pod(node: &str, gpus: u32) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("busy-{node}-{gpus}"), "namespace": "ml"},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": gpus.to_string()}}}]},
        "status": {"phase": "Running"}
    })
}

fn deployment(name: &str, image: &str, replicas: u32, gpus: u32) -> String {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "ml"},
        "spec": {"replicas": replicas, "template": {"spec": {"containers": [{
            "name": "c", "image": image,
            "resources": {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"nvidia.com/gpu": gpus.to_string()}}
        }]}}}
    })
    .to_string()
}

fn constructed(nodes: Vec<Value>, pods: Vec<Value>, manifests: &[String], holdings: Option<Value>) -> PlanInput {
    let nodes = parse_nodes("nodes", &json!({"kind": "List", "items": nodes}).to_string()).expect("nodes");
    let pods = parse_pods("pods", &json!({"kind": "List", "items": pods}).to_string()).expect("pods");
    let mut rollouts = Vec::new();
    for (i, m) in manifests.iter().enumerate() {
        rollouts.extend(parse_manifests(&format!("rollout{i}.json"), m).expect("manifest").rollouts);
    }
    let holdings = holdings.map(|h| parse_holdings("holdings", &h.to_string()).expect("holdings")).unwrap_or_default();
    PlanInput { cluster: Cluster::new(nodes, &pods).expect("cluster"), rollouts, holdings, notes: vec![] }
}

#[test]
fn binpack_and_spread_pick_different_top_nodes() {
    let input = constructed(
        vec![gpu_node("busy", "r", &[], 8), gpu_node("idle", "r", &[], 8), gpu_node("full", "r", &[], 8)],
        vec![gpu_pod("busy", 6), gpu_pod("full", 8)],
        &[deployment("llm", "llm:1", 1, 1)],
        None,
    );
    let spread = plan(&input, &Policy { strategy: Strategy::Spread, ..Policy::default() }).expect("plan");
    let binpack = plan(&input, &Policy { strategy: Strategy::Binpack, ..Policy::default() }).expect("plan");
    let (s, b) = (&spread.images[0], &binpack.images[0]);
    assert_eq!(s.ranked[0].node, "idle");
    assert_eq!(s.ranked[0].likelihood, 1.0);
    assert_eq!(b.ranked[0].node, "busy");
    assert_eq!(b.ranked[0].likelihood, 1.0);
    assert!(b.ranked[0].reasons.iter().any(|r| r == "2/8 GPUs free"), "{:?}", b.ranked[0].reasons);
    assert_eq!(reason(s, "full"), "insufficient nvidia.com/gpu (needs 1, 0 free)");
    assert_eq!(s.budget, 2);
}

#[test]
fn pool_order_fills_the_edge_pool_first() {
    let nodes = vec![
        gpu_node("cloud-1", "us-east", &[("pool", "cloud")], 8),
        gpu_node("cloud-2", "us-east", &[("pool", "cloud")], 8),
        gpu_node("edge-1", "edge-south", &[("pool", "edge")], 8),
        gpu_node("edge-2", "edge-south", &[("pool", "edge")], 8),
        gpu_node("edge-3", "edge-south", &[("pool", "edge")], 8),
    ];
    // The edge boxes are busier: the scheduler alone would prefer the cloud.
    let pods = vec![gpu_pod("edge-1", 4), gpu_pod("edge-2", 4), gpu_pod("edge-3", 4)];
    let input = constructed(nodes, pods, &[deployment("det", "det:1", 2, 1)], None);
    let plain = plan(&input, &Policy::default()).expect("plan");
    let mut top: Vec<_> = plain.images[0].ranked[..2].iter().map(|r| r.node.as_str()).collect();
    top.sort();
    assert_eq!(top, ["cloud-1", "cloud-2"]);

    let policy = Policy { pools: vec!["pool=edge".parse().expect("pool"), "pool=cloud".parse().expect("pool")], ..Policy::default() };
    let pooled = plan(&input, &policy).expect("plan");
    let image = &pooled.images[0];
    assert_eq!(image.budget, 3);
    let mut warm_nodes = warm(image);
    warm_nodes.sort();
    assert_eq!(warm_nodes, ["edge-1", "edge-2", "edge-3"]);
    assert!(image.ranked[0].reasons.iter().any(|r| r == "pool 1 (pool=edge)"), "{:?}", image.ranked[0].reasons);
    assert!(image.ranked.iter().find(|r| r.node == "cloud-1").is_some_and(|r| r.reasons.iter().any(|x| x == "pool 2 (pool=cloud)")));
}

#[test]
fn cached_share_breaks_ties_but_never_overrides_eligibility() {
    let layer = |i: u8| format!("sha256:{}", format!("{i:02x}").repeat(32));
    let mut tainted = gpu_node("e-tainted", "r", &[], 8);
    tainted["spec"]["taints"] = json!([{"key": "dedicated", "value": "training", "effect": "NoSchedule"}]);
    let nodes =
        vec![gpu_node("a", "r", &[], 8), gpu_node("b", "r", &[], 8), gpu_node("c", "r", &[], 8), gpu_node("d", "r", &[], 8), tainted];
    let holdings = json!({
        "nodes": {"b": [layer(1), layer(2)], "e-tainted": [layer(1), layer(2)], "c": [layer(1)]},
        "images": {"llm:1": [{"digest": layer(1), "size": 1000}, {"digest": layer(2), "size": 3000}]}
    });
    let input = constructed(nodes, vec![], &[deployment("llm", "llm:1", 1, 1)], Some(holdings));
    let p = plan(&input, &Policy::default()).expect("plan");
    let image = &p.images[0];
    assert_eq!(image.ranked[0].node, "b", "{:#?}", image.ranked);
    assert_eq!(image.ranked[0].missing_bytes, Some(0));
    assert!(image.ranked[0].reasons.iter().any(|r| r == "100% cached"));
    assert!(image.ranked[0].score > image.ranked[1].score);
    assert!(image.ranked[0].score - image.ranked[1].score < 1.0, "less than one scheduler point");
    assert_eq!(reason(image, "e-tainted"), "untolerated taint dedicated=training:NoSchedule");
    assert!(!image.ranked.iter().any(|r| r.node == "e-tainted"));

    // Without the cache bonus the same nodes rank on the scheduler's ties alone.
    let no_cache = plan(&input, &Policy { cache_weight: 0, jitter: 0, ..Policy::default() }).expect("plan");
    assert_eq!(no_cache.images[0].ranked[0].node, "a", "ties go to the first name when nothing else differs");
}

#[test]
fn rollouts_see_what_the_previous_ones_took() {
    let nodes = vec![gpu_node("n1", "r", &[], 8), gpu_node("n2", "r", &[], 8)];
    let manifests = [deployment("one", "one:1", 1, 8), deployment("two", "two:1", 1, 8), deployment("three", "three:1", 1, 8)];
    let p = plan(&constructed(nodes, vec![], &manifests, None), &Policy::default()).expect("plan");
    let likelihood = |image: &ImagePlan| image.ranked.iter().map(|r| r.likelihood).sum::<f64>();
    assert_eq!(likelihood(&p.images[0]), 1.0, "one pod, one node per run");
    assert_eq!(likelihood(&p.images[1]), 1.0);
    // In each run the two take different nodes, so per node the shares add up to one run each.
    for node in ["n1", "n2"] {
        let share = |i: usize| p.images[i].ranked.iter().find(|r| r.node == node).map_or(0.0, |r| r.likelihood);
        assert_eq!(share(0) + share(1), 1.0, "{node}");
    }
    assert_eq!(p.images[2].rollouts[0].unplaced, 1, "no room is left for the third");
    assert!(p.render_table().contains("1 pods found no node"));
}

fn spread_deployment(name: &str, replicas: u32, gpus: u32, constraint: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: ml}}
spec:
  replicas: {replicas}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      {constraint}
      containers: [{{name: c, image: "{name}:1", resources: {{requests: {{cpu: "1", nvidia.com/gpu: "{gpus}"}}}}}}]
"#
    )
}

#[test]
fn anti_affinity_and_hard_spread_shape_the_placement() {
    // One pod per host: the roomy node would otherwise take them all.
    let mut huge = gpu_node("huge", "r", &[], 8);
    huge["status"]["allocatable"]["cpu"] = json!("960");
    let anti = "affinity: {podAntiAffinity: {requiredDuringSchedulingIgnoredDuringExecution: [{labelSelector: {matchLabels: {app: web}}, topologyKey: kubernetes.io/hostname}]}}";
    let nodes = || vec![huge.clone(), gpu_node("n1", "r", &[], 8), gpu_node("n2", "r", &[], 8)];
    let p = plan(&constructed(nodes(), vec![], &[spread_deployment("web", 3, 0, anti)], None), &Policy::default()).expect("plan");
    assert!(p.images[0].ranked.iter().all(|r| r.likelihood == 1.0), "{:#?}", p.images[0].ranked);
    let p = plan(&constructed(nodes(), vec![], &[spread_deployment("web", 4, 0, anti)], None), &Policy::default()).expect("plan");
    assert_eq!(p.images[0].rollouts[0].unplaced, 1);
    let p = plan(&constructed(nodes(), vec![], &[spread_deployment("web", 3, 0, "")], None), &Policy::default()).expect("plan");
    assert_eq!(p.images[0].ranked[0].node, "huge");
    assert_eq!(p.images[0].ranked.iter().filter(|r| r.likelihood > 0.0).count(), 1, "without anti-affinity all go to the roomy node");

    // Zone spread, DoNotSchedule, maxSkew 1: the lone node of zone b takes half the pods.
    fn zone(z: &str) -> [(&str, &str); 1] {
        [("topology.kubernetes.io/zone", z)]
    }
    let nodes = || vec![gpu_node("a1", "r", &zone("a"), 8), gpu_node("a2", "r", &zone("a"), 8), gpu_node("b1", "r", &zone("b"), 8)];
    let spread = "topologySpreadConstraints: [{maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule}]";
    let p = plan(&constructed(nodes(), vec![], &[spread_deployment("kv", 4, 4, spread)], None), &Policy::default()).expect("plan");
    let image = &p.images[0];
    assert_eq!(image.ranked.iter().find(|r| r.node == "b1").map(|r| r.likelihood), Some(1.0));
    assert_eq!(image.rollouts[0].unplaced, 0);
    let p = plan(&constructed(nodes(), vec![], &[spread_deployment("kv", 6, 4, spread)], None), &Policy::default()).expect("plan");
    assert_eq!(p.images[0].rollouts[0].unplaced, 1, "zone a may hold only one more than zone b's two");

    // ScheduleAnyway is a preference: two pods, one per zone, in every run.
    let soft = "topologySpreadConstraints: [{maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: ScheduleAnyway}]";
    let p = plan(&constructed(nodes(), vec![], &[spread_deployment("kv", 2, 1, soft)], None), &Policy::default()).expect("plan");
    assert_eq!(p.images[0].ranked.iter().find(|r| r.node == "b1").map(|r| r.likelihood), Some(1.0), "{:#?}", p.images[0].ranked);
    let p = plan(&constructed(nodes(), vec![], &[spread_deployment("kv", 5, 4, soft)], None), &Policy::default()).expect("plan");
    assert_eq!(p.images[0].rollouts[0].unplaced, 0, "a preference never leaves pods unplaced");
}

#[test]
fn job_daemonset_and_skipped_kinds() {
    let text = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: sweep, namespace: research}
spec:
  parallelism: 6
  completions: 4
  template:
    spec:
      initContainers:
        - {name: stage, image: "stage:1", resources: {requests: {cpu: "12", memory: 1Gi}}}
        - {name: proxy, image: "proxy:1", restartPolicy: Always, resources: {requests: {cpu: "1"}}}
      containers:
        - {name: a, image: "sweep:1", resources: {requests: {cpu: "2", memory: 4Gi}, limits: {nvidia.com/gpu: 1}}}
        - {name: b, image: "sweep:1", resources: {requests: {cpu: 500m}}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec: {template: {spec: {containers: [{name: a, image: "agent:1"}]}}}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly, namespace: research}
"#;
    let m = parse_manifests("mixed.yaml", text).expect("parse");
    assert_eq!(m.rollouts.len(), 2);
    let job = &m.rollouts[0];
    assert_eq!(job.replicas, 4, "parallelism capped by completions");
    assert_eq!(job.images, ["sweep:1", "stage:1", "proxy:1"]);
    // max(containers 2.5 + sidecar 1, init 12) = 12 cpu; memory max(4Gi, 1Gi) = 4Gi; GPU from limits.
    assert_eq!(job.pod.requests["cpu"].milli(), 12_000);
    assert_eq!(job.pod.requests["memory"].milli(), 4 * 1024 * 1024 * 1024 * 1000);
    assert_eq!(job.pod.requests["nvidia.com/gpu"].units(), 1);
    assert_eq!(m.rollouts[1].namespace, "default");
    assert_eq!(m.skipped, ["mixed.yaml document 3 (CronJob research/nightly): kind CronJob is not a rollout; skipped"]);
}

// --- errors ------------------------------------------------------------------------------

#[test]
fn bad_input_gets_an_error_naming_object_and_field() {
    let dir = fixtures().join("errors");
    let mut cases: Vec<_> = std::fs::read_dir(&dir).expect("errors dir").map(|e| e.expect("entry").path()).collect();
    cases.retain(|p| p.extension().is_some_and(|e| e != "expect"));
    cases.sort();
    assert!(cases.len() >= 15, "{} cases", cases.len());
    for path in cases {
        let name = path.file_name().and_then(|n| n.to_str()).expect("name").to_string();
        let text = std::fs::read_to_string(&path).expect("case");
        let expect = std::fs::read_to_string(dir.join(format!("{name}.expect"))).expect("expect file");
        let expect = expect.trim_end();
        let got = match name.split('-').next() {
            Some("manifest") => parse_manifests(&name, &text).map(|_| ()),
            Some("nodes") => parse_nodes(&name, &text).map(|_| ()),
            Some("pods") => parse_pods(&name, &text).map(|_| ()),
            Some("holdings") => parse_holdings(&name, &text).map(|_| ()),
            _ => panic!("{name}: unknown kind of case"),
        };
        let got = got.err().unwrap_or_else(|| panic!("{name}: no error")).to_string();
        match expect.strip_suffix('*') {
            Some(prefix) => assert!(got.starts_with(prefix), "{name}:\n got: {got}\nwant: {expect}"),
            None => assert_eq!(got, expect, "{name}"),
        }
    }
}

#[test]
fn node_list_errors_name_the_item() {
    let list = json!({"kind": "List", "items": [
        gpu_node("a", "r", &[], 8), gpu_node("b", "r", &[], 8), gpu_node("c", "r", &[], 8), gpu_node("d", "r", &[], 8),
        gpu_node("e", "r", &[], 8), gpu_node("f", "r", &[], 8), gpu_node("g", "r", &[], 8),
        {"kind": "Node", "metadata": {"labels": {}}, "status": {"allocatable": {"cpu": "1"}}},
    ]});
    let err = parse_nodes("nodes", &list.to_string()).expect_err("an error");
    assert_eq!(err.to_string(), "nodes item 7: metadata.name missing");

    let twice =
        parse_nodes("nodes", &json!({"kind": "List", "items": [gpu_node("a", "r", &[], 8), gpu_node("a", "r", &[], 8)]}).to_string())
            .expect("parse");
    let err = Cluster::new(twice, &[]).expect_err("duplicate");
    assert_eq!(err.to_string(), "node a: listed twice");

    let err = parse_nodes("nodes.json", "{\"kind\": \"List\", \"items\": [").expect_err("bad json");
    assert!(err.to_string().starts_with("nodes.json: not valid JSON: "), "{err}");

    let err = plan(&PlanInput::default(), &Policy { runs: 65, ..Policy::default() }).expect_err("bad policy");
    assert_eq!(err.to_string(), "prewarm policy: runs: 65 is not between 1 and 64");
    let err = "pool = edge, bad key".parse::<p2p_node::prewarm::LabelSelector>().expect_err("bad selector");
    assert_eq!(err.to_string(), "prewarm policy: pool \"pool = edge, bad key\": \"bad key\" is not key=value, key!=value, key or !key");
}

#[test]
fn table_lists_warm_nodes_and_ineligible_counts() {
    let p = plan(&fixture_input(), &Policy::default()).expect("plan");
    let table = p.render_table();
    assert!(table.contains(&format!("image {LLM}")), "{table}");
    assert!(table.contains("rank  node"), "{table}");
    assert!(table.contains("gpu-a100-80-04"), "{table}");
    assert!(table.contains("ineligible: "), "{table}");
    assert!(table.contains("e.g. "), "{table}");
    // Fixed width: in every row the wave sits right before the reasons column.
    let header = table.lines().find(|l| l.contains("rank  node")).expect("header");
    let reasons_col = header.find("reasons").expect("reasons column");
    let llm = image(&p, LLM);
    for node in llm.warm() {
        let row = table.lines().find(|l| l.contains(&format!(" {} ", node.node))).expect("row");
        assert_eq!(row.as_bytes()[reasons_col - 3], b'0' + node.wave.unwrap_or(9) as u8, "{row}");
    }
}

//! Benchmarks of the prewarm planner. Not part of `cargo test` (ignored); run with
//!
//! ```text
//! cargo test --release -p p2p-node --test prewarm_bench -- --ignored --nocapture --test-threads 1
//! ```
//!
//! (a) scale: 100 rollouts over 10,000 generated nodes, wall time and peak memory (VmHWM of this
//!     process) of `plan`, against ≤ 1 s and ≤ 256 MiB.
//! (b) placement quality on a 500-node heterogeneous cluster with existing load: for each
//!     rollout, Ferry's warm nodes versus the baseline of existing preheat tools, the first N
//!     nodes of the node list (sorted by name, as kubectl lists them) matching the rollout's
//!     nodeSelector, N = ceil(1.25 × replicas) for both. The rollouts are then replayed by an
//!     independent scheduler simulation written here (not the planner's code: its own filters,
//!     integer LeastAllocated scores, uniformly random tie-breaking from its own generator) in two
//!     configurations: GPU-aware (GPU resources scored, weight 3) and the Kubernetes default (cpu
//!     and memory only), the planner told which (`Policy::gpu_weight` 3 or 0); and once more with
//!     the default scheduler but the planner not told, to show what a wrong setting costs.
//!     Each replay is drawn 5 times (different tie-breaks). Reported: the share of pods that land
//!     on prewarmed nodes, per rollout and overall, Ferry vs baseline, and their ratio.
//!
//! Every line that states a measured result starts with `RESULT`. `PREWARM_BENCH_SEED=<n>` draws
//! another quality cluster.

use std::collections::BTreeMap;
use std::time::Instant;

use p2p_node::prewarm::{parse_manifests, plan, Cluster, Effect, Holdings, Node, PlanInput, Policy, Quantity, Rollout, Taint};
use p2p_node::Digest;
use serde_json::json;

/// xorshift64*: the benchmark's own generator, unrelated to the planner's splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }
}

// Dense resources of the benchmark's own model.
const CPU: usize = 0; // millicores
const MEM: usize = 1; // MiB
const GPU: usize = 2; // nvidia.com/gpu
const MIG: usize = 3; // nvidia.com/mig-1g.10gb
const GMEM: usize = 4; // aliyun.com/gpu-mem (GiB)
const RES: [&str; 5] = ["cpu", "memory", "nvidia.com/gpu", "nvidia.com/mig-1g.10gb", "aliyun.com/gpu-mem"];

#[derive(Clone)]
struct BNode {
    name: String,
    labels: BTreeMap<String, String>,
    /// (key, value): all NoSchedule.
    taints: Vec<(String, String)>,
    alloc: [i64; 5],
    used: [i64; 5],
    pods: i64,
    ready: bool,
    cordoned: bool,
}

struct Shape {
    product: &'static str,
    gpus: i64,
    mig: i64,
    gmem: i64,
    cpu: i64,
    mem_gib: i64,
    pool: &'static str,
    share: u64,
}

const SHAPES: [Shape; 8] = [
    Shape { product: "NVIDIA-A10G", gpus: 4, mig: 0, gmem: 0, cpu: 48, mem_gib: 192, pool: "cloud", share: 15 },
    Shape { product: "NVIDIA-A100-SXM4-40GB", gpus: 8, mig: 0, gmem: 0, cpu: 96, mem_gib: 1024, pool: "cloud", share: 10 },
    Shape { product: "NVIDIA-A100-SXM4-80GB", gpus: 8, mig: 0, gmem: 0, cpu: 96, mem_gib: 1024, pool: "cloud", share: 15 },
    Shape { product: "NVIDIA-A100-SXM4-80GB", gpus: 2, mig: 28, gmem: 0, cpu: 96, mem_gib: 1024, pool: "cloud", share: 5 },
    Shape { product: "NVIDIA-H100-80GB-HBM3", gpus: 8, mig: 0, gmem: 0, cpu: 192, mem_gib: 2048, pool: "training", share: 10 },
    Shape { product: "NVIDIA-L4", gpus: 1, mig: 0, gmem: 0, cpu: 16, mem_gib: 64, pool: "edge", share: 15 },
    Shape { product: "NVIDIA-L4", gpus: 0, mig: 0, gmem: 22, cpu: 16, mem_gib: 64, pool: "edge", share: 5 },
    Shape { product: "", gpus: 0, mig: 0, gmem: 0, cpu: 32, mem_gib: 128, pool: "cloud", share: 25 },
];

/// A cluster of `n` nodes with existing load, named like EKS nodes (so name order is unrelated
/// to shape and load), sorted by name as `kubectl get nodes` lists them.
fn cluster(n: usize, seed: u64) -> Vec<BNode> {
    let mut rng = Rng(seed);
    let regions = ["us-east", "eu-west", "ap-south", "sa-east"];
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let mut pick = rng.below(100);
        let shape = SHAPES.iter().find(|s| {
            let hit = pick < s.share;
            pick = pick.saturating_sub(s.share);
            hit
        });
        let shape = shape.unwrap_or(&SHAPES[7]);
        let region = regions[rng.below(4) as usize];
        let zone = format!("{region}-1{}", ["a", "b", "c"][rng.below(3) as usize]);
        // A bijection of i (odd multiplier mod 2^24): unique names in an order unrelated to i.
        let x = (i as u64).wrapping_mul(0x9E37_79B1).wrapping_add(seed) & 0xFF_FFFF;
        let name = format!("ip-10-{}-{}-{}.ec2.internal", x >> 16, (x >> 8) & 255, x & 255);
        let mut labels: BTreeMap<String, String> = [
            ("kubernetes.io/hostname", name.as_str()),
            ("kubernetes.io/arch", "amd64"),
            ("kubernetes.io/os", "linux"),
            ("topology.kubernetes.io/region", region),
            ("topology.kubernetes.io/zone", zone.as_str()),
            ("pool", shape.pool),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut taints = Vec::new();
        if !shape.product.is_empty() {
            labels.insert("nvidia.com/gpu.present".into(), "true".into());
            labels.insert("nvidia.com/gpu.product".into(), shape.product.into());
            taints.push(("nvidia.com/gpu".to_string(), "present".to_string()));
        }
        if shape.mig > 0 {
            labels.insert("nvidia.com/mig.strategy".into(), "mixed".into());
        }
        if shape.gmem > 0 {
            labels.insert("gpushare".into(), "true".into());
        }
        if shape.pool == "training" {
            taints.push(("dedicated".to_string(), "training".to_string()));
        }
        let alloc = [shape.cpu * 1000 - 350, shape.mem_gib * 1024 - 2048, shape.gpus, shape.mig, shape.gmem];
        // Existing load: a random share of the accelerators, cpu and memory in proportion plus noise.
        let mut used = [0i64; 5];
        used[GPU] = rng.range(0, shape.gpus);
        used[MIG] = rng.range(0, shape.mig);
        used[GMEM] = rng.range(0, shape.gmem / 2) * 2;
        let busy_permille = if shape.gpus + shape.mig + shape.gmem > 0 {
            (used[GPU] * 1000 / shape.gpus.max(1)).max(used[MIG] * 1000 / shape.mig.max(1)).max(used[GMEM] * 1000 / shape.gmem.max(1))
        } else {
            rng.range(0, 850)
        };
        used[CPU] = (alloc[CPU] * (busy_permille * 8 / 10 + rng.range(0, 150)) / 1000).min(alloc[CPU]);
        used[MEM] = (alloc[MEM] * (busy_permille * 8 / 10 + rng.range(0, 150)) / 1000).min(alloc[MEM]);
        let ready = rng.below(100) >= 2;
        let cordoned = ready && rng.below(100) < 1;
        nodes.push(BNode { name, labels, taints, alloc, used, pods: 3 + rng.range(0, 12), ready, cordoned });
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes
}

fn planner_node(b: &BNode) -> Node {
    let q = |i: usize, v: i64| match i {
        CPU => Quantity::from_milli(i128::from(v)),
        MEM => Quantity::from_milli(i128::from(v) * 1024 * 1024 * 1000),
        _ => Quantity::from_units(v),
    };
    let mut allocatable: p2p_node::prewarm::Resources =
        (0..5).filter(|i| b.alloc[*i] > 0 || *i < 2).map(|i| (RES[i].to_string(), q(i, b.alloc[i]))).collect();
    allocatable.insert("pods".into(), Quantity::from_units(110));
    let requested = (0..5).filter(|i| b.used[*i] > 0).map(|i| (RES[i].to_string(), q(i, b.used[i]))).collect();
    Node {
        name: b.name.clone(),
        labels: b.labels.clone(),
        taints: b.taints.iter().map(|(k, v)| Taint { key: k.clone(), value: v.clone(), effect: Effect::NoSchedule }).collect(),
        allocatable,
        requested,
        pods: b.pods as u32,
        ready: b.ready,
        unschedulable: b.cordoned,
    }
}

#[derive(Clone)]
struct BRollout {
    name: String,
    kind: &'static str,
    replicas: i64,
    /// nodeSelector (key, value).
    selector: Vec<(&'static str, &'static str)>,
    req: [i64; 5],
    tolerate: Vec<&'static str>,
    zone_spread: bool,
}

impl BRollout {
    fn what(&self) -> String {
        let sel: Vec<String> = self.selector.iter().map(|(k, v)| format!("{}={v}", k.rsplit('/').next().unwrap_or(k))).collect();
        let res: Vec<String> = (GPU..=GMEM)
            .filter(|d| self.req[*d] > 0)
            .map(|d| format!("{}×{}", self.req[d], RES[d].rsplit('/').next().unwrap_or("")))
            .collect();
        let spread = if self.zone_spread { " zone-spread" } else { "" };
        format!("{} {}{spread}", sel.join(","), if res.is_empty() { "cpu only".to_string() } else { res.join(",") })
    }

    fn image(&self) -> String {
        format!("registry.local/bench/{}:1", self.name)
    }

    fn manifest(&self) -> String {
        let mut limits = serde_json::Map::new();
        for (name, amount) in RES.iter().zip(self.req).skip(GPU) {
            if amount > 0 {
                limits.insert(name.to_string(), json!(amount.to_string()));
            }
        }
        let mut pod = json!({
            "nodeSelector": self.selector.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "tolerations": self.tolerate.iter().map(|k| json!({"key": k, "operator": "Exists", "effect": "NoSchedule"})).collect::<Vec<_>>(),
            "containers": [{"name": "main", "image": self.image(), "resources": {
                "requests": {"cpu": format!("{}m", self.req[CPU]), "memory": format!("{}Mi", self.req[MEM])},
                "limits": limits,
            }}],
        });
        if self.zone_spread {
            pod["topologySpreadConstraints"] =
                json!([{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}]);
        }
        let mut spec = json!({"template": {"metadata": {"labels": {"app": self.name}}, "spec": pod}});
        match self.kind {
            "Job" => spec["parallelism"] = json!(self.replicas),
            "DaemonSet" => {}
            _ => spec["replicas"] = json!(self.replicas),
        }
        json!({"apiVersion": "apps/v1", "kind": self.kind, "metadata": {"name": self.name, "namespace": "bench"}, "spec": spec}).to_string()
    }
}

/// A mix of rollouts: inference on each GPU product, training jobs, MIG, shared GPU memory, CPU
/// services (some spread over zones), and `daemonsets` DaemonSets.
fn rollouts(count: usize, daemonsets: usize, seed: u64, max_replicas: i64) -> Vec<BRollout> {
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    for i in 0..count {
        let name = format!("r{i:03}");
        let gpu_tol = vec!["nvidia.com/gpu"];
        let r = if i < daemonsets {
            BRollout {
                name,
                kind: "DaemonSet",
                replicas: 0,
                selector: vec![("nvidia.com/gpu.present", "true")],
                req: [100, 128, 0, 0, 0],
                tolerate: vec!["nvidia.com/gpu", "dedicated"],
                zone_spread: false,
            }
        } else {
            // Every kind in turn, so that even a short list has each; sizes drawn at random.
            match (i - daemonsets) % 10 {
                0..=3 => {
                    let product = ["NVIDIA-A10G", "NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-SXM4-80GB", "NVIDIA-L4"][rng.below(4) as usize];
                    let gpus = if product == "NVIDIA-L4" { 1 } else { rng.range(1, 2) };
                    BRollout {
                        name,
                        kind: "Deployment",
                        replicas: rng.range(2, max_replicas),
                        selector: vec![("nvidia.com/gpu.product", product)],
                        req: [rng.range(2, 8) * 1000, rng.range(8, 48) * 1024, gpus, 0, 0],
                        tolerate: gpu_tol,
                        zone_spread: false,
                    }
                }
                4 => BRollout {
                    name,
                    kind: "Job",
                    replicas: rng.range(2, 4),
                    selector: vec![("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3")],
                    req: [90_000, 900 * 1024, 8, 0, 0],
                    tolerate: vec!["nvidia.com/gpu", "dedicated"],
                    zone_spread: false,
                },
                5 => BRollout {
                    name,
                    kind: "Deployment",
                    replicas: rng.range(3, max_replicas),
                    selector: vec![("nvidia.com/mig.strategy", "mixed")],
                    req: [2000, 8 * 1024, 0, 1, 0],
                    tolerate: gpu_tol,
                    zone_spread: false,
                },
                6 => BRollout {
                    name,
                    kind: "Deployment",
                    replicas: rng.range(2, 6),
                    selector: vec![("gpushare", "true")],
                    req: [1000, 4 * 1024, 0, 0, rng.range(2, 6)],
                    tolerate: gpu_tol,
                    zone_spread: false,
                },
                7 => BRollout {
                    name,
                    kind: "StatefulSet",
                    replicas: rng.range(3, 9),
                    selector: vec![("pool", "cloud")],
                    req: [rng.range(2, 6) * 1000, rng.range(4, 16) * 1024, 0, 0, 0],
                    tolerate: vec![],
                    zone_spread: true,
                },
                _ => BRollout {
                    name,
                    kind: "Deployment",
                    replicas: rng.range(3, max_replicas),
                    selector: vec![("pool", "cloud")],
                    req: [rng.range(1, 4) * 1000, rng.range(2, 8) * 1024, 0, 0, 0],
                    tolerate: vec![],
                    zone_spread: false,
                },
            }
        };
        out.push(r);
    }
    out
}

fn parse(rollouts: &[BRollout]) -> Vec<Rollout> {
    rollouts.iter().flat_map(|r| parse_manifests(&format!("{}.json", r.name), &r.manifest()).expect("manifest").rollouts).collect()
}

fn vm_hwm_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}

#[test]
#[ignore = "benchmark: cargo test --release -p p2p-node --test prewarm_bench -- --ignored --nocapture"]
fn prewarm_bench() {
    scale();
    quality();
}

fn scale() {
    let (n, count) = (10_000, 100);
    let bnodes = cluster(n, 0xA11CE);
    let brollouts = rollouts(count, 5, 0xB0B, 30);
    let mut nodes: Vec<Node> = bnodes.iter().map(planner_node).collect();
    // Holdings: a third of the nodes hold the shared base layers of the images.
    let layer = |i: u64| Digest::of(&i.to_le_bytes());
    let mut holdings = Holdings { nodes: Some(BTreeMap::new()), images: BTreeMap::new() };
    for r in &brollouts {
        let layers = (0..6)
            .map(|k| p2p_node::prewarm::Layer { digest: layer(k), size: 400 << 20 })
            .chain([p2p_node::prewarm::Layer { digest: Digest::of(r.name.as_bytes()), size: 300 << 20 }]);
        holdings.images.insert(r.image(), layers.collect());
    }
    for (i, node) in nodes.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
        holdings.nodes.as_mut().expect("set").insert(node.name.clone(), (0..(i as u64 % 6)).map(layer).collect());
    }
    let rollouts = parse(&brollouts);
    let pods: i64 = brollouts.iter().map(|r| r.replicas).sum();
    nodes.reverse();
    let input = PlanInput { cluster: Cluster::new(nodes, &[]).expect("cluster"), rollouts, holdings, notes: vec![] };
    let before = vm_hwm_mib();
    let start = Instant::now();
    let p = plan(&input, &Policy::default()).expect("plan");
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let peak = vm_hwm_mib();
    let warm: usize = p.images.iter().map(|i| i.budget).sum();
    println!(
        "scale: {n} nodes, {count} rollouts (5 DaemonSets, {pods} other pods), {} runs each; {warm} warm nodes planned",
        Policy::default().runs
    );
    println!("RESULT scale plan_ms={ms:.0} target<=1000 {}", verdict(ms <= 1000.0));
    println!("RESULT scale peak_rss_mib={peak:.0} (inputs alone {before:.0}) target<=256 {}", verdict(peak <= 256.0));
    let json = serde_json::to_string(&p).expect("json");
    println!("scale: plan JSON {} KiB", json.len() / 1024);
}

/// The independent scheduler: filters, integer LeastAllocated, random ties.
struct Replay {
    nodes: Vec<BNode>,
    rng: Rng,
    gpu_aware: bool,
}

impl Replay {
    fn feasible(&self, i: usize, r: &BRollout, zone_counts: &BTreeMap<String, i64>, zones: &[String]) -> bool {
        let n = &self.nodes[i];
        if !n.ready || n.cordoned {
            return false;
        }
        if n.taints.iter().any(|(k, _)| !r.tolerate.contains(&k.as_str())) {
            return false;
        }
        if r.selector.iter().any(|(k, v)| n.labels.get(*k).map(String::as_str) != Some(*v)) {
            return false;
        }
        if (0..5).any(|d| r.req[d] > 0 && n.used[d] + r.req[d] > n.alloc[d]) {
            return false;
        }
        if r.zone_spread {
            let Some(zone) = n.labels.get("topology.kubernetes.io/zone") else { return false };
            let min = zones.iter().map(|z| zone_counts.get(z).copied().unwrap_or(0)).min().unwrap_or(0);
            if zone_counts.get(zone).copied().unwrap_or(0) + 1 - min > 1 {
                return false;
            }
        }
        true
    }

    fn score(&self, i: usize, r: &BRollout) -> i64 {
        let n = &self.nodes[i];
        let mut dims = vec![(CPU, 1, r.req[CPU].max(100)), (MEM, 1, r.req[MEM].max(200))];
        if self.gpu_aware {
            dims.extend((GPU..=GMEM).filter(|d| r.req[*d] > 0).map(|d| (d, 3, r.req[d])));
        }
        let (mut sum, mut w) = (0, 0);
        for (d, weight, amount) in dims {
            if n.alloc[d] > 0 {
                sum += (n.alloc[d] - (n.used[d] + amount).min(n.alloc[d])) * 100 / n.alloc[d] * weight;
                w += weight;
            }
        }
        if w == 0 {
            0
        } else {
            sum / w
        }
    }

    /// Places the rollout's pods; returns the node of each pod placed.
    fn place(&mut self, r: &BRollout) -> Vec<usize> {
        let zones: Vec<String> = {
            let mut z: Vec<String> = self
                .nodes
                .iter()
                .filter(|n| r.selector.iter().all(|(k, v)| n.labels.get(*k).map(String::as_str) == Some(*v)))
                .filter_map(|n| n.labels.get("topology.kubernetes.io/zone").cloned())
                .collect();
            z.sort();
            z.dedup();
            z
        };
        let mut zone_counts = BTreeMap::new();
        let mut placed = Vec::new();
        let pods = if r.kind == "DaemonSet" { 0 } else { r.replicas };
        for _ in 0..pods {
            let (mut best, mut best_score, mut ties) = (None, i64::MIN, 0u64);
            for i in 0..self.nodes.len() {
                if !self.feasible(i, r, &zone_counts, &zones) {
                    continue;
                }
                let s = self.score(i, r);
                if s > best_score {
                    (best, best_score, ties) = (Some(i), s, 1);
                } else if s == best_score {
                    ties += 1;
                    if self.rng.below(ties) == 0 {
                        best = Some(i);
                    }
                }
            }
            let Some(i) = best else { break };
            for d in 0..5 {
                self.nodes[i].used[d] += r.req[d];
            }
            if let Some(z) = self.nodes[i].labels.get("topology.kubernetes.io/zone") {
                *zone_counts.entry(z.clone()).or_insert(0) += 1;
            }
            placed.push(i);
        }
        placed
    }
}

/// Independent replays of the scheduler per configuration (its random tie-breaks differ).
const DRAWS: u64 = 5;

fn quality() {
    // PREWARM_BENCH_SEED=<n> draws another cluster and rollout set.
    let seed: u64 = std::env::var("PREWARM_BENCH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5EED_0500);
    println!("quality: cluster seed {seed:#x}");
    let bnodes = cluster(500, seed);
    let brollouts = rollouts(24, 0, seed ^ 0xF00D, 12);
    let input = PlanInput {
        cluster: Cluster::new(bnodes.iter().map(planner_node).collect(), &[]).expect("cluster"),
        rollouts: parse(&brollouts),
        holdings: Holdings::default(),
        notes: vec![],
    };
    let index: BTreeMap<&str, usize> = bnodes.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect();
    // The baseline: the first N nodes matching the nodeSelector, N = ceil(1.25 × replicas).
    let baseline_sets: Vec<Vec<usize>> = brollouts
        .iter()
        .map(|r| {
            let budget = (Policy::default().headroom * r.replicas as f64).ceil() as usize;
            let matching =
                bnodes.iter().enumerate().filter(|(_, n)| r.selector.iter().all(|(k, v)| n.labels.get(*k).map(String::as_str) == Some(*v)));
            matching.map(|(i, _)| i).take(budget).collect()
        })
        .collect();
    // (scheduler replayed, its seed, planner's gpu_weight, whether the planner was told how the
    // scheduler scores: only then does the 90% target apply)
    let configs = [
        ("gpu-aware LeastAllocated", true, 0xD1CE_u64, 3, true),
        ("kube default, cpu+memory LeastAllocated", false, 0xFACE, 0, true),
        ("kube default, planner left at gpu_weight=3", false, 0xFACE, 3, false),
    ];
    for (label, gpu_aware, seed, gpu_weight, matched) in configs {
        let policy = Policy { gpu_weight, ..Policy::default() };
        let p = plan(&input, &policy).expect("plan");
        let ferry_sets: Vec<Vec<usize>> = brollouts
            .iter()
            .map(|r| {
                let image = p.images.iter().find(|i| i.image == r.image()).expect("image planned");
                image.warm().map(|n| index[n.node.as_str()]).collect()
            })
            .collect();
        println!("quality replay: {label}; 500 nodes, {} rollouts, {DRAWS} scheduler draws", brollouts.len());
        println!(
            "  {:<6} {:<12} {:<44} {:>4} {:>6} {:>7} {:>9}",
            "name", "kind", "nodeSelector / request", "pods", "budget", "ferry", "baseline"
        );
        // Per rollout, over all draws: (pods placed, on Ferry's nodes, on the baseline's).
        let mut counts = vec![(0usize, 0usize, 0usize); brollouts.len()];
        for draw in 0..DRAWS {
            let mut replay = Replay { nodes: bnodes.clone(), rng: Rng(seed + draw), gpu_aware };
            for (k, r) in brollouts.iter().enumerate() {
                let placed = replay.place(r);
                counts[k].0 += placed.len();
                counts[k].1 += placed.iter().filter(|i| ferry_sets[k].contains(i)).count();
                counts[k].2 += placed.iter().filter(|i| baseline_sets[k].contains(i)).count();
            }
        }
        let (mut total, mut ferry_hits, mut base_hits) = (0usize, 0usize, 0usize);
        for (k, r) in brollouts.iter().enumerate() {
            let (placed, f, b) = counts[k];
            let pct = |x: usize| if placed == 0 { "-".to_string() } else { format!("{:.0}%", 100.0 * x as f64 / placed as f64) };
            let pods = placed as f64 / DRAWS as f64;
            println!(
                "  {:<6} {:<12} {:<44} {:>4.1} {:>6} {:>7} {:>9}",
                r.name,
                r.kind,
                r.what(),
                pods,
                ferry_sets[k].len(),
                pct(f),
                pct(b)
            );
            total += placed;
            ferry_hits += f;
            base_hits += b;
        }
        let ferry = ferry_hits as f64 / total.max(1) as f64;
        let base = base_hits as f64 / total.max(1) as f64;
        let ratio = if base > 0.0 { format!("{:.2}", ferry / base) } else { "inf".to_string() };
        let target = if matched {
            format!("target>=90% {}", verdict(ferry >= 0.9))
        } else {
            "(no target: planner not told the scoring)".to_string()
        };
        println!(
            "RESULT quality[{label}] pods={} ferry={:.1}% baseline={:.1}% ratio={ratio} {target}",
            total / DRAWS as usize,
            ferry * 100.0,
            base * 100.0
        );
    }
}

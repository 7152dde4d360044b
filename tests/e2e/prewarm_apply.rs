//! `ferry prewarm apply` across real nodes: three `ferry node`s on loopback in one swarm, a plan
//! made by `ferry prewarm plan` from a kubectl-shaped node list, orders signed with a key from
//! `ferry prewarm keygen` and handed to one node, which sends them on. Each node ends up holding
//! the image with one copy fetched from the origin for the whole site, and a later pull takes no
//! origin bytes. Orders a node must not obey — another key, tampered, expired, for another node,
//! replayed (also after a restart), malformed — are refused and fetch nothing.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use p2p_node::prewarm::order::{Order, SignedOrder, SigningKey};

use crate::harness::ferry::{sum_metric, FerryNode, FerryOptions, FERRY_BIN};
use crate::harness::image::{build_busybox_with, push};
use crate::harness::oci::{blob_url, get_json, get_ok, manifest_url};
use crate::harness::registry::Registry;
use crate::harness::swarm::cluster_key;
use crate::harness::{free_port, random_bytes, run_cmd, run_ok, temp_dir, wait_for, CmdOutput};

const T: Duration = Duration::from_secs(180);
const REPO: &str = "test/warm";

fn keygen(dir: &Path, name: &str) -> (std::path::PathBuf, String) {
    let path = dir.join(name);
    let public = run_ok(Command::new(FERRY_BIN).args(["prewarm", "keygen", "-o"]).arg(&path), T);
    (path, public.trim().to_string())
}

async fn node(registry: &Registry, name: &str, psk: &Path, operator: &str, port: u16, bootstrap: Option<String>) -> FerryNode {
    let mut options = FerryOptions::upstream("registry.local", &registry.url());
    options.extra_args = ["--node-name", name, "--operator-key", operator, "--p2p-listen", &format!("/ip4/127.0.0.1/tcp/{port}")]
        .into_iter()
        .map(String::from)
        .chain(["--psk-file".into(), psk.display().to_string(), "--region".into(), "site-1".into(), "--mdns".into(), "false".into()])
        .collect();
    if let Some(b) = bootstrap {
        options.extra_args.extend(["--bootstrap".into(), b]);
    }
    FerryNode::start(options).await
}

fn status(node: &FerryNode) -> serde_json::Value {
    let out = run_ok(Command::new(FERRY_BIN).args(["status", "--json", "--admin-socket"]).arg(node.admin_socket()), T);
    serde_json::from_str(&out).expect("status JSON")
}

/// `kubectl get nodes -o json` for GPU nodes named `names`, all in region site-1.
fn node_list(names: &[&str]) -> String {
    let items: Vec<serde_json::Value> = names
        .iter()
        .map(|n| {
            serde_json::json!({
                "metadata": {"name": n, "labels": {
                    "kubernetes.io/hostname": n, "topology.kubernetes.io/region": "site-1", "topology.kubernetes.io/zone": "site-1a",
                    "nvidia.com/gpu.product": "NVIDIA-A10", "nvidia.com/gpu.memory": "24576", "nvidia.com/gpu.count": "2"}},
                "spec": {},
                "status": {"allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110", "nvidia.com/gpu": "2"},
                           "conditions": [{"type": "Ready", "status": "True"}]}
            })
        })
        .collect();
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

const ROLLOUT: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: infer, namespace: ml}
spec:
  replicas: 2
  selector: {matchLabels: {app: infer}}
  template:
    metadata: {labels: {app: infer}}
    spec:
      nodeSelector: {nvidia.com/gpu.product: NVIDIA-A10}
      containers:
        - name: server
          image: registry.local/test/warm:chunked
          resources: {limits: {nvidia.com/gpu: 1}}
";

/// The converted image's manifest digest and blobs (digest, size), config first.
async fn image_blobs(registry: &Registry) -> (String, Vec<(String, u64)>) {
    let reply = get_ok(&manifest_url(&registry.url(), REPO, "chunked"), &[("accept", "application/vnd.oci.image.manifest.v1+json")]).await;
    let digest = reply.header("docker-content-digest");
    let m = get_json(&manifest_url(&registry.url(), REPO, &digest)).await;
    let mut blobs = vec![(m["config"]["digest"].as_str().expect("config").to_string(), m["config"]["size"].as_u64().expect("size"))];
    for l in m["layers"].as_array().expect("layers") {
        blobs.push((l["digest"].as_str().expect("digest").to_string(), l["size"].as_u64().expect("size")));
    }
    (digest, blobs)
}

fn holds(node: &FerryNode, blobs: &[(String, u64)]) -> bool {
    let have: Vec<String> = node.complete_blobs().into_iter().map(|(hex, _)| format!("sha256:{hex}")).collect();
    blobs.iter().all(|(d, _)| have.contains(d))
}

/// A registry holding `REPO:chunked`: busybox plus a 3 MiB startup file (prioritized) and 8 MiB
/// of weights, converted to zstd:chunked.
async fn lazy_image(work: &Path) -> Registry {
    let registry = Registry::plain().await;
    let files: [(&str, &[u8]); 2] = [("opt/start.bin", &random_bytes(1, 3 << 20)), ("opt/weights.bin", &random_bytes(2, 8 << 20))];
    push(&build_busybox_with(work, "warm", &files), &registry, &format!("{REPO}:src"));
    let prioritize = work.join("startup.txt");
    std::fs::write(&prioritize, "opt/start.bin\n").expect("write");
    let host = registry.host_port();
    let mut convert = Command::new(FERRY_BIN);
    convert.args(["convert", &format!("{host}/{REPO}:src"), &format!("{host}/{REPO}:chunked"), "--prioritize"]).arg(&prioritize);
    run_ok(&mut convert, T);
    registry
}

/// Writes a node list of `names` and the rollout, and plans it into `plan.json` in `dir`.
fn plan(dir: &Path, names: &[&str], replicas: u32, extra: &[&str]) -> std::path::PathBuf {
    let (nodes_json, rollout, plan) = (dir.join("nodes.json"), dir.join("rollout.yaml"), dir.join("plan.json"));
    std::fs::write(&nodes_json, node_list(names)).expect("write");
    std::fs::write(&rollout, ROLLOUT.replace("replicas: 2", &format!("replicas: {replicas}"))).expect("write");
    let mut cmd = Command::new(FERRY_BIN);
    cmd.args(["prewarm", "plan", "--nodes"]).arg(&nodes_json).args(extra).arg(&rollout).arg("-o").arg(&plan);
    run_ok(&mut cmd, T);
    plan
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_warms_three_nodes_wave_by_wave_and_later_pulls_take_no_origin_bytes() {
    let work = temp_dir("prewarm-apply");
    let registry = lazy_image(work.path()).await;
    let (manifest, blobs) = image_blobs(&registry).await;
    let image_bytes: u64 = blobs.iter().map(|(_, s)| s).sum();

    let psk = cluster_key(work.path(), "swarm.key");
    let (key, public) = keygen(work.path(), "operator.key");
    assert!(public.starts_with("ed25519:"), "{public}");
    let port0 = free_port();
    let first = node(&registry, "edge-0", &psk, &public, port0, None).await;
    let boot = format!("/ip4/127.0.0.1/tcp/{port0}/p2p/{}", status(&first)["p2p"]["peer_id"].as_str().expect("peer id"));
    let mut nodes = vec![first];
    for i in 1..3 {
        nodes.push(node(&registry, &format!("edge-{i}"), &psk, &public, free_port(), Some(boot.clone())).await);
    }
    wait_for("every node to know both peers by name", Duration::from_secs(30), || {
        let named = |n: &FerryNode| {
            let peers = status(n)["p2p"]["peers"].clone();
            peers.as_array().map(|p| p.iter().filter(|x| x["node"].is_string()).count()).unwrap_or(0)
        };
        let all = nodes.iter().all(|n| named(n) == 2);
        async move { all.then_some(()) }
    })
    .await;

    // The plan: 2 replicas × headroom 1.5 = all three nodes; one seed in the region, two after.
    let plan = plan(work.path(), &["edge-0", "edge-1", "edge-2"], 2, &["--headroom", "1.5"]);

    let out = run_ok(
        Command::new(FERRY_BIN)
            .args(["prewarm", "apply", "--output", "json", "--timeout", "150s", "--key"])
            .arg(&key)
            .arg("--admin-socket")
            .arg(nodes[0].admin_socket())
            .arg(&plan),
        T,
    );
    let outcomes: Vec<serde_json::Value> = serde_json::from_str(&out).expect("apply report");
    assert_eq!(outcomes.len(), 3, "{out}");
    assert!(outcomes.iter().all(|o| o["result"] == "done"), "{out}");
    let waves: Vec<u64> = outcomes.iter().map(|o| o["wave"].as_u64().expect("wave")).collect();
    assert_eq!(waves, [0, 1, 1], "one seed first, then the rest: {out}");
    assert!(outcomes[0]["node"].is_string(), "{out}");

    let mut origin = Vec::new();
    for n in &nodes {
        assert!(holds(n, &blobs), "a node lacks part of the image after apply:\n{}", n.log());
        assert_eq!(n.metric("ferry_prewarm_orders_total", &[("outcome", "done")]).await, 1.0);
        origin.push(n.metric("ferry_origin_bytes_total", &[]).await);
    }
    let total_origin: f64 = origin.iter().sum();
    assert!(
        total_origin < 1.2 * image_bytes as f64,
        "the site fetched {total_origin} origin bytes for a {image_bytes}-byte image: {origin:?}"
    );
    // The seed's fetch is shared by the site's members (each fetches the segments it owns from
    // the origin), so how much a wave-1 node then takes from peers depends on which segments it
    // owns (by rendezvous hashing): only the site's total is fixed, one WAN copy (above).
    // The startup chunks came first: the seed's status shows them.
    let listed =
        run_ok(Command::new(FERRY_BIN).args(["prewarm", "status", "--output", "json", "--admin-socket"]).arg(nodes[0].admin_socket()), T);
    let reports: Vec<serde_json::Value> = serde_json::from_str(&listed).expect("status report");
    assert_eq!(reports.len(), 3, "{listed}");
    for r in &reports {
        let o = &r["orders"][0];
        assert_eq!(o["state"], "done", "{listed}");
        assert!(o["priority_bytes"].as_u64().expect("priority bytes") >= 3 << 20, "the startup file first: {listed}");
        assert!(o["done_bytes"].as_u64().expect("done") >= image_bytes, "{listed}");
    }

    // A pull after the apply: every byte from the node's own store.
    for (i, n) in nodes.iter().enumerate() {
        let q = "?ns=registry.local";
        get_ok(&format!("{}{q}", manifest_url(&n.url(), REPO, &manifest)), &[]).await;
        for (d, size) in &blobs {
            let reply = get_ok(&format!("{}{q}", blob_url(&n.url(), REPO, d)), &[]).await;
            assert_eq!(reply.body.len() as u64, *size);
        }
        assert_eq!(n.metric("ferry_origin_bytes_total", &[]).await, origin[i], "edge-{i} went to the origin for a warmed image");
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

/// POSTs `body` to the node's admin socket; (HTTP status, body).
fn post_orders(node: &FerryNode, body: &str) -> (u16, String) {
    let socket = node.admin_socket();
    let out: CmdOutput = run_cmd(
        Command::new("curl").args(["-sS", "--max-time", "30", "-w", "\n%{http_code}", "--unix-socket"]).arg(&socket).args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
            "http://ferry/prewarm/orders",
        ]),
        Duration::from_secs(40),
    );
    assert!(out.success, "curl: {}", out.stderr);
    let (body, code) = out.stdout.trim_end().rsplit_once('\n').expect("status line");
    (code.parse().expect("code"), body.to_string())
}

fn deliver(node: &FerryNode, signed: &SignedOrder) -> serde_json::Value {
    let (code, body) = post_orders(node, &serde_json::to_string(&[signed]).expect("json"));
    assert_eq!(code, 200, "{body}");
    serde_json::from_str::<Vec<serde_json::Value>>(&body).expect("deliveries").remove(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_a_node_must_not_obey_are_refused_and_fetch_nothing() {
    let work = temp_dir("prewarm-refuse");
    let registry = Registry::plain().await;
    let (key_file, public) = keygen(work.path(), "operator.key");
    let operator = SigningKey::from_hex(&std::fs::read_to_string(&key_file).expect("key")).expect("key parses");
    let mut options = FerryOptions::upstream("registry.local", &registry.url());
    options.extra_args = vec!["--node-name".into(), "edge-9".into(), "--operator-key".into(), public.clone()];
    let mut node = FerryNode::start(options).await;
    let order = |id: &str| Order {
        id: id.into(),
        node: "edge-9".into(),
        image: "registry.local/test/absent:1".into(),
        wave: 0,
        issued_at: now(),
        expires_at: now() + 600,
        rate: None,
    };

    let intruder = SigningKey::generate();
    let mut tampered = operator.sign(&order("t"));
    tampered.order = tampered.order.replace("test/absent", "test/other");
    let expired = operator.sign(&Order { issued_at: now() - 900, expires_at: now() - 300, ..order("e") });
    let elsewhere = operator.sign(&Order { node: "edge-1".into(), ..order("x") });
    for (what, signed, why) in [
        ("another key", intruder.sign(&order("k")), "does not trust"),
        ("a tampered order", tampered, "signature"),
        ("an expired order", expired, "expired"),
        ("an order for another node", elsewhere, "\"edge-1\" is not"),
    ] {
        let d = deliver(&node, &signed);
        assert_eq!(d["accepted"], false, "{what} was accepted: {d}");
        assert!(d["why"].as_str().unwrap_or_default().contains(why), "{what}: {d}");
    }
    let (code, body) = post_orders(&node, "{\"not\": \"a list\"}");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("malformed"), "{body}");

    // A good order is accepted once; the same order again is a replay, also after a restart.
    let good = operator.sign(&order("g"));
    assert_eq!(deliver(&node, &good)["accepted"], true);
    let again = deliver(&node, &good);
    assert!(again["why"].as_str().unwrap_or_default().contains("replay"), "{again}");
    node.restart().await; // kill -9, then the same store
    let after = deliver(&node, &good);
    assert!(after["why"].as_str().unwrap_or_default().contains("replay"), "a restart forgot the seen order: {after}");
    assert_eq!(node.metric("ferry_prewarm_orders_total", &[("outcome", "refused")]).await, 1.0, "counted since the restart");

    // `ferry prewarm apply` with a key the node does not trust: refused, a non-zero exit.
    let plan = plan(work.path(), &["edge-9"], 1, &[]);
    let (wrong, _) = keygen(work.path(), "wrong.key");
    let out = run_cmd(
        Command::new(FERRY_BIN).args(["prewarm", "apply", "--key"]).arg(&wrong).arg("--admin-socket").arg(node.admin_socket()).arg(&plan),
        T,
    );
    assert!(!out.success, "apply with an untrusted key succeeded:\n{}", out.stdout);
    assert!(out.stdout.contains("refused") && out.stdout.contains("does not trust"), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("did not finish"), "{}", out.stderr);
    assert_eq!(node.metric("ferry_prewarm_orders_total", &[("outcome", "refused")]).await, 2.0);
    // The origin was asked only for the one accepted order's image (which it does not have).
    let asked: Vec<String> = registry.access_lines().into_iter().map(|l| l.path).filter(|p| p.starts_with("/v2/test/")).collect();
    assert!(asked.iter().all(|p| p.starts_with("/v2/test/absent/")), "a refused order fetched something: {asked:?}");
    assert!(node.complete_blobs().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_keeps_to_its_rate_and_skips_what_the_node_holds() {
    let work = temp_dir("prewarm-rate");
    let registry = lazy_image(work.path()).await;
    let (_, blobs) = image_blobs(&registry).await;
    let image_bytes: u64 = blobs.iter().map(|(_, s)| s).sum();
    let (key, public) = keygen(work.path(), "operator.key");
    let mut options = FerryOptions::upstream("registry.local", &registry.url());
    options.extra_args = vec!["--node-name".into(), "edge-5".into(), "--operator-key".into(), public];
    let node = FerryNode::start(options).await;
    let plan = plan(work.path(), &["edge-5"], 1, &[]);
    let apply = |rate: &str| {
        let mut cmd = Command::new(FERRY_BIN);
        cmd.args(["prewarm", "apply", "--output", "json", "--rate", rate, "--key"]).arg(&key);
        cmd.arg("--admin-socket").arg(node.admin_socket()).arg(&plan);
        let out = run_ok(&mut cmd, T);
        let o: Vec<serde_json::Value> = serde_json::from_str(&out).expect("report");
        assert_eq!(o[0]["result"], "done", "{out}");
        o[0]["seconds"].as_f64().expect("seconds")
    };
    // The layers (12 MiB) at 2 MiB/s: six seconds at least (the config is not paced). And what
    // the node takes from the origin keeps to the rate all along (plus the one range in flight),
    // not only the order's end: sampled while it runs.
    let rate = 2u64 << 20;
    let started = std::time::Instant::now();
    let capped = std::thread::scope(|s| {
        let order = s.spawn(|| apply("2MiB"));
        let mut samples = Vec::new();
        while !order.is_finished() {
            std::thread::sleep(Duration::from_millis(500));
            let metrics = run_ok(Command::new("curl").args(["-s", &format!("http://{}/metrics", node.metrics_addr)]), T);
            samples.push((started.elapsed().as_secs_f64(), sum_metric(&metrics, "ferry_origin_bytes_total", &[])));
        }
        for (t, bytes) in &samples {
            let allowed = rate as f64 * t + (5u64 << 20) as f64;
            assert!(*bytes <= allowed, "{bytes} origin bytes after {t:.1} s, over 2 MiB/s: {samples:?}");
        }
        order.join().expect("apply")
    });
    let floor = 0.8 * (image_bytes - blobs[0].1) as f64 / rate as f64;
    assert!(capped >= floor, "the order took {capped:.2} s; at 2 MiB/s it needs at least {floor:.2} s");
    assert!(holds(&node, &blobs));
    // Everything is here now: a second order fetches nothing and is not paced.
    let again = apply("1MiB");
    assert!(again < 2.0, "a warm of a held image took {again:.2} s");
}

/// An order cut short by `kill -9` is taken up again when the node starts (it was kept on disk
/// as signed, and verifies again), and ends done with the whole image held; an order that no
/// longer verifies at the restart (its key was dropped from the node's config) is dropped.
#[tokio::test(flavor = "multi_thread")]
async fn an_order_cut_by_kill_9_is_taken_up_again_at_the_restart() {
    let work = temp_dir("prewarm-resume");
    let registry = lazy_image(work.path()).await;
    let (_, blobs) = image_blobs(&registry).await;
    let (key_file, public) = keygen(work.path(), "operator.key");
    let operator = SigningKey::from_hex(&std::fs::read_to_string(&key_file).expect("key")).expect("key parses");
    let mut options = FerryOptions::upstream("registry.local", &registry.url());
    options.extra_args = vec!["--node-name".into(), "edge-7".into(), "--operator-key".into(), public];
    let mut node = FerryNode::start(options).await;
    // 12 MiB of layers at 2 MiB/s: about six seconds, cut after two.
    let order = Order {
        id: "resume-1".into(),
        node: "edge-7".into(),
        image: format!("registry.local/{REPO}:chunked"),
        wave: 0,
        issued_at: now(),
        expires_at: now() + 600,
        rate: Some(2 << 20),
    };
    assert_eq!(deliver(&node, &operator.sign(&order))["accepted"], true);
    std::thread::sleep(Duration::from_secs(2));
    assert!(!holds(&node, &blobs), "the order ended before the kill; nothing to resume");
    node.restart().await; // kill -9, then the same store

    let state = |node: &FerryNode| {
        let out =
            run_ok(Command::new(FERRY_BIN).args(["prewarm", "status", "--output", "json", "--admin-socket"]).arg(node.admin_socket()), T);
        let reports: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
        reports[0]["orders"].as_array().and_then(|o| o.iter().find(|o| o["id"] == "resume-1")).map(|o| o["state"].to_string())
    };
    wait_for("the resumed order to end", Duration::from_secs(60), || {
        let ended = state(&node).filter(|s| s.contains("done") || s.contains("failed"));
        async move { ended }
    })
    .await;
    assert!(state(&node).is_some_and(|s| s.contains("done")), "{:?}\n{}", state(&node), node.log());
    assert!(holds(&node, &blobs), "the resumed order left the image incomplete");
    assert_eq!(node.metric("ferry_prewarm_orders_total", &[("outcome", "resumed")]).await, 1.0);
    assert!(std::fs::read_dir(node.store().join("meta/prewarm/active")).expect("ls").next().is_none(), "an ended order stays on disk");

    // Cut again, and restarted without the key that signed it: dropped, nothing more fetched.
    let second = Order { id: "resume-2".into(), image: format!("registry.local/{REPO}:src"), ..order };
    assert_eq!(deliver(&node, &operator.sign(&second))["accepted"], true);
    node.kill9();
    let other = SigningKey::generate();
    node.set_extra_args(vec!["--node-name".into(), "edge-7".into(), "--operator-key".into(), other.public().to_string()]);
    node.restart().await;
    assert!(
        std::fs::read_dir(node.store().join("meta/prewarm/active")).expect("ls").next().is_none(),
        "an order that no longer verifies is kept"
    );
    assert!(node.log().contains("dropping an unfinished prewarm order"), "{}", node.log());
    assert_eq!(node.metric("ferry_prewarm_orders_total", &[("outcome", "resumed")]).await, 0.0);
}

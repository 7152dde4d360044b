//! The swarm between ferry nodes on loopback: nodes holding the
//! cluster key join each other and show their peers in `ferry status`; a node with another key
//! never appears; a node asked to run P2P without a key refuses to start.

use std::process::Command;
use std::time::Duration;

use crate::harness::ferry::{FerryNode, FerryOptions, FERRY_BIN};
use crate::harness::registry::Registry;
use crate::harness::{free_port, run_cmd, temp_dir, wait_for};

fn key(dir: &std::path::Path, name: &str) -> String {
    let out = Command::new("bash").arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/make-cluster-key.sh")).output().expect("make key");
    assert!(out.status.success());
    let path = dir.join(name);
    std::fs::write(&path, out.stdout).expect("write key");
    path.display().to_string()
}

fn status(node: &FerryNode) -> serde_json::Value {
    let out =
        run_cmd(Command::new(FERRY_BIN).args(["status", "--json", "--admin-socket"]).arg(node.admin_socket()), Duration::from_secs(10));
    assert!(out.success, "ferry status: {}", out.stderr);
    serde_json::from_str(&out.stdout).expect("status JSON")
}

async fn p2p_node(registry: &Registry, psk: &str, port: u16, bootstrap: Option<String>) -> FerryNode {
    let mut options = FerryOptions::upstream("registry.local", &registry.url());
    options.extra_args = vec![
        "--p2p-listen".into(),
        format!("/ip4/127.0.0.1/tcp/{port}"),
        "--psk-file".into(),
        psk.into(),
        "--region".into(),
        "edge-1".into(),
        "--mdns".into(),
        "false".into(),
    ];
    if let Some(b) = bootstrap {
        options.extra_args.extend(["--bootstrap".into(), b]);
    }
    FerryNode::start(options).await
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_with_the_cluster_key_join_and_others_do_not() {
    let registry = Registry::plain().await;
    let work = temp_dir("p2p");
    let site_key = key(work.path(), "site.key");
    let other_key = key(work.path(), "other.key");
    let port_a = free_port();
    let a = p2p_node(&registry, &site_key, port_a, None).await;
    let a_id = status(&a)["p2p"]["peer_id"].as_str().expect("peer id").to_string();
    let a_addr = format!("/ip4/127.0.0.1/tcp/{port_a}/p2p/{a_id}");
    let b = p2p_node(&registry, &site_key, free_port(), Some(a_addr.clone())).await;
    let intruder = p2p_node(&registry, &other_key, free_port(), Some(a_addr)).await;
    let b_id = status(&b)["p2p"]["peer_id"].as_str().expect("peer id").to_string();
    let intruder_id = status(&intruder)["p2p"]["peer_id"].as_str().expect("peer id").to_string();

    wait_for("node A to see node B", Duration::from_secs(20), || {
        let peers = status(&a)["p2p"]["peers"].clone();
        let seen = peers.as_array().is_some_and(|p| p.iter().any(|x| x["peer_id"] == b_id.as_str() && x["region"] == "edge-1"));
        async move { seen.then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let peers = status(&a)["p2p"]["peers"].clone();
    assert!(!peers.to_string().contains(&intruder_id), "a node with another cluster key joined: {peers}");
    assert_eq!(status(&intruder)["p2p"]["peers"].as_array().map(Vec::len), Some(0), "the intruder has no peers");
    let table = run_cmd(Command::new(FERRY_BIN).args(["status", "--admin-socket"]).arg(a.admin_socket()), Duration::from_secs(10)).stdout;
    assert!(table.contains("with 1 peers") && table.contains("region edge-1"), "{table}");
    for direction in ["in", "out"] {
        let n = a.metric("ferry_peer_bytes_total", &[("direction", direction)]).await;
        assert_eq!(n, 0.0, "nothing moved between peers yet ({direction})");
    }
    assert!(a.metrics_text().await.contains("ferry_peer_bytes_total{direction=\"out\"}"));
}

#[test]
fn p2p_without_a_cluster_key_refuses_to_start() {
    let work = temp_dir("p2p-nokey");
    let out = run_cmd(
        Command::new(FERRY_BIN)
            .args(["node", "--upstream", "x=http://127.0.0.1:9", "--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--store"])
            .arg(work.path().join("store"))
            .arg("--admin-socket")
            .arg(work.path().join("admin.sock"))
            .args(["--registry-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]),
        Duration::from_secs(20),
    );
    assert!(!out.success, "started without a cluster key");
    assert!(out.stderr.contains("--psk-file"), "the error says what to do: {}", out.stderr);
}

/// A lazy reader (the snapshotter) checks every chunk itself, so a byte range it asks for with
/// `X-Ferry-Client-Verifies: chunks` comes from a peer at once; any other range of peer bytes
/// waits until the whole blob is fetched and verified.
#[tokio::test(flavor = "multi_thread")]
async fn peer_bytes_reach_a_range_reader_early_only_if_it_verifies_them() {
    let registry = Registry::plain().await;
    let work = temp_dir("p2p-ranges");
    let psk = key(work.path(), "site.key");
    let blob = crate::harness::random_bytes(31, 24 << 20);
    let digest = crate::harness::image::push_blob(&registry, "test/lazy", &blob).await;
    let port_a = free_port();
    let a = p2p_node(&registry, &psk, port_a, None).await;
    let a_id = status(&a)["p2p"]["peer_id"].as_str().expect("peer id").to_string();
    let http = crate::harness::http_client();
    let url = |node: &FerryNode| format!("{}/v2/test/lazy/blobs/{digest}?ns=registry.local", node.url());
    // A holds the blob before B joins (so B is given no share of it to fetch from the origin).
    let whole = http.get(url(&a)).send().await.expect("GET from A").bytes().await.expect("body");
    assert_eq!(whole.len(), blob.len(), "node A holds the blob");
    let b = p2p_node(&registry, &psk, free_port(), Some(format!("/ip4/127.0.0.1/tcp/{port_a}/p2p/{a_id}"))).await;
    wait_for("node B to see node A", Duration::from_secs(20), || {
        let n = status(&b)["p2p"]["peers"].as_array().map_or(0, Vec::len);
        async move { (n > 0).then_some(()) }
    })
    .await;

    let range = |start: usize, verifies: bool| {
        let mut r = http.get(url(&b)).header("range", format!("bytes={start}-{}", start + 4095));
        if verifies {
            r = r.header("x-ferry-client-verifies", "chunks");
        }
        r.send()
    };
    let early = range(8 << 20, true).await.expect("range from B");
    assert_eq!(early.status(), 206);
    assert_eq!(&early.bytes().await.expect("body")[..], &blob[8 << 20..(8 << 20) + 4096]);
    let served = b.metric("ferry_bytes_served_total", &[("source", "peer")]).await;
    assert!(served > 0.0, "the range came from the peer:\n{}\n{}", b.metrics_text().await, b.log());
    let partial = status(&b)["transfers"].as_array().cloned().unwrap_or_default();
    let present = partial.iter().find(|t| t["digest"] == digest.as_str()).map(|t| t["present_bytes"].as_u64().unwrap_or(0));
    assert!(present.is_some_and(|p| p < blob.len() as u64 / 2), "a few pieces, not the whole blob, were fetched: {partial:?}");

    let strict = range(20 << 20, false).await.expect("range from B");
    assert_eq!(&strict.bytes().await.expect("body")[..], &blob[20 << 20..(20 << 20) + 4096]);
    let left = status(&b)["transfers"].as_array().cloned().unwrap_or_default();
    assert!(left.iter().all(|t| t["digest"] != digest.as_str()), "without the header the whole blob was verified first: {left:?}");
}

use std::time::Duration;

use libp2p::pnet::PreSharedKey;

use super::*;
use crate::store::{StoreConfig, PIECE_SIZE};

fn psk(byte: u8) -> PreSharedKey {
    PreSharedKey::new([byte; 32])
}

struct Node {
    client: Client,
    store: Store,
    _dir: tempfile::TempDir,
}

async fn node(key: Option<PreSharedKey>, bootstrap: Vec<Multiaddr>) -> Node {
    limited_node(key, bootstrap, None).await
}

async fn limited_node(key: Option<PreSharedKey>, bootstrap: Vec<Multiaddr>, upload_rate: Option<u64>) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("store"), StoreConfig::default()).expect("store");
    let config = SwarmConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
        bootstrap,
        psk: key,
        mdns: false,
        region: "site-a".into(),
        upload_rate,
        upload_per_peer: 2,
    };
    let identity = load_or_create_identity(&dir.path().join("identity.key")).expect("identity");
    let client = spawn(config, identity, store.clone()).expect("spawn");
    Node { client, store, _dir: dir }
}

/// The node's address with its peer id, once it listens.
async fn address(n: &Node) -> Multiaddr {
    for _ in 0..100 {
        if let Some(a) = n.client.listen_addrs().await.expect("addrs").into_iter().next() {
            return a.with(libp2p::multiaddr::Protocol::P2p(n.client.peer_id()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the node never listened");
}

fn blob(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 241) as u8 ^ (i >> 11) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_the_cluster_key_find_providers_and_fetch_pieces() {
    let a = node(Some(psk(7)), vec![]).await;
    let data = blob(2 * PIECE_SIZE as usize + 123);
    let d = Digest::of(&data);
    a.store.put(&d, &data).expect("put");
    a.client.provide(d).await.expect("provide");
    let a_addr = address(&a).await;
    let b = node(Some(psk(7)), vec![a_addr.clone()]).await;
    let c = node(Some(psk(7)), vec![a_addr.clone()]).await;
    c.client.dial(a_addr.clone()).await.expect("the same key connects");
    b.client.dial(a_addr.clone()).await.expect("the same key connects");

    let mut providers = Vec::new();
    for _ in 0..50 {
        providers = c.client.providers(d).await.expect("providers");
        if providers.contains(&a.client.peer_id()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(providers.contains(&a.client.peer_id()), "the DHT names the provider: {providers:?}");
    assert!(c.client.providers(Digest::of(b"nobody has this")).await.expect("providers").is_empty());

    let (size, map) = c.client.have_map(a.client.peer_id(), d).await.expect("have-map").expect("a has it");
    assert_eq!((size, map.count()), (data.len() as u64, 3));
    let mut back = Vec::new();
    for i in 0..3 {
        back.extend(c.client.piece(a.client.peer_id(), d, i).await.expect("piece").expect("present"));
    }
    assert_eq!(Digest::of(&back), d, "the pieces put together are the blob");
    assert_eq!(c.client.piece(a.client.peer_id(), d, 3).await.expect("request"), None, "past the end: not here");
    assert_eq!(c.client.have_map(a.client.peer_id(), Digest::of(b"x")).await.expect("request"), None);
    let peers = a.client.peers().await.expect("peers");
    assert!(peers.iter().any(|p| p.peer_id == c.client.peer_id().to_string() && p.region.as_deref() == Some("site-a")), "{peers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_cluster_key_cannot_connect() {
    let a = node(Some(psk(7)), vec![]).await;
    let a_addr = address(&a).await;
    for (what, key) in [("a wrong key", Some(psk(8))), ("no key", None)] {
        let intruder = node(key, vec![]).await;
        let result = tokio::time::timeout(Duration::from_secs(30), intruder.client.dial(a_addr.clone())).await.expect("the dial ends");
        assert!(result.is_err(), "{what} connected");
        let err = intruder.client.have_map(a.client.peer_id(), Digest::of(b"x")).await;
        assert!(err.is_err(), "{what}: a request reached the swarm");
    }
}

#[test]
fn cluster_keys_and_identities_load_with_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("swarm.key");
    std::fs::write(&key, format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", "ab".repeat(32))).expect("write");
    assert!(load_psk(&key).is_ok());
    std::fs::write(&key, "not a key").expect("write");
    assert!(load_psk(&key).expect_err("garbage").to_string().contains("swarm.key"));
    let id = dir.path().join("p2p/identity.key");
    let first = load_or_create_identity(&id).expect("create");
    let again = load_or_create_identity(&id).expect("load");
    assert_eq!(first.public().to_peer_id(), again.public().to_peer_id(), "the identity survives a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_keep_to_the_rate_cap_and_are_counted() {
    let rate = 2 * PIECE_SIZE; // two pieces a second, one second of burst
    let a = limited_node(Some(psk(9)), vec![], Some(rate)).await;
    let data = blob(6 * PIECE_SIZE as usize);
    let d = Digest::of(&data);
    a.store.put(&d, &data).expect("put");
    let b = node(Some(psk(9)), vec![]).await;
    b.client.dial(address(&a).await).await.expect("dial");
    let started = std::time::Instant::now();
    for i in 0..6 {
        b.client.piece(a.client.peer_id(), d, i).await.expect("piece").expect("present");
    }
    let elapsed = started.elapsed();
    // 6 pieces at 2 a second, 2 of them from the initial burst: about 2 seconds at least.
    assert!(elapsed >= Duration::from_millis(1800), "the cap did not hold: 6 MiB in {elapsed:?}");
    let out = a.client.traffic();
    assert_eq!((out.bytes_out, out.pieces_out), (6 * PIECE_SIZE, 6));
    assert_eq!(b.client.traffic().bytes_in, 6 * PIECE_SIZE);
}

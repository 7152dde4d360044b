use std::time::Duration;

use libp2p::pnet::PreSharedKey;

use super::*;
use crate::store::{StoreConfig, PIECE_SIZE};

fn psk(byte: u8) -> PreSharedKey {
    PreSharedKey::new([byte; 32])
}

static NODES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

struct Node {
    client: Client,
    orders: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<FetchOrder>>,
    prewarm: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<orders::InboundOrder>>,
    store: Store,
    _dir: tempfile::TempDir,
}

async fn node(key: Option<PreSharedKey>, bootstrap: Vec<Multiaddr>) -> Node {
    limited_node(key, bootstrap, None, None).await
}

async fn limited_node(key: Option<PreSharedKey>, bootstrap: Vec<Multiaddr>, upload_rate: Option<u64>, download_rate: Option<u64>) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("store"), StoreConfig::default()).expect("store");
    let config = SwarmConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
        bootstrap,
        psk: key,
        mdns: false,
        region: "site-a".into(),
        zone: "rack-1".into(),
        node_name: format!("gpu-{}", NODES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
        upload_rate,
        download_rate,
        upload_per_peer: 2,
        test_fault_corrupt_served_pieces: false,
    };
    let identity = load_or_create_identity(&dir.path().join("identity.key")).expect("identity");
    let swarm = spawn(config, identity, store.clone()).expect("spawn");
    Node {
        client: swarm.client,
        orders: tokio::sync::Mutex::new(swarm.orders),
        prewarm: tokio::sync::Mutex::new(swarm.prewarm),
        store,
        _dir: dir,
    }
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

fn bytes(answer: PieceAnswer) -> Vec<u8> {
    match answer {
        PieceAnswer::Data(d) => d,
        other => panic!("expected the piece, got {other:?}"),
    }
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
        back.extend(bytes(c.client.piece(a.client.peer_id(), d, i, None).await.expect("piece")));
    }
    assert_eq!(Digest::of(&back), d, "the pieces put together are the blob");
    let past_the_end = c.client.piece(a.client.peer_id(), d, 3, None).await.expect("request");
    assert!(matches!(past_the_end, PieceAnswer::NotHere), "{past_the_end:?}");
    assert_eq!(c.client.have_map(a.client.peer_id(), Digest::of(b"x")).await.expect("request"), None);
    let peers = a.client.peers().await.expect("peers");
    let c_id = c.client.peer_id().to_string();
    let seen = peers.iter().find(|p| p.peer_id == c_id).unwrap_or_else(|| panic!("{peers:?}"));
    assert_eq!((seen.region.as_deref(), seen.zone.as_deref()), (Some("site-a"), Some("rack-1")), "what c announced");
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
    let a = limited_node(Some(psk(9)), vec![], Some(rate), None).await;
    let data = blob(6 * PIECE_SIZE as usize);
    let d = Digest::of(&data);
    a.store.put(&d, &data).expect("put");
    let b = node(Some(psk(9)), vec![]).await;
    b.client.dial(address(&a).await).await.expect("dial");
    let started = std::time::Instant::now();
    for i in 0..6 {
        bytes(b.client.piece(a.client.peer_id(), d, i, None).await.expect("piece"));
    }
    let elapsed = started.elapsed();
    // 6 pieces at 2 a second, 2 of them from the initial burst: about 2 seconds at least.
    assert!(elapsed >= Duration::from_millis(1800), "the cap did not hold: 6 MiB in {elapsed:?}");
    let out = a.client.traffic();
    assert_eq!((out.bytes_out, out.pieces_out), (6 * PIECE_SIZE, 6));
    assert_eq!(b.client.traffic().bytes_in, 6 * PIECE_SIZE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piece_being_fetched_is_waited_for_and_peer_bytes_are_not_handed_on() {
    let a = node(Some(psk(5)), vec![]).await;
    let b = node(Some(psk(5)), vec![]).await;
    b.client.dial(address(&a).await).await.expect("dial");
    let data = blob(3 * PIECE_SIZE as usize);
    let d = Digest::of(&data);
    let p = a.store.begin(&d, data.len() as u64).expect("begin").expect("partial");
    assert!(matches!(p.poll(0..PIECE_SIZE), crate::store::RangeState::Claimed(_)), "a fetches piece 0");
    p.write_piece(1, &data[PIECE_SIZE as usize..2 * PIECE_SIZE as usize], false).expect("a peer's piece");
    let writer = {
        let (p, first) = (p.clone(), data[..PIECE_SIZE as usize].to_vec());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            tokio::task::spawn_blocking(move || p.write_piece(0, &first, true)).await.expect("join").expect("write");
        })
    };
    let started = std::time::Instant::now();
    let first = bytes(b.client.piece(a.client.peer_id(), d, 0, None).await.expect("piece"));
    assert_eq!(first, data[..PIECE_SIZE as usize], "the piece came once it was fetched");
    assert!(started.elapsed() >= Duration::from_millis(500), "it was waited for");
    writer.await.expect("writer");
    let untrusted = b.client.piece(a.client.peer_id(), d, 1, None).await.expect("request");
    assert!(matches!(untrusted, PieceAnswer::NotHere), "a peer's unverified piece is not handed on: {untrusted:?}");
    let (_, map) = b.client.have_map(a.client.peer_id(), d).await.expect("request").expect("a has some");
    assert!(map.get(0) && !map.get(1) && !map.get(2), "the have-map names only trusted pieces");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banned_peer_is_cut_off_until_the_ban_ends() {
    let a = node(Some(psk(6)), vec![]).await;
    let b = node(Some(psk(6)), vec![]).await;
    let a_addr = address(&a).await;
    b.client.dial(a_addr.clone()).await.expect("dial");
    let data = blob(100);
    let d = Digest::of(&data);
    a.store.put(&d, &data).expect("put");
    a.client.ban(b.client.peer_id(), Duration::from_secs(2), "served bad bytes".into()).await.expect("ban");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bans = a.client.bans().await.expect("bans");
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0].peer_id, b.client.peer_id().to_string());
    assert!(a.client.site_peers().await.expect("peers").is_empty(), "the banned peer was disconnected");
    assert!(b.client.have_map(a.client.peer_id(), d).await.is_err(), "a banned peer gets nothing");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(a.client.bans().await.expect("bans").is_empty(), "the ban ended");
    b.client.dial(a_addr).await.expect("dial again");
    assert!(b.client.have_map(a.client.peer_id(), d).await.expect("request").is_some(), "served again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_of_a_piece_is_ordered_to_fetch_it_and_the_asker_waits() {
    let a = node(Some(psk(4)), vec![]).await;
    let b = node(Some(psk(4)), vec![]).await;
    b.client.dial(address(&a).await).await.expect("dial");
    let data = blob(2 * PIECE_SIZE as usize);
    let d = Digest::of(&data);
    let origin = Origin { size: data.len() as u64, registry: "registry.local".into(), repo: "team/model".into() };
    // Without a hint, a node holding nothing says so at once.
    let plain = b.client.piece(a.client.peer_id(), d, 1, None).await.expect("request");
    assert!(matches!(plain, PieceAnswer::NotHere), "{plain:?}");
    // With one, it gets an order, and the asker gets the piece once the order is carried out.
    let (store, orders) = (a.store.clone(), &a.orders);
    let fetch = async {
        let order = orders.lock().await.recv().await.expect("an order");
        assert_eq!((order.digest, order.index, order.origin.repo.as_str()), (d, 1, "team/model"));
        assert_eq!(order.from, b.client.peer_id());
        let p = store.begin(&d, order.origin.size).expect("begin").expect("partial");
        assert!(matches!(p.poll(PIECE_SIZE..2 * PIECE_SIZE), crate::store::RangeState::Claimed(_)));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let piece = data[PIECE_SIZE as usize..].to_vec();
        tokio::task::spawn_blocking(move || p.write_piece(1, &piece, true)).await.expect("join").expect("write");
    };
    let (answer, ()) = tokio::join!(b.client.piece(a.client.peer_id(), d, 1, Some(origin)), fetch);
    assert_eq!(bytes(answer.expect("request")), data[PIECE_SIZE as usize..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_keep_to_the_rate_cap() {
    let a = node(Some(psk(2)), vec![]).await;
    let data = blob(6 * PIECE_SIZE as usize);
    let d = Digest::of(&data);
    a.store.put(&d, &data).expect("put");
    let b = limited_node(Some(psk(2)), vec![], None, Some(2 * PIECE_SIZE)).await;
    b.client.dial(address(&a).await).await.expect("dial");
    let started = std::time::Instant::now();
    for i in 0..6 {
        bytes(b.client.piece(a.client.peer_id(), d, i, None).await.expect("piece"));
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(1800), "the download cap did not hold: 6 MiB in {elapsed:?}");
    let t = b.client.traffic_with(&a.client.peer_id());
    assert_eq!(t.bytes_in, 6 * PIECE_SIZE, "per-peer bytes in");
    assert!(t.rate > 0.0, "the peer's rate was measured");
    assert_eq!(a.client.traffic_with(&b.client.peer_id()).bytes_out, 6 * PIECE_SIZE, "per-peer bytes out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarm_order_requests_reach_the_named_peer_and_come_back_answered() {
    use crate::prewarm::order::{Order, SigningKey};
    use orders::{OrderRequest, OrderResponse};
    let a = node(Some(psk(7)), vec![]).await;
    let a_addr = address(&a).await;
    let b = node(Some(psk(7)), vec![a_addr.clone()]).await;
    b.client.dial(a_addr).await.expect("connects");
    // A's name as B learned it from identify.
    let mut found = None;
    for _ in 0..100 {
        let peers = b.client.site_peers().await.expect("peers");
        if let Some(p) = peers.iter().find(|p| p.id == a.client.peer_id() && p.name.is_some()) {
            found = p.name.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let name = found.expect("B learns A's node name");
    assert_eq!(b.client.peer_named(&name).await.expect("peers"), Some(a.client.peer_id()));
    assert_eq!(b.client.peer_named("no-such-node").await.expect("peers"), None);

    let order = Order { id: "1".into(), node: name, image: "r.local/x:1".into(), wave: 0, issued_at: 1, expires_at: 2, rate: None };
    let signed = SigningKey::generate().sign(&order);
    let a_id = a.client.peer_id();
    let answering = tokio::spawn(async move {
        let inbound = a.prewarm.lock().await.recv().await.expect("a request arrives");
        let seen = inbound.request.clone();
        let _ = inbound.reply.send(OrderResponse::Refused("checked and refused".into()));
        (seen, a)
    });
    let answer = b.client.order_request(a_id, OrderRequest::Deliver(signed.clone())).await;
    let (seen, _a) = answering.await.expect("answered");
    assert_eq!(seen, OrderRequest::Deliver(signed));
    assert_eq!(answer.expect("an answer"), OrderResponse::Refused("checked and refused".into()));
}

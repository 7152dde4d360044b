//! P2P fetching on a real site: ferry nodes in network namespaces on one LAN, the origin
//! registry behind a `tbf`-shaped WAN link, origin bytes counted in the registry's access log.
//! Nodes pulling at once and one after another, a node killed mid-transfer, a poisoned peer
//! (the test-only fault switch `FERRY_TEST_FAULT_CORRUPT_SERVED_PIECES`), the origin stopped
//! after one node has the image, and a node with the wrong cluster key.

use std::time::Duration;

use crate::harness::netns::{Site, WanShape};
use crate::harness::registry::Registry;
use crate::harness::swarm::{cluster_key, origin_blob_bytes, start_nodes, SiteNode};
use crate::harness::{random_bytes, sha256_hex, temp_dir};

const REPO: &str = "team/model";

/// An image in the origin: its blobs (digest, size) and its manifest's digest.
struct Image {
    blobs: Vec<(String, u64)>,
    manifest: String,
}

impl Image {
    fn blob_bytes(&self) -> u64 {
        self.blobs.iter().map(|(_, n)| n).sum()
    }
}

/// Pushes a config and layers of `layer_mib` MiB of random bytes, and a manifest naming them.
fn push_image(site: &Site, origin: &Registry, seed: u64, layer_mib: &[usize]) -> Image {
    let work = temp_dir("p2p-image");
    let config = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":{seed}}}");
    let mut files = vec![("application/vnd.oci.image.config.v1+json", config.into_bytes())];
    for (i, mib) in layer_mib.iter().enumerate() {
        files.push(("application/vnd.oci.image.layer.v1.tar", random_bytes(seed * 100 + i as u64, mib << 20)));
    }
    let mut descriptors = Vec::new();
    let mut blobs = Vec::new();
    for (i, (media_type, data)) in files.iter().enumerate() {
        let path = work.path().join(format!("blob{i}"));
        std::fs::write(&path, data).expect("write blob");
        let (digest, _) = origin.push_blob_from(site, "origin", REPO, &path);
        descriptors.push(serde_json::json!({"mediaType": media_type, "digest": digest, "size": data.len()}));
        blobs.push((digest, data.len() as u64));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptors[0],
        "layers": descriptors[1..],
    })
    .to_string();
    let path = work.path().join("manifest.json");
    std::fs::write(&path, &manifest).expect("write manifest");
    let url = format!("{}/v2/{REPO}/manifests/v1", origin.url());
    let put = site.curl(
        "origin",
        &[
            "-X",
            "PUT",
            "-H",
            "content-type: application/vnd.oci.image.manifest.v1+json",
            "-T",
            path.to_str().expect("utf-8"),
            "-w",
            "%{http_code}",
            &url,
        ],
        Duration::from_secs(20),
    );
    assert!(put.stdout.trim().ends_with("201"), "PUT manifest: {put:?}");
    Image { blobs, manifest: format!("sha256:{}", sha256_hex(manifest.as_bytes())) }
}

/// Pulls the image through `node` (manifest by digest, then every blob) and checks every digest.
fn pull(site: &Site, node: &SiteNode, image: &Image) {
    let (status, got) = node.get(site, REPO, "manifests", &image.manifest);
    assert_eq!((status, got.as_str()), (200, image.manifest.as_str()), "manifest through node {}:\n{}", node.index, site.logs());
    for (digest, _) in &image.blobs {
        let (status, got) = node.get(site, REPO, "blobs", digest);
        assert_eq!((status, got.as_str()), (200, digest.as_str()), "blob through node {}:\n{}", node.index, site.logs());
    }
}

fn pull_all_at_once(site: &Site, nodes: &[&SiteNode], image: &Image) {
    std::thread::scope(|s| {
        for node in nodes {
            s.spawn(|| pull(site, node, image));
        }
    });
}

/// A site of `nodes` namespaces behind a `wan` link, its origin holding an image (see
/// [`push_image`]), and the site's cluster key (in `keys`, with any other key a test makes).
struct Setup {
    site: Site,
    origin: Registry,
    image: Image,
    keys: tempfile::TempDir,
    key: std::path::PathBuf,
}

async fn setup(nodes: usize, wan: WanShape, seed: u64, layer_mib: &[usize]) -> Setup {
    let site = Site::new(nodes, wan);
    let origin = Registry::plain_in(&site, "origin").await;
    let image = push_image(&site, &origin, seed, layer_mib);
    let keys = temp_dir("p2p-key");
    let key = cluster_key(keys.path(), "site.key");
    Setup { site, origin, image, keys, key }
}

/// Waits (30 s) until each of `nodes` has `peers` peers.
fn wait_connected(site: &Site, nodes: &[&SiteNode], peers: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while nodes.iter().any(|n| n.peer_count() < peers) {
        assert!(std::time::Instant::now() < deadline, "the nodes did not connect:\n{}", site.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Four nodes pulling a 40 MiB image at once fetch it about once from the origin (the fifth, idle,
/// fetches its share of the segments for them); the fifth pulling later fetches nothing from the
/// origin: the rest comes from its peers.
#[tokio::test(flavor = "multi_thread")]
async fn a_site_pulls_an_image_across_the_wan_about_once() {
    let Setup { site, origin, image, keys: _keys, key } = setup(5, WanShape::mbit(100), 1, &[32, 8]).await;
    let nodes = start_nodes(&site, &origin, &key, 5, |_| vec![]);
    let first_four: Vec<&SiteNode> = nodes[..4].iter().collect();
    pull_all_at_once(&site, &first_four, &image);
    origin.settle_log().await;
    let at_once = origin_blob_bytes(&origin);
    let size = image.blob_bytes();
    eprintln!("4 nodes at once: {at_once} origin bytes for {size} bytes of blobs ({:.2}x)", at_once as f64 / size as f64);
    assert!(at_once as f64 <= 1.25 * size as f64, "the WAN carried {at_once} bytes for {size}:\n{}", site.logs());
    let from_peers: f64 = first_four.iter().map(|n| n.metric(&site, "ferry_bytes_served_total", &[("source", "peer")])).sum();
    assert!(from_peers >= 2.0 * size as f64, "clients got only {from_peers} bytes that came from peers");

    pull(&site, &nodes[4], &image);
    origin.settle_log().await;
    assert_eq!(origin_blob_bytes(&origin), at_once, "a later pull went to the origin although peers had the image");
    // Its cache already held the segments it fetched for the others as their owner.
    let late = nodes[4].metric(&site, "ferry_bytes_served_total", &[("source", "peer")]);
    let owned = nodes[4].metric(&site, "ferry_bytes_served_total", &[("source", "cache")]);
    assert!((late + owned) as u64 >= size && late > owned, "the late node served {late} bytes from peers, {owned} from its cache");
    let manifest_only = nodes[4].metric(&site, "ferry_bytes_served_total", &[("source", "origin")]);
    assert!(manifest_only < 4096.0, "the late node served {manifest_only} bytes from the origin");
    let status = nodes[4].status().expect("status");
    let got_in = status["p2p"]["traffic"]["bytes_in"].as_u64().unwrap_or(0);
    assert_eq!(got_in, late as u64, "status and metrics disagree on the bytes from peers");
}

/// A node prefers peers of its own region: with the image on a same-region peer and on a peer of
/// another region, every byte comes from the same-region one.
#[tokio::test(flavor = "multi_thread")]
async fn peers_of_the_same_region_are_preferred() {
    let Setup { site, origin, image, keys: _keys, key } = setup(3, WanShape::mbit(200), 5, &[9]).await;
    let near = SiteNode::start(&site, 0, &origin, &key, None, &[]);
    let boot = Some(near.address(&site));
    let far = SiteNode::start_in_region(&site, 2, &origin, &key, boot.clone(), &[], "far");
    let asker = SiteNode::start(&site, 1, &origin, &key, boot, &[]);
    wait_connected(&site, &[&near, &far, &asker], 2);
    pull(&site, &near, &image);
    pull(&site, &far, &image);
    pull(&site, &asker, &image);
    let status = asker.status().expect("status");
    let peers = status["p2p"]["peers"].as_array().cloned().unwrap_or_default();
    let bytes_from = |id: &str| peers.iter().find(|p| p["peer_id"] == id).map_or(0, |p| p["traffic"]["bytes_in"].as_u64().unwrap_or(0));
    // What the asker did not hold already (segments it fetched as an owner for `near`) came
    // from `near`, none from `far`.
    let served = |k: &str| status["traffic"][k].as_u64().unwrap_or(0);
    assert!(served("served_peer_bytes") + served("served_cache_bytes") >= image.blob_bytes(), "{status}");
    assert_eq!(bytes_from(&near.peer_id), served("served_peer_bytes"), "not all peer bytes came from the same-region peer: {status}");
    assert_eq!(bytes_from(&far.peer_id), 0, "bytes came from the other region: {status}");
}

/// Within a region, a node asks the holders of its own zone first (`FERRY_ZONE`, as the
/// DaemonSet sets it from the pod's topology label): with the blob on two peers, one in each
/// zone, every peer byte comes from the same-zone one.
#[tokio::test(flavor = "multi_thread")]
async fn peers_of_the_same_zone_are_asked_first() {
    let Setup { site, origin, image, keys: _keys, key } = setup(3, WanShape::mbit(200), 5, &[9]).await;
    let near = SiteNode::start(&site, 0, &origin, &key, None, &[("FERRY_ZONE", "rack-1")]);
    let boot = Some(near.address(&site));
    let other = SiteNode::start(&site, 2, &origin, &key, boot.clone(), &[("FERRY_ZONE", "rack-2")]);
    pull(&site, &near, &image);
    pull(&site, &other, &image);
    let asker = SiteNode::start(&site, 1, &origin, &key, boot, &[("FERRY_ZONE", "rack-1")]);
    wait_connected(&site, &[&near, &other, &asker], 2);
    pull(&site, &asker, &image);
    let status = asker.status().expect("status");
    assert_eq!(status["p2p"]["zone"], "rack-1", "{status}");
    let peers = status["p2p"]["peers"].as_array().cloned().unwrap_or_default();
    let peer = |id: &str| peers.iter().find(|p| p["peer_id"] == id).cloned().unwrap_or_else(|| panic!("no peer {id}: {status}"));
    assert_eq!((&peer(&near.peer_id)["zone"], &peer(&other.peer_id)["zone"]), (&"rack-1".into(), &"rack-2".into()), "{status}");
    let served = |k: &str| status["traffic"][k].as_u64().unwrap_or(0);
    assert!(served("served_peer_bytes") >= image.blob_bytes() / 2, "the asker's pull came from peers: {status}");
    let bytes_from = |id: &str| peer(id)["traffic"]["bytes_in"].as_u64().unwrap_or(0);
    assert_eq!(bytes_from(&near.peer_id), served("served_peer_bytes"), "not all peer bytes came from the same-zone peer: {status}");
    assert_eq!(bytes_from(&other.peer_id), 0, "bytes came from the other zone: {status}");
}

/// A node killed with -9 in the middle of a simultaneous pull: the others still complete with
/// the right digests, and the segments it owned cross the WAN about once more at most (each
/// passes to the segment's next owner).
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_killed_mid_transfer_does_not_stop_the_others() {
    let Setup { site, origin, image, keys: _keys, key } = setup(4, WanShape::mbit(40), 2, &[48]).await;
    let mut nodes = start_nodes(&site, &origin, &key, 4, |_| vec![]);
    let victim = nodes.pop().expect("node 3");
    std::thread::scope(|s| {
        let site = &site;
        let image = &image;
        let pullers: Vec<_> = nodes.iter().map(|node| s.spawn(move || pull(site, node, image))).collect();
        let victim = &victim;
        let victim_client = s.spawn(move || victim.get(site, REPO, "blobs", &image.blobs[1].0));
        std::thread::sleep(Duration::from_secs(3));
        victim.kill9();
        let _ = victim_client.join();
        for p in pullers {
            p.join().expect("a pull through a surviving node failed");
        }
    });
    origin.settle_log().await;
    let bytes = origin_blob_bytes(&origin);
    eprintln!("with a node killed: {bytes} origin bytes for {} ({:.2}x)", image.blob_bytes(), bytes as f64 / image.blob_bytes() as f64);
    // The dead node's segments pass to one next owner each: what it had fetched is lost, not
    // fetched again by every survivor.
    assert!((bytes as f64) < 1.25 * image.blob_bytes() as f64, "the survivors refetched far too much from the origin");
}

/// A peer that corrupts every piece it serves: the others' pulls still complete with the right
/// digest (the bad pieces are refetched from the origin) and the liar is banned.
#[tokio::test(flavor = "multi_thread")]
async fn a_poisoned_peer_is_caught_and_banned() {
    let Setup { site, origin, image, keys: _keys, key } = setup(3, WanShape::mbit(200), 3, &[12]).await;
    let nodes =
        start_nodes(&site, &origin, &key, 3, |i| if i == 0 { vec![("FERRY_TEST_FAULT_CORRUPT_SERVED_PIECES", "1")] } else { vec![] });
    pull(&site, &nodes[0], &image);
    let honest: Vec<&SiteNode> = nodes[1..].iter().collect();
    pull_all_at_once(&site, &honest, &image);
    for node in &honest {
        let status = node.status().expect("status");
        let bans = status["p2p"]["bans"].as_array().cloned().unwrap_or_default();
        assert!(bans.iter().any(|b| b["peer_id"] == nodes[0].peer_id.as_str()), "node {} did not ban the liar: {status}", node.index);
        assert!(node.metric(&site, "ferry_peer_bans_total", &[]) >= 1.0);
        assert!(node.metric(&site, "ferry_peer_fallbacks_total", &[("reason", "repair")]) >= 1.0);
    }
}

/// The origin stops after one node has the image: the others pull it (by digest) entirely from
/// the site (peers, and the segments they fetched for node 0 as owners); a node with another
/// cluster key gets nothing.
#[tokio::test(flavor = "multi_thread")]
async fn with_the_origin_gone_the_site_serves_itself_and_outsiders_get_nothing() {
    let Setup { site, mut origin, image, keys, key } = setup(5, WanShape::mbit(200), 4, &[10, 3]).await;
    let other_key = cluster_key(keys.path(), "other.key");
    let nodes = start_nodes(&site, &origin, &key, 4, |_| vec![]);
    pull(&site, &nodes[0], &image);
    origin.kill();
    let rest: Vec<&SiteNode> = nodes[1..].iter().collect();
    pull_all_at_once(&site, &rest, &image);
    // Each node's cache held the segments it had fetched for node 0 as their owner; together
    // those are at most one image, so the three nodes got at least two images from peers.
    let mut from_peers = 0.0;
    for node in &rest {
        let served = |source| node.metric(&site, "ferry_bytes_served_total", &[("source", source)]);
        let (peer, cache, origin) = (served("peer"), served("cache"), served("origin"));
        assert!(
            (peer + cache) as u64 >= image.blob_bytes() && origin == 0.0,
            "node {}: served {peer} from peers, {cache} from cache, {origin} from the origin",
            node.index
        );
        from_peers += peer;
    }
    assert!(from_peers as u64 >= 2 * image.blob_bytes(), "only {from_peers} bytes came from peers");
    let outsider = SiteNode::start(&site, 4, &origin, &other_key, Some(nodes[0].address(&site)), &[]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(outsider.peer_count(), 0, "a node with another key joined");
    let (status, _) = outsider.get(&site, REPO, "blobs", &image.blobs[1].0);
    assert!(status >= 500, "the outsider got the blob ({status})");
}

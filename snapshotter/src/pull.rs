//! `ferry pull IMAGE`: puts an image into containerd through the node's mirror, its layers
//! prepared on the ferry snapshotter with the labels a remote snapshotter reads — so lazy layers
//! are mounted at once and never downloaded, and `ctr run --snapshotter ferry IMAGE` starts it.
//!
//! containerd 1.6's `ctr image pull` cannot do this: it fetches every layer, then unpacks without
//! the `containerd.io/snapshot.ref` label. So this does what containerd's own unpacking pull does,
//! over containerd's API ([`crate::containerd`]): manifest, index and config go into the content
//! store with the garbage-collection labels containerd's pull would set; each layer is Prepared
//! with `containerd.io/snapshot.ref` (and CRI's layer labels); a layer the snapshotter reports as
//! already there is lazy (or was pulled before); any other is downloaded through the mirror,
//! unpacked by containerd's diff service, checked against the config's diff ID and committed.
//! Everything happens under one lease, and the image record is written last.
//!
//! Invariants: every manifest, index and config is checked against its digest before use; an
//! unpacked layer whose diff ID differs from the config's is removed, and the pull fails.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use p2p_node::Digest;
use serde::Serialize;

use crate::containerd::{Containerd, Prepared};
use crate::convert::oci::{self, Descriptor, MAX_METADATA};
use crate::service::api::types;
use crate::Error;

/// Where to pull from and into.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The node's mirror, `http://HOST:PORT`.
    pub mirror: String,
    /// containerd's socket.
    pub containerd: std::path::PathBuf,
    pub namespace: String,
    pub snapshotter: String,
}

/// How a layer got into the snapshotter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerOutcome {
    /// Mounted lazily: nothing downloaded yet.
    Lazy,
    /// Downloaded through the mirror and unpacked.
    Unpacked,
    /// The snapshot was there already.
    Present,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub digest: Digest,
    pub size: u64,
    pub outcome: LayerOutcome,
}

#[derive(Debug, Clone, Serialize)]
pub struct PullReport {
    pub image: String,
    pub manifest: Digest,
    pub layers: Vec<LayerReport>,
    pub seconds: f64,
}

/// `HOST/REPO[:TAG|@DIGEST]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRef {
    pub host: String,
    pub repo: String,
    pub reference: String,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, Error> {
        let bad = |why: &str| Error::malformed("image reference", format!("{s:?}: {why}"));
        let (host, path) = s.split_once('/').ok_or_else(|| bad("expected HOST/REPO[:TAG|@DIGEST]"))?;
        if !(host.contains('.') || host.contains(':') || host == "localhost") {
            return Err(bad("name the registry host first (e.g. registry.example.com/REPO:TAG)"));
        }
        let (repo, reference) = match path.split_once('@') {
            Some((r, d)) => (r, d.parse::<Digest>().map_err(|e| bad(&e.to_string()))?.to_string()),
            None => match path.rsplit_once(':') {
                Some((r, t)) if !t.contains('/') => (r, t.to_string()),
                _ => (path, "latest".to_string()),
            },
        };
        let repo_ok = !repo.is_empty()
            && repo
                .split('/')
                .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)));
        let tag_ok = !reference.is_empty() && reference.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b));
        if !repo_ok || !tag_ok {
            return Err(bad("invalid repository or tag"));
        }
        Ok(ImageRef { host: host.to_string(), repo: repo.to_string(), reference })
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = if self.reference.starts_with("sha256:") { '@' } else { ':' };
        write!(f, "{}/{}{sep}{}", self.host, self.repo, self.reference)
    }
}

/// Pulls `image` into containerd; see the module header.
pub async fn pull(image: &ImageRef, opts: &PullOptions) -> Result<PullReport, Error> {
    let started = Instant::now();
    let mirror = Mirror::new(&opts.mirror, image)?;
    let mut top = mirror.manifest(&image.reference).await?;
    let mut manifest = top.clone();
    if oci::is_index(&top.desc.media_type, &top.json) {
        let list: Vec<Descriptor> =
            serde_json::from_value(top.json["manifests"].clone()).map_err(|e| Error::malformed("image index", e.to_string()))?;
        let pick = oci::pick_platform(&list).ok_or_else(|| Error::malformed("image index", "no linux/amd64 image"))?;
        manifest = mirror.manifest(&pick.digest.to_string()).await?;
    }
    let config_desc: Descriptor =
        serde_json::from_value(manifest.json["config"].clone()).map_err(|e| Error::malformed("image manifest's config", e.to_string()))?;
    let layers: Vec<Descriptor> =
        serde_json::from_value(manifest.json["layers"].clone()).map_err(|e| Error::malformed("image manifest's layers", e.to_string()))?;
    let config = mirror.small_blob(&config_desc).await?;
    let config_json: serde_json::Value = serde_json::from_slice(&config).map_err(|e| Error::malformed("image config", e.to_string()))?;
    let diff_ids: Vec<Digest> = serde_json::from_value(config_json["rootfs"]["diff_ids"].clone())
        .map_err(|e| Error::malformed("image config's diff_ids", e.to_string()))?;
    if diff_ids.len() != layers.len() {
        return Err(Error::malformed("image", format!("{} layers but {} diff_ids", layers.len(), diff_ids.len())));
    }
    let chains = p2p_node::layers::chain_ids(&diff_ids);

    let mut cd = Containerd::connect(&opts.containerd, &opts.namespace).await?;
    cd.lease().await?;
    let result = async {
        let sn = &opts.snapshotter;
        // Content first, labelled as containerd's pull labels it, so that once the image record
        // exists the garbage collector keeps the config, the manifest and the snapshots.
        let mut config_labels = HashMap::new();
        if let Some(top_chain) = chains.last() {
            config_labels.insert(format!("containerd.io/gc.ref.snapshot.{sn}"), top_chain.to_string());
        }
        cd.write_content(&wire(&config_desc), config_labels, once(config)).await?;
        let mut labels: HashMap<String, String> =
            [("containerd.io/gc.ref.content.config".to_string(), config_desc.digest.to_string())].into();
        for (i, l) in layers.iter().enumerate() {
            labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), l.digest.to_string());
        }
        cd.write_content(&manifest.desc, labels, once(manifest.bytes.clone())).await?;
        if top.desc.digest != manifest.desc.digest {
            let labels = [("containerd.io/gc.ref.content.m.0".to_string(), manifest.desc.digest.clone())].into();
            cd.write_content(&top.desc, labels, once(std::mem::take(&mut top.bytes))).await?;
        }

        let mut reports = Vec::with_capacity(layers.len());
        let mut parent = String::new();
        for ((layer, diff_id), chain) in layers.iter().zip(&diff_ids).zip(&chains) {
            let chain = chain.to_string();
            let outcome = if cd.has_snapshot(sn, &chain).await? {
                LayerOutcome::Present
            } else {
                let labels: HashMap<String, String> = [
                    ("containerd.io/snapshot.ref", chain.clone()),
                    ("containerd.io/snapshot/cri.layer-digest", layer.digest.to_string()),
                    ("containerd.io/snapshot/cri.image-ref", image.to_string()),
                    ("containerd.io/snapshot/cri.manifest-digest", manifest.desc.digest.clone()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
                let key = format!("extract-{} {chain}", unique());
                match cd.prepare(sn, &key, &parent, labels).await? {
                    Prepared::Exists => LayerOutcome::Lazy,
                    Prepared::Mounts(mounts) => {
                        let unpacked = unpack(&cd, &mirror, layer, diff_id, mounts).await;
                        match unpacked {
                            Ok(()) => cd.commit(sn, &chain, &key).await?,
                            Err(e) => {
                                let _ = cd.remove(sn, &key).await;
                                return Err(e);
                            }
                        }
                        LayerOutcome::Unpacked
                    }
                }
            };
            tracing::info!(layer = %layer.digest, ?outcome, "layer ready");
            reports.push(LayerReport { digest: layer.digest, size: layer.size, outcome });
            parent = chain;
        }
        cd.set_image(&image.to_string(), &top.desc).await?;
        Ok(reports)
    }
    .await;
    let ended = cd.end_lease().await;
    let layers = result?;
    ended?;
    let manifest = manifest.desc.digest.parse()?;
    Ok(PullReport { image: image.to_string(), manifest, layers, seconds: started.elapsed().as_secs_f64() })
}

/// Downloads `layer` through the mirror into containerd's content store and unpacks it onto
/// `mounts`, checking what was applied against `diff_id`.
async fn unpack(cd: &Containerd, mirror: &Mirror, layer: &Descriptor, diff_id: &Digest, mounts: Vec<types::Mount>) -> Result<(), Error> {
    let desc = wire(layer);
    if !cd.has_content(&desc.digest).await? {
        let labels = [("containerd.io/uncompressed".to_string(), diff_id.to_string())].into();
        cd.write_content(&desc, labels, mirror.blob_stream(layer).await?).await?;
    }
    let applied = cd.apply(&desc, mounts).await?;
    if applied != diff_id.to_string() {
        return Err(Error::DigestMismatch { what: format!("unpacked layer {}", layer.digest), expected: *diff_id, got: applied.parse()? });
    }
    Ok(())
}

fn wire(d: &Descriptor) -> types::Descriptor {
    types::Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.to_string(),
        size: d.size as i64,
        annotations: d.annotations.clone().into_iter().collect(),
    }
}

fn once(bytes: Vec<u8>) -> futures_util::stream::Iter<std::vec::IntoIter<Result<bytes::Bytes, Error>>> {
    futures_util::stream::iter(vec![Ok(bytes::Bytes::from(bytes))])
}

fn unique() -> u128 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos()
}

/// A manifest or index as fetched, checked against its digest.
#[derive(Clone)]
struct Fetched {
    desc: types::Descriptor,
    bytes: Vec<u8>,
    json: serde_json::Value,
}

/// The node's mirror, for one repository of one upstream.
struct Mirror {
    http: reqwest::Client,
    base: String,
    ns: String,
}

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
                      application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

impl Mirror {
    fn new(mirror: &str, image: &ImageRef) -> Result<Mirror, Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| Error::Mirror { what: "an HTTP client".into(), why: e.to_string() })?;
        Ok(Mirror { http, base: format!("{}/v2/{}", mirror.trim_end_matches('/'), image.repo), ns: image.host.clone() })
    }

    async fn get(&self, url: String, accept: Option<&str>) -> Result<reqwest::Response, Error> {
        let mut request = self.http.get(&url).query(&[("ns", &self.ns)]);
        if let Some(a) = accept {
            request = request.header("accept", a);
        }
        let what = || format!("GET {url}");
        let resp = request.send().await.map_err(|e| Error::Mirror { what: what(), why: e.to_string() })?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(Error::Mirror { what: what(), why: format!("{status}: {}", body.chars().take(300).collect::<String>()) });
        }
        Ok(resp)
    }

    async fn bounded_body(&self, resp: reqwest::Response, what: &str) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Error::Mirror { what: what.to_string(), why: e.to_string() })?;
            if out.len() as u64 + chunk.len() as u64 > MAX_METADATA {
                return Err(Error::TooLarge { what: what.to_string(), size: out.len() as u64 + chunk.len() as u64, limit: MAX_METADATA });
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    async fn manifest(&self, reference: &str) -> Result<Fetched, Error> {
        let resp = self.get(format!("{}/manifests/{reference}", self.base), Some(ACCEPT)).await?;
        let media_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let bytes = self.bounded_body(resp, &format!("manifest {reference}")).await?;
        let digest = Digest::of(&bytes);
        if let Ok(expected) = reference.parse::<Digest>() {
            if expected != digest {
                return Err(Error::DigestMismatch { what: format!("manifest {reference}"), expected, got: digest });
            }
        }
        let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| Error::malformed("image manifest", e.to_string()))?;
        let media_type = match json["mediaType"].as_str() {
            Some(m) if media_type.is_empty() || media_type.starts_with("application/json") => m.to_string(),
            _ => media_type,
        };
        let desc = types::Descriptor { media_type, digest: digest.to_string(), size: bytes.len() as i64, annotations: HashMap::new() };
        Ok(Fetched { desc, bytes, json })
    }

    async fn small_blob(&self, d: &Descriptor) -> Result<Vec<u8>, Error> {
        let what = format!("blob {}", d.digest);
        let bytes = self.bounded_body(self.get(format!("{}/blobs/{}", self.base, d.digest), None).await?, &what).await?;
        let got = Digest::of(&bytes);
        if got != d.digest {
            return Err(Error::DigestMismatch { what, expected: d.digest, got });
        }
        Ok(bytes)
    }

    /// The blob's bytes as they arrive (containerd checks them against the digest on commit).
    async fn blob_stream(&self, d: &Descriptor) -> Result<impl futures_util::Stream<Item = Result<bytes::Bytes, Error>> + Unpin, Error> {
        let what = format!("blob {}", d.digest);
        let resp = self.get(format!("{}/blobs/{}", self.base, d.digest), None).await?;
        Ok(resp.bytes_stream().map(move |c| c.map_err(|e| Error::Mirror { what: what.clone(), why: e.to_string() })))
    }
}

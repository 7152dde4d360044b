//! OCI image layout directories (`oci-layout`, `index.json`, `blobs/sha256/`): the local form
//! images are converted in. Blobs are written to temp files and renamed into place.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use p2p_node::Digest;
use serde::{Deserialize, Serialize};

use crate::Error;

pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Manifests, indexes and configs are small; anything bigger is refused.
pub const MAX_METADATA: u64 = 4 << 20;

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Index {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "String::is_empty")]
    media_type: String,
    manifests: Vec<Descriptor>,
}

/// Whether a manifest (by its media type, or its shape) is an index of per-platform manifests.
pub fn is_index(media_type: &str, manifest: &serde_json::Value) -> bool {
    media_type == MT_OCI_INDEX || media_type == MT_DOCKER_LIST || manifest.get("manifests").is_some()
}

/// The image an index gives for this converter: linux/amd64, or its only entry.
pub fn pick_platform(list: &[Descriptor]) -> Option<&Descriptor> {
    let linux_amd64 = |d: &&Descriptor| d.platform.as_ref().is_some_and(|p| p["os"] == "linux" && p["architecture"] == "amd64");
    list.iter().find(linux_amd64).or(if list.len() == 1 { list.first() } else { None })
}

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub struct Layout {
    dir: PathBuf,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(what, e)
}

impl Layout {
    /// Opens an existing layout.
    pub fn open(dir: &Path) -> Result<Layout, Error> {
        let marker = dir.join("oci-layout");
        let text =
            fs::read_to_string(&marker).map_err(io(format!("reading {} (is {} an OCI layout?)", marker.display(), dir.display())))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::malformed("oci-layout", e.to_string()))?;
        if v.get("imageLayoutVersion").and_then(|v| v.as_str()) != Some("1.0.0") {
            return Err(Error::malformed("oci-layout", format!("unsupported layout {text:?}")));
        }
        Ok(Layout { dir: dir.to_path_buf() })
    }

    /// Opens a layout, creating an empty one if the directory holds none.
    pub fn create(dir: &Path) -> Result<Layout, Error> {
        if dir.join("oci-layout").exists() {
            return Layout::open(dir);
        }
        fs::create_dir_all(dir.join("blobs/sha256")).map_err(io(format!("creating {}", dir.display())))?;
        write_atomic(&dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let index = Index { schema_version: 2, media_type: MT_OCI_INDEX.into(), manifests: Vec::new() };
        write_atomic(&dir.join("index.json"), &serde_json::to_vec(&index).map_err(|e| Error::malformed("index", e.to_string()))?)?;
        Ok(Layout { dir: dir.to_path_buf() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(d.hex())
    }

    /// A temp path in the blob folder, for a blob being written.
    pub fn temp_path(&self, what: &str) -> PathBuf {
        self.dir.join("blobs/sha256").join(format!(".tmp-{what}-{}", std::process::id()))
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Reads a small blob (manifest, config) and checks its digest.
    pub fn read_small(&self, d: &Digest) -> Result<Vec<u8>, Error> {
        let path = self.blob_path(d);
        let len = fs::metadata(&path).map_err(io(format!("blob {d} in {}", self.dir.display())))?.len();
        if len > MAX_METADATA {
            return Err(Error::TooLarge { what: format!("blob {d}"), size: len, limit: MAX_METADATA });
        }
        let bytes = fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
        let got = Digest::of(&bytes);
        if got != *d {
            return Err(Error::DigestMismatch { what: format!("blob in {}", self.dir.display()), expected: *d, got });
        }
        Ok(bytes)
    }

    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, Error> {
        let d = Digest::of(bytes);
        if !self.has_blob(&d) {
            write_atomic(&self.blob_path(&d), bytes)?;
        }
        Ok(d)
    }

    /// Moves a finished temp file into place as blob `d`.
    pub fn commit_temp(&self, temp: &Path, d: &Digest) -> Result<(), Error> {
        fs::rename(temp, self.blob_path(d)).map_err(io(format!("storing blob {d}")))
    }

    /// The descriptor tagged `tag` (or the only one when `tag` is empty).
    pub fn resolve(&self, tag: &str) -> Result<Descriptor, Error> {
        let index = self.index()?;
        let found: Vec<&Descriptor> = if tag.is_empty() && index.manifests.len() == 1 {
            index.manifests.iter().collect()
        } else {
            index.manifests.iter().filter(|m| m.annotations.get(REF_NAME).map(String::as_str) == Some(tag)).collect()
        };
        match found[..] {
            [d] => Ok(d.clone()),
            [] => Err(Error::NotLazy(format!("no image tagged {tag:?} in {}", self.dir.display()))),
            _ => Err(Error::malformed("index.json", format!("tag {tag:?} names several images"))),
        }
    }

    /// Points `tag` at `desc` in index.json (replacing what the tag named before).
    pub fn tag(&self, desc: &Descriptor, tag: &str) -> Result<(), Error> {
        let mut index = self.index()?;
        index.manifests.retain(|m| m.annotations.get(REF_NAME).map(String::as_str) != Some(tag));
        let mut d = desc.clone();
        d.annotations.insert(REF_NAME.into(), tag.into());
        index.manifests.push(d);
        write_atomic(
            &self.dir.join("index.json"),
            &serde_json::to_vec_pretty(&index).map_err(|e| Error::malformed("index", e.to_string()))?,
        )
    }

    fn index(&self) -> Result<Index, Error> {
        let path = self.dir.join("index.json");
        let bytes = fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::malformed("index.json", e.to_string()))
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    fs::write(&tmp, data).map_err(io(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(io(format!("writing {}", path.display())))
}

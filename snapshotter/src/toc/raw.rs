//! The table-of-contents JSON both lazy formats use: eStargz's `stargz.index.json` and
//! zstd:chunked's manifest share the CRFS field names. One schema reads and writes both; fields
//! one dialect lacks are simply absent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

fn is_zero(n: &i64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RawToc {
    pub version: i64,
    pub entries: Vec<RawEntry>,
    /// zstd:chunked: digest of the tar-split data (absent when the layer carries none).
    #[serde(rename = "tarSplitDigest", default, skip_serializing_if = "String::is_empty")]
    pub tar_split_digest: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    #[serde(rename = "linkName", skip_serializing_if = "String::is_empty")]
    pub link_name: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub mode: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub size: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub uid: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub gid: i64,
    #[serde(rename = "userName", skip_serializing_if = "String::is_empty")]
    pub user_name: String,
    #[serde(rename = "groupName", skip_serializing_if = "String::is_empty")]
    pub group_name: String,
    /// RFC 3339.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub modtime: String,
    #[serde(rename = "devMajor", skip_serializing_if = "is_zero")]
    pub dev_major: i64,
    #[serde(rename = "devMinor", skip_serializing_if = "is_zero")]
    pub dev_minor: i64,
    /// Values are base64.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub digest: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub offset: i64,
    /// zstd:chunked: end of the file's last frame.
    #[serde(rename = "endOffset", skip_serializing_if = "is_zero")]
    pub end_offset: i64,
    /// eStargz: where this payload starts inside the decompressed stream at `offset`.
    #[serde(rename = "innerOffset", skip_serializing_if = "is_zero")]
    pub inner_offset: i64,
    #[serde(rename = "chunkOffset", skip_serializing_if = "is_zero")]
    pub chunk_offset: i64,
    #[serde(rename = "chunkSize", skip_serializing_if = "is_zero")]
    pub chunk_size: i64,
    #[serde(rename = "chunkDigest", skip_serializing_if = "String::is_empty")]
    pub chunk_digest: String,
    /// zstd:chunked: `""` for data, `"zeros"` for a hole.
    #[serde(rename = "chunkType", skip_serializing_if = "String::is_empty")]
    pub chunk_type: String,
    /// Ferry: this chunk is read at startup and is prefetched first.
    #[serde(rename = "ferryPrefetch", skip_serializing_if = "std::ops::Not::not")]
    pub prefetch: bool,
}

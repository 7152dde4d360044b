//! Test images for `ferry convert`, written as OCI layouts by hand (tar + gzip/zstd + JSON), so
//! that every byte of every layer is under the test's control:
//!
//! * [`debian_image`]: a real distribution rootfs, `debootstrap --variant=minbase bookworm`, packed
//!   as one gzip layer. Built once into `target/ferry-fixtures/` (or `$FERRY_FIXTURES`) under a
//!   `flock`, and reused by later runs. Returns `None` (after a loud message) when debootstrap
//!   fails for network reasons; panics when it is not installed or fails otherwise.
//! * [`build_tricky`]: three layers, one per source compression (gzip GNU-format tar, zstd PAX tar,
//!   uncompressed tar), with hardlinks, symlinks (relative, absolute, dangling, long targets),
//!   setuid/setgid/sticky modes, user.* xattrs, a fifo, empty files, a 5 MiB file, names over
//!   100 bytes, a non-ASCII name, uid/gid 1000/2000 and 3000000, a whiteout `.wh.foo` and an
//!   opaque-dir marker `.wh..wh..opq`. Needs root (chown, mkfifo, xattrs).
//!
//! And the tools to compare images: decompress/extract a layer with the stock tools, `tar -tvf`
//! listings, and a listing of a tree (path, type, mode, owner, link count, link target, sha256
//! of content, xattrs) that is compared line by line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};

use super::image::{read_layout_tag, TestImage};
use super::{digest_of, random_bytes, require_binary, run_cmd, run_ok, sha256_file};

pub const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const ZSTD_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const TAR_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

const T: Duration = Duration::from_secs(300);

/// Where fixtures that outlive a test run go: `$FERRY_FIXTURES`, else `target/ferry-fixtures`.
pub fn fixtures_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FERRY_FIXTURES") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("CARGO_TARGET_TMPDIR has a parent").join("ferry-fixtures")
}

/// Runs `sh -c SCRIPT sh ARGS...`, panicking with its output unless it succeeds.
pub fn sh(script: &str, args: &[&str]) -> String {
    run_ok(Command::new("sh").arg("-c").arg(script).arg("sh").args(args), T)
}

/// One layer blob on disk, ready to go into a layout.
#[derive(Debug, Clone)]
pub struct LayerFile {
    pub blob: PathBuf,
    pub media_type: String,
    /// `sha256:` of the uncompressed tar.
    pub diff_id: String,
}

/// Compresses `tar` as `media_type` (gzip -6, zstd -3, or as is) into `tar` + suffix.
pub fn compress_layer(tar: &Path, media_type: &str) -> LayerFile {
    let diff_id = format!("sha256:{}", sha256_file(tar).expect("hash layer tar"));
    let tar_s = tar.to_string_lossy().to_string();
    let blob = match media_type {
        GZIP_LAYER => {
            sh(r#"gzip -6 -n -c "$1" > "$1.gz""#, &[&tar_s]);
            PathBuf::from(format!("{tar_s}.gz"))
        }
        ZSTD_LAYER => {
            require_binary("zstd", "zstd");
            sh(r#"zstd -q -3 -c "$1" > "$1.zst""#, &[&tar_s]);
            PathBuf::from(format!("{tar_s}.zst"))
        }
        TAR_LAYER => tar.to_path_buf(),
        other => panic!("unknown layer media type {other}"),
    };
    LayerFile { blob, media_type: media_type.to_string(), diff_id }
}

/// `tar -C DIR -cf OUT .` with numeric owners, sorted names, in `format` (gnu, pax); PAX
/// archives carry every xattr.
pub fn pack_tar(dir: &Path, out: &Path, format: &str) {
    let xattrs = if format == "pax" { "--xattrs --xattrs-include=*" } else { "" };
    sh(
        &format!(r#"tar --numeric-owner --sort=name --format={format} {xattrs} -C "$1" -cf "$2" ."#),
        &[&dir.to_string_lossy(), &out.to_string_lossy()],
    );
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("no OCI architecture name for {other}"),
    }
}

fn write_blob(layout: &Path, data: &[u8]) -> String {
    let digest = digest_of(data);
    let path = layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    std::fs::write(&path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    digest
}

/// Writes an OCI layout at `layout` holding one image tagged `tag`: `layers` (bottom first), a
/// config with `cmd`, `env`, and the layers' diff_ids. Returns it as a [`TestImage`].
pub fn write_layout(layout: &Path, tag: &str, layers: &[LayerFile], cmd: &[&str], env: &[&str]) -> TestImage {
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("create blobs/sha256");
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("write oci-layout");
    let mut descriptors = Vec::new();
    for layer in layers {
        let hex = sha256_file(&layer.blob).expect("hash layer blob");
        let size = std::fs::metadata(&layer.blob).expect("stat layer blob").len();
        let target = blobs.join(&hex);
        if !target.exists() {
            let partial = blobs.join(format!(".{hex}.partial"));
            std::fs::copy(&layer.blob, &partial).expect("copy layer blob into layout");
            std::fs::rename(&partial, &target).expect("rename layer blob");
        }
        descriptors.push(json!({"mediaType": layer.media_type, "digest": format!("sha256:{hex}"), "size": size}));
    }
    let config = json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": oci_arch(),
        "os": "linux",
        "config": {"Env": env, "Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
        "history": layers.iter().enumerate().map(|(i, _)| json!({"created": "2024-01-01T00:00:00Z", "created_by": format!("ferry e2e layer {i}")})).collect::<Vec<_>>(),
    });
    let config_bytes = serde_json::to_vec(&config).expect("serialize config");
    let config_digest = write_blob(layout, &config_bytes);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_bytes.len()},
        "layers": descriptors,
    });
    let manifest_bytes = serde_json::to_vec(&manifest).expect("serialize manifest");
    let manifest_digest = write_blob(layout, &manifest_bytes);
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": manifest_digest,
            "size": manifest_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    let partial = layout.join(".index.json.partial");
    std::fs::write(&partial, serde_json::to_vec(&index).expect("serialize index")).expect("write index.json");
    std::fs::rename(&partial, layout.join("index.json")).expect("rename index.json");
    read_layout_tag(layout, Some(tag))
}

// ------------------------------------------------------------------- debootstrap rootfs ----

static DEBIAN: Mutex<()> = Mutex::new(());

const DEBOOTSTRAP_SCRIPT: &str = r#"
set -u
base=$1
cd "$base" || exit 1
if [ ! -e rootfs.complete ]; then
    grep -o " $base/rootfs.partial[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
    rm -rf --one-file-system rootfs.partial
    echo "[ferry e2e] debootstrap --variant=minbase bookworm (one time, a few minutes, ~40 MB download)" >&2
    if ! debootstrap --variant=minbase bookworm rootfs.partial http://deb.debian.org/debian > debootstrap.log 2>&1; then
        exit 42
    fi
    rm -rf --one-file-system rootfs
    mv rootfs.partial rootfs && touch rootfs.complete || exit 1
fi
if [ ! -e layer.complete ]; then
    tar --numeric-owner --sort=name --xattrs --xattrs-include='*' --format=pax \
        --exclude='./var/cache/apt/archives/*.deb' -C rootfs -cf layer.tar . || exit 1
    sha256sum < layer.tar | cut -d' ' -f1 > layer.diffid || exit 1
    gzip -6 -n -c layer.tar > layer.tar.gz || exit 1
    rm -f layer.tar
    touch layer.complete
fi
"#;

/// Markers in debootstrap's log that mean "the mirror could not be reached".
const NETWORK_ERRORS: [&str; 9] = [
    "failed getting release file",
    "couldn't download",
    "temporary failure in name resolution",
    "could not resolve",
    "unable to resolve",
    "network is unreachable",
    "connection refused",
    "connection timed out",
    "no route to host",
];

/// The debootstrap (bookworm, minbase) rootfs as a one-gzip-layer OCI layout (tag `latest`, cmd
/// /bin/sh), built once and cached; `None` when debootstrap could not reach the network.
pub fn debian_image() -> Option<TestImage> {
    require_binary("debootstrap", "debootstrap");
    require_binary("flock", "util-linux");
    let _guard = DEBIAN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let base = fixtures_dir().join("debian-bookworm-minbase");
    std::fs::create_dir_all(&base).expect("create fixtures dir");
    let lock = fixtures_dir().join("debian-bookworm-minbase.lock");
    let out = run_cmd(
        Command::new("flock").args(["-w", "3600"]).arg(&lock).args(["sh", "-c", DEBOOTSTRAP_SCRIPT, "sh"]).arg(&base),
        Duration::from_secs(3600),
    );
    if !out.success {
        let log = std::fs::read_to_string(base.join("debootstrap.log")).unwrap_or_default();
        let tail: String = log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        let lower = log.to_lowercase();
        if NETWORK_ERRORS.iter().any(|m| lower.contains(m)) {
            eprintln!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !!! SKIPPED: debootstrap could not reach deb.debian.org; the Debian rootfs test\n\
                 !!! did NOT run. Log tail ({}):\n{tail}\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n",
                base.join("debootstrap.log").display()
            );
            return None;
        }
        panic!("building the Debian fixture in {} failed:\n{}\n{}\ndebootstrap.log tail:\n{tail}", base.display(), out.stdout, out.stderr);
    }
    let layout = base.join("layout");
    if !base.join("layout.complete").exists() {
        let diff_id = std::fs::read_to_string(base.join("layer.diffid")).expect("read layer.diffid");
        let layer = LayerFile {
            blob: base.join("layer.tar.gz"),
            media_type: GZIP_LAYER.to_string(),
            diff_id: format!("sha256:{}", diff_id.trim()),
        };
        let _ = std::fs::remove_dir_all(&layout);
        write_layout(&layout, "latest", &[layer], &["/bin/bash"], &["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]);
        std::fs::write(base.join("layout.complete"), b"").expect("mark layout complete");
    }
    Some(read_layout_tag(&layout, Some("latest")))
}

// ------------------------------------------------------------------------ tricky image ----

/// File names longer than 100 bytes (the ustar name field).
pub fn long_name() -> String {
    format!("{}-end", "n".repeat(120))
}

/// Builds `DIR/layout` (tag `latest`) with three layers full of edge cases (see the module
/// docs). The merged rootfs: /etc/ferry-e2e is "tricky layer 3", /data/foo is whited out and
/// /opaque holds only `new-file`. Needs root.
pub fn build_tricky(dir: &Path) -> TestImage {
    for (bin, package) in [("setfattr", "attr"), ("mkfifo", "coreutils"), ("zstd", "zstd")] {
        require_binary(bin, package);
    }
    let busybox = Path::new("/bin/busybox");
    assert!(busybox.is_file(), "/bin/busybox is missing; run `apt-get install -y busybox-static`");
    let write = |path: &Path, data: &[u8]| {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("create parent dir");
        std::fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    };
    let chmod = |path: &Path, mode: &str| sh(r#"chmod "$1" "$2""#, &[mode, &path.to_string_lossy()]);
    let chown = |path: &Path, owner: &str| sh(r#"chown -h "$1" "$2""#, &[owner, &path.to_string_lossy()]);
    let symlink = |target: &str, path: &Path| std::os::unix::fs::symlink(target, path).expect("symlink");

    // Layer 1: gzip, GNU tar format (././@LongLink for long names and link targets).
    let l1 = dir.join("l1");
    write(&l1.join("bin/busybox"), &std::fs::read(busybox).expect("read busybox"));
    chmod(&l1.join("bin/busybox"), "0755");
    symlink("busybox", &l1.join("bin/sh"));
    write(&l1.join("etc/ferry-e2e"), b"tricky layer 1\n");
    let d = l1.join("data");
    write(&d.join("empty-a"), b"");
    write(&d.join("empty-b"), b"");
    write(&d.join("big-5MiB"), &random_bytes(42, 5 << 20));
    write(&d.join("same-1"), b"hello\n");
    write(&d.join("same-2"), b"hello\n");
    write(&d.join("hardlink-target"), b"linked content\n");
    std::fs::hard_link(d.join("hardlink-target"), d.join("hardlink-alias")).expect("hard link");
    symlink("hardlink-target", &d.join("link-rel"));
    symlink("/etc/ferry-e2e", &d.join("link-abs"));
    symlink("/does/not/exist", &d.join("link-dangling"));
    symlink("../bin", &d.join("link-dir"));
    write(&d.join("suid"), b"#!/bin/sh\necho suid\n");
    chmod(&d.join("suid"), "4755");
    write(&d.join("sgid"), b"sgid\n");
    chmod(&d.join("sgid"), "2711");
    std::fs::create_dir_all(d.join("sgid-dir")).expect("mkdir");
    chmod(&d.join("sgid-dir"), "2775");
    std::fs::create_dir_all(d.join("sticky-dir")).expect("mkdir");
    chmod(&d.join("sticky-dir"), "1777");
    write(&d.join("no-perms"), b"nobody may read this\n");
    chmod(&d.join("no-perms"), "0000");
    sh(r#"mkfifo -m 0640 "$1""#, &[&d.join("fifo").to_string_lossy()]);
    write(&d.join("owned"), b"owned by 1000:2000\n");
    chmod(&d.join("owned"), "0600");
    chown(&d.join("owned"), "1000:2000");
    write(&d.join("owned-dir/inner"), b"inner\n");
    chown(&d.join("owned-dir/inner"), "1000:2000");
    chmod(&d.join("owned-dir"), "0750");
    chown(&d.join("owned-dir"), "1000:2000");
    symlink("hardlink-target", &d.join("owned-link"));
    chown(&d.join("owned-link"), "1000:2000");
    write(&d.join("foo"), b"whited out by layer 2\n");
    write(&d.join("\u{fc}n\u{ef}c\u{f6}d\u{e9}-\u{444}\u{430}\u{439}\u{43b}.txt"), b"utf-8 name\n");
    write(&l1.join("opaque/old-file"), b"hidden by the opaque marker\n");
    write(&l1.join("opaque/old-dir/old-inner"), b"hidden too\n");
    let long = long_name();
    write(&l1.join("long").join(&long), b"a file whose name is over 100 bytes\n");
    let deep = l1.join("long").join("d".repeat(60)).join("e".repeat(60)).join("f".repeat(60));
    write(&deep.join("deep-file"), b"a path over 155 bytes\n");
    symlink(&format!("../long/{long}"), &d.join("link-long-target"));
    std::fs::hard_link(l1.join("long").join(&long), d.join("hardlink-to-long")).expect("hard link to long name");
    let l1_tar = dir.join("layer1.tar");
    pack_tar(&l1, &l1_tar, "gnu");

    // Layer 2: zstd, PAX format: xattrs, whiteouts, an opaque dir, a huge uid, long PAX names.
    let l2 = dir.join("l2");
    let d = l2.join("data");
    write(&d.join("xattr-file"), b"has xattrs\n");
    sh(r#"setfattr -n user.ferry.note -v zstd-chunked "$1" && setfattr -n user.empty "$1""#, &[&d.join("xattr-file").to_string_lossy()]);
    std::fs::create_dir_all(d.join("xattr-dir")).expect("mkdir");
    sh(r#"setfattr -n user.dir -v 0x00ff10 "$1""#, &[&d.join("xattr-dir").to_string_lossy()]);
    write(&d.join(".wh.foo"), b"");
    write(&l2.join("opaque/.wh..wh..opq"), b"");
    write(&l2.join("opaque/new-file"), b"the only file left in /opaque\n");
    write(&d.join("zeros-2MiB"), &vec![0u8; 2 << 20]);
    write(&d.join("big-uid"), b"uid and gid over the octal field limit\n");
    chown(&d.join("big-uid"), "3000000:3000000");
    write(&l2.join("pax").join(format!("{}.txt", "p".repeat(200))), b"a 200-byte name in a PAX record\n");
    let l2_tar = dir.join("layer2.tar");
    pack_tar(&l2, &l2_tar, "pax");

    // Layer 3: uncompressed tar; overrides a file of layer 1.
    let l3 = dir.join("l3");
    write(&l3.join("etc/ferry-e2e"), b"tricky layer 3\n");
    write(&l3.join("etc/layer3"), b"3\n");
    let l3_tar = dir.join("layer3.tar");
    pack_tar(&l3, &l3_tar, "gnu");

    let layers = [compress_layer(&l1_tar, GZIP_LAYER), compress_layer(&l2_tar, ZSTD_LAYER), compress_layer(&l3_tar, TAR_LAYER)];
    write_layout(&dir.join("layout"), "latest", &layers, &["/bin/sh"], &["PATH=/bin"])
}

// ----------------------------------------------------------------- comparing contents ----

/// The uncompressed tar of a layer blob, by media type, with the stock tools (gzip, zstd).
pub fn decompress_layer(blob: &Path, media_type: &str, out: &Path) {
    let (blob_s, out_s) = (blob.to_string_lossy().to_string(), out.to_string_lossy().to_string());
    match media_type {
        m if m.ends_with("+gzip") || m.ends_with(".tar.gzip") => sh(r#"gzip -dc < "$1" > "$2""#, &[&blob_s, &out_s]),
        m if m.ends_with("+zstd") => sh(r#"zstd -d -q -c < "$1" > "$2""#, &[&blob_s, &out_s]),
        m if m.ends_with(".tar") => sh(r#"cp "$1" "$2""#, &[&blob_s, &out_s]),
        other => panic!("unknown layer media type {other}"),
    };
}

/// `tar --numeric-owner -tvf TAR`, sorted: type, mode, owner, size, mtime, name, link target.
pub fn tar_listing(tar: &Path) -> Vec<String> {
    let out = sh(r#"tar --numeric-owner -tvf "$1""#, &[&tar.to_string_lossy()]);
    let mut lines: Vec<String> = out.lines().map(normalize_tv_line).collect();
    lines.sort();
    lines
}

/// Collapses spaces and writes member names (and hardlink targets, which are member names too)
/// without `./` and trailing `/`, so that `./etc/` and `etc` compare equal; symlink targets are
/// kept verbatim.
fn normalize_tv_line(line: &str) -> String {
    let tokens: Vec<&str> = line.split_whitespace().collect();
    if tokens.len() < 6 {
        return tokens.join(" ");
    }
    let head = tokens[..5].join(" ");
    let rest = tokens[5..].join(" ");
    let name = |n: &str| {
        let n = clean_name(n);
        if n.is_empty() {
            ".".to_string()
        } else {
            n
        }
    };
    let rest = if let Some((n, target)) = rest.split_once(" link to ") {
        format!("{} link to {}", name(n), name(target))
    } else if let Some((n, target)) = rest.split_once(" -> ") {
        format!("{} -> {target}", name(n))
    } else {
        name(&rest)
    };
    format!("{head} {rest}")
}

/// Entry names of `tar`, in archive order, without a leading `./` (the root `./` dropped).
pub fn tar_names(tar: &Path) -> Vec<String> {
    sh(r#"tar -tf "$1""#, &[&tar.to_string_lossy()]).lines().map(clean_name).filter(|n| !n.is_empty()).collect()
}

/// `./a/b/` → `a/b`.
pub fn clean_name(name: &str) -> String {
    let name = name.trim_start_matches("./").trim_start_matches('/').trim_end_matches('/');
    if name == "." {
        String::new()
    } else {
        name.to_string()
    }
}

/// Extracts `tar` into `dir` as root, keeping owners, modes and xattrs.
pub fn extract_tar(tar: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).expect("create extraction dir");
    sh(
        r#"tar --numeric-owner --same-owner -p --xattrs --xattrs-include='*' -xf "$1" -C "$2""#,
        &[&tar.to_string_lossy(), &dir.to_string_lossy()],
    );
}

/// One entry of a tree listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    pub path: String,
    /// find's `%y`: f d l p c b s.
    pub kind: char,
    /// Octal mode including setuid/setgid/sticky.
    pub mode: String,
    pub uid: u64,
    pub gid: u64,
    /// Hard link count (not for directories: that depends on the file system).
    pub nlink: Option<u64>,
    pub link_target: String,
    pub sha256: Option<String>,
    /// `name=value` (hex), sorted; overlay's and SELinux's own attributes left out.
    pub xattrs: Vec<String>,
}

impl fmt::Display for TreeEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {} {}:{}", self.path, self.kind, self.mode, self.uid, self.gid)?;
        if let Some(n) = self.nlink {
            write!(f, " nlink={n}")?;
        }
        if !self.link_target.is_empty() {
            write!(f, " -> {}", self.link_target)?;
        }
        if let Some(sha) = &self.sha256 {
            write!(f, " sha256={sha}")?;
        }
        if !self.xattrs.is_empty() {
            write!(f, " xattrs=[{}]", self.xattrs.join(","))?;
        }
        Ok(())
    }
}

const LIST_SCRIPT: &str = r#"
set -e
cd "$1"
find . -printf '%y\t%#m\t%U\t%G\t%n\t%p\t%l\n' > "$2/entries"
find . -type f -print0 | xargs -0r sha256sum > "$2/sums"
getfattr -h -R -d -m - -e hex . > "$2/xattrs" 2>/dev/null || true
"#;

/// Lists every entry under `dir` (paths relative, without `./`; the root is ``).
pub fn tree_listing(dir: &Path) -> Vec<TreeEntry> {
    require_binary("getfattr", "attr");
    let scratch = tempfile::tempdir().expect("scratch dir");
    sh(LIST_SCRIPT, &[&dir.to_string_lossy(), &scratch.path().to_string_lossy()]);
    let read = |name: &str| std::fs::read_to_string(scratch.path().join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"));
    let mut sums = BTreeMap::new();
    for line in read("sums").lines() {
        let (hex, path) = line.split_once("  ").unwrap_or_else(|| panic!("bad sha256sum line {line:?}"));
        sums.insert(clean_name(path), hex.to_string());
    }
    let mut xattrs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = String::new();
    for line in read("xattrs").lines() {
        if let Some(path) = line.strip_prefix("# file: ") {
            current = clean_name(path);
        } else if let Some((name, value)) = line.split_once('=') {
            if !name.starts_with("trusted.overlay.") && name != "security.selinux" {
                // An empty value is `0x` (or `""`): written as nothing, like a value-less line.
                let value = if value == "0x" || value == "\"\"" { "" } else { value };
                xattrs.entry(current.clone()).or_default().push(format!("{name}={value}"));
            }
        } else if !line.is_empty() {
            // An attribute without a value (empty).
            xattrs.entry(current.clone()).or_default().push(format!("{line}="));
        }
    }
    let mut entries: Vec<TreeEntry> = read("entries")
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.splitn(7, '\t').collect();
            assert_eq!(f.len(), 7, "bad find line {line:?}");
            let kind = f[0].chars().next().expect("type");
            let path = clean_name(f[5]);
            let mut attrs = xattrs.remove(&path).unwrap_or_default();
            attrs.sort();
            TreeEntry {
                kind,
                mode: f[1].to_string(),
                uid: f[2].parse().expect("uid"),
                gid: f[3].parse().expect("gid"),
                nlink: (kind != 'd').then(|| f[4].parse().expect("nlink")),
                link_target: f[6].to_string(),
                sha256: sums.get(&path).cloned(),
                xattrs: attrs,
                path,
            }
        })
        .collect();
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    entries
}

/// Panics, showing up to 40 differing lines of each side, unless `left` and `right` are equal.
pub fn assert_same_lines(what: &str, left_name: &str, left: &[String], right_name: &str, right: &[String]) {
    if left == right {
        return;
    }
    let only_left: Vec<&String> = left.iter().filter(|l| !right.contains(l)).take(40).collect();
    let only_right: Vec<&String> = right.iter().filter(|l| !left.contains(l)).take(40).collect();
    panic!(
        "{what}: {left_name} ({} lines) and {right_name} ({} lines) differ\n--- only in {left_name}:\n{}\n--- only in {right_name}:\n{}",
        left.len(),
        right.len(),
        only_left.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
        only_right.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
    );
}

/// [`tree_listing`] as lines.
pub fn tree_lines(dir: &Path) -> Vec<String> {
    tree_listing(dir).iter().map(ToString::to_string).collect()
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())))
        .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

//! Test content for the upstream registry: a small busybox image built with `umoci` (an OCI
//! layout whose rootfs holds busybox-static), pushed with `skopeo copy`; and raw blobs of
//! pseudo-random bytes pushed through the registry's upload API (POST, then PUT `?digest=`),
//! for range, coalescing, crash and corruption tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::registry::{Registry, RegistryAuth};
use super::token::SERVICE;
use super::{digest_of, require_binary, run_ok};

/// A content descriptor: digest and size.
#[derive(Debug, Clone, PartialEq)]
pub struct Descriptor {
    pub digest: String,
    pub size: u64,
}

/// An image in an OCI layout on disk.
#[derive(Debug, Clone)]
pub struct TestImage {
    pub layout: PathBuf,
    pub manifest_digest: String,
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

impl TestImage {
    /// Config and layers: every blob the manifest references.
    pub fn blobs(&self) -> Vec<Descriptor> {
        let mut all = vec![self.config.clone()];
        all.extend(self.layers.iter().cloned());
        all
    }
}

/// Builds `DIR/layout` holding `busybox:latest`: busybox-static as /bin/busybox, /bin/sh a
/// symlink to it, a marker file `/etc/ferry-e2e` with `marker`, cmd /bin/sh, PATH=/bin.
pub fn build_busybox(dir: &Path, marker: &str) -> TestImage {
    build_busybox_with(dir, marker, &[])
}

/// [`build_busybox`] with more files: `(path in the rootfs, content)`.
pub fn build_busybox_with(dir: &Path, marker: &str, files: &[(&str, &[u8])]) -> TestImage {
    require_binary("umoci", "umoci");
    let busybox = Path::new("/bin/busybox");
    assert!(busybox.is_file(), "/bin/busybox is missing; run `apt-get install -y busybox-static`");
    let layout = dir.join("layout");
    let bundle = dir.join("bundle");
    let image = format!("{}:latest", layout.display());
    let t = Duration::from_secs(60);
    run_ok(Command::new("umoci").args(["init", "--layout"]).arg(&layout), t);
    run_ok(Command::new("umoci").args(["new", "--image", &image]), t);
    run_ok(Command::new("umoci").args(["unpack", "--rootless", "--image", &image]).arg(&bundle), t);
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).expect("mkdir rootfs/bin");
    std::fs::create_dir_all(rootfs.join("etc")).expect("mkdir rootfs/etc");
    std::fs::copy(busybox, rootfs.join("bin/busybox")).expect("copy busybox");
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).expect("symlink sh");
    std::fs::write(rootfs.join("etc/ferry-e2e"), marker).expect("write marker");
    for (path, content) in files {
        let path = rootfs.join(path);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(&path, content).expect("write a file");
    }
    run_ok(Command::new("umoci").args(["repack", "--image", &image]).arg(&bundle), t);
    run_ok(Command::new("umoci").args(["config", "--image", &image, "--config.cmd", "/bin/sh", "--config.env", "PATH=/bin"]), t);
    read_layout(&layout)
}

fn read_layout(layout: &Path) -> TestImage {
    read_layout_tag(layout, None)
}

/// Reads the image tagged `tag` (the index entry whose `org.opencontainers.image.ref.name` is
/// `tag`) from an OCI layout, or its first image when `tag` is `None`.
pub fn read_layout_tag(layout: &Path, tag: Option<&str>) -> TestImage {
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("read index.json")).expect("parse index.json");
    let entry = match tag {
        None => &index["manifests"][0],
        Some(tag) => index["manifests"]
            .as_array()
            .and_then(|all| all.iter().find(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(tag)))
            .unwrap_or_else(|| panic!("no image tagged {tag:?} in {}/index.json: {index}", layout.display())),
    };
    let manifest_digest = entry["digest"].as_str().expect("manifest digest in index").to_string();
    let media_type = entry["mediaType"].as_str().expect("manifest media type").to_string();
    let hex = manifest_digest.trim_start_matches("sha256:");
    let manifest = std::fs::read(layout.join("blobs/sha256").join(hex)).expect("read manifest");
    let parsed: Value = serde_json::from_slice(&manifest).expect("parse manifest");
    let descriptor = |v: &Value| Descriptor {
        digest: v["digest"].as_str().expect("descriptor digest").to_string(),
        size: v["size"].as_u64().expect("descriptor size"),
    };
    TestImage {
        layout: layout.to_path_buf(),
        manifest_digest,
        media_type,
        config: descriptor(&parsed["config"]),
        layers: parsed["layers"].as_array().expect("layers").iter().map(descriptor).collect(),
    }
}

/// Pushes `image` to `registry` as `reference` (`repo:tag`) with skopeo.
pub fn push(image: &TestImage, registry: &Registry, reference: &str) {
    push_tag(image, "latest", registry, reference);
}

/// Pushes the image tagged `tag` in `image.layout` to `registry` as `reference` with skopeo.
pub fn push_tag(image: &TestImage, tag: &str, registry: &Registry, reference: &str) {
    require_binary("skopeo", "skopeo");
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--quiet", "--retry-times", "2"]);
    match &registry.cert_dir {
        Some(dir) => {
            cmd.arg("--dest-cert-dir").arg(dir);
        }
        None => {
            cmd.arg("--dest-tls-verify=false");
        }
    }
    if let Some((user, password)) = registry.credentials() {
        cmd.arg("--dest-creds").arg(format!("{user}:{password}"));
    }
    cmd.arg(format!("oci:{}:{tag}", image.layout.display()));
    cmd.arg(format!("docker://{}/{reference}", registry.host_port()));
    run_ok(&mut cmd, Duration::from_secs(120));
}

/// Adds the registry's credentials (basic, or a bearer token with push+pull on `repo`).
async fn authorize(registry: &Registry, request: reqwest::RequestBuilder, repo: &str) -> reqwest::RequestBuilder {
    match &registry.auth {
        RegistryAuth::None => request,
        RegistryAuth::Basic { user, password } => request.basic_auth(user, Some(password)),
        RegistryAuth::Token { user, password } => {
            let realm = registry.token_server.as_ref().expect("token server").realm();
            let reply: Value = super::http_client()
                .get(realm)
                .query(&[("service", SERVICE), ("scope", &format!("repository:{repo}:pull,push"))])
                .basic_auth(user, Some(password))
                .send()
                .await
                .expect("ask token server")
                .json()
                .await
                .expect("token reply json");
            request.bearer_auth(reply["token"].as_str().expect("token in reply"))
        }
    }
}

/// Pushes `data` as a blob of `repo` (monolithic upload) and returns its digest.
pub async fn push_blob(registry: &Registry, repo: &str, data: &[u8]) -> String {
    let digest = digest_of(data);
    let client = registry.client();
    let start = authorize(registry, client.post(format!("{}/v2/{repo}/blobs/uploads/", registry.url())), repo).await;
    let reply = start.send().await.expect("start blob upload");
    assert_eq!(reply.status().as_u16(), 202, "start upload: {:?}", reply.text().await);
    let location = reply.headers().get("location").and_then(|v| v.to_str().ok()).expect("upload Location header").to_string();
    let location = if location.starts_with("http") { location } else { format!("{}{location}", registry.url()) };
    let separator = if location.contains('?') { '&' } else { '?' };
    let put =
        client.put(format!("{location}{separator}digest={digest}")).header("content-type", "application/octet-stream").body(data.to_vec());
    let reply = authorize(registry, put, repo).await.send().await.expect("finish blob upload");
    assert_eq!(reply.status().as_u16(), 201, "finish upload: {:?}", reply.text().await);
    digest
}

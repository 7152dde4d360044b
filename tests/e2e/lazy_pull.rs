//! `ferry pull` into a sandboxed containerd with the ferry snapshotter, then `ctr run`: lazy
//! layers (ferry's zstd:chunked, ctr-remote's eStargz and zstd:chunked) are mounted through FUSE
//! and fetched only as read; a plain gzip image is downloaded and unpacked instead.

use std::process::Command;
use std::time::Duration;

use crate::harness::containerd::Containerd;
use crate::harness::ferry::{FerryNode, FerryOptions, FERRY_BIN};
use crate::harness::image::{build_busybox, build_busybox_with, push};
use crate::harness::oci::{get_json, manifest_url};
use crate::harness::registry::Registry;
use crate::harness::{random_bytes, run_cmd, temp_dir};

/// A node with the snapshotter on (background prefetch off when `prefetch` is false, so what
/// is fetched is exactly what containers read) and a containerd that has it as `ferry`.
async fn node_and_containerd(registry: &Registry, work: &std::path::Path, prefetch: bool) -> (FerryNode, Containerd) {
    let socket = work.join("snapshotter.sock");
    let config = work.join("ferry.toml");
    let rate = if prefetch { "50MiB" } else { "off" };
    std::fs::write(&config, format!("[snapshotter]\nprefetch_rate = \"{rate}\"\n")).expect("write config");
    let mut options = FerryOptions::upstream("registry.local", &registry.url());
    options.extra_args = vec!["--config".into(), config.display().to_string(), "--snapshotter-socket".into(), socket.display().to_string()];
    let ferry = FerryNode::start(options).await;
    let containerd = Containerd::start_with_snapshotter(&socket).await;
    (ferry, containerd)
}

/// A registry holding a busybox image with `files` as `REPO:src`, and converted as `REPO:chunked`.
pub(crate) async fn converted_busybox(work: &std::path::Path, marker: &str, files: &[(&str, &[u8])], repo: &str) -> Registry {
    let registry = Registry::plain().await;
    let image = build_busybox_with(work, marker, files);
    push(&image, &registry, &format!("{repo}:src"));
    let host = registry.host_port();
    convert(&format!("{host}/{repo}:src"), &format!("{host}/{repo}:chunked"));
    registry
}

fn convert(src: &str, dst: &str) {
    let out = run_cmd(Command::new(FERRY_BIN).args(["convert", src, dst]), Duration::from_secs(120));
    assert!(out.success, "ferry convert: {}\n{}", out.stdout, out.stderr);
}

/// `ferry pull --output json` through `ferry`'s mirror; returns each layer's outcome.
pub(crate) fn ferry_pull(ferry: &FerryNode, containerd: &Containerd, image: &str) -> Vec<String> {
    pull_through(&ferry.registry_addr, containerd, image).unwrap_or_else(|e| panic!("{e}\n{}", ferry.log()))
}

/// `ferry pull --output json` through the mirror at `mirror`: each layer's outcome, or what
/// `ferry pull` said.
pub(crate) fn pull_through(mirror: &str, containerd: &Containerd, image: &str) -> Result<Vec<String>, String> {
    let out = run_cmd(
        Command::new(FERRY_BIN)
            .args(["pull", image, "--registry-listen", mirror, "--output", "json"])
            .arg("--address")
            .arg(containerd.socket()),
        Duration::from_secs(120),
    );
    if !out.success {
        return Err(format!("ferry pull {image}: {}\n{}", out.stdout, out.stderr));
    }
    let report: serde_json::Value = serde_json::from_str(&out.stdout).expect("the pull report is JSON");
    Ok(report["layers"].as_array().expect("layers").iter().map(|l| l["outcome"].as_str().expect("outcome").to_string()).collect())
}

pub(crate) fn run(containerd: &Containerd, image: &str, id: &str, cmd: &[&str]) -> String {
    containerd.run_with(image, id, cmd, Some("ferry")).unwrap_or_else(|e| panic!("{e}\n{}", containerd.log()))
}

fn fuse_mounts() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| l.contains(" - fuse") && l.contains("/snapshotter/snapshots/"))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_converted_image_runs_after_fetching_a_small_part_of_its_layer() {
    let work = temp_dir("lazy-pull");
    let model = random_bytes(7, 24 << 20);
    let registry = converted_busybox(work.path(), "lazy and running", &[("opt/model.bin", &model)], "test/lazy").await;
    let (ferry, containerd) = node_and_containerd(&registry, work.path(), false).await;
    let before_mounts = fuse_mounts();

    let reference = "registry.local/test/lazy:chunked";
    assert_eq!(ferry_pull(&ferry, &containerd, reference), ["lazy"], "the one layer is mounted, not downloaded");
    assert_eq!(run(&containerd, reference, "lazy-1", &["/bin/busybox", "cat", "/etc/ferry-e2e"]).trim(), "lazy and running");
    assert!(fuse_mounts() > before_mounts, "the layer is a FUSE mount");

    registry.settle_log().await;
    let layer = &registry_layers(&registry, "test/lazy", "chunked").await[0];
    let fetched: u64 = registry.served_blob_gets("test/lazy", &layer.0).iter().map(|l| l.bytes).sum();
    eprintln!("fetched {fetched} of the {}-byte layer to run `cat`", layer.1);
    assert!(fetched > 0, "the container's reads went to the origin");
    assert!(fetched * 4 < layer.1, "running `cat` fetched {fetched} of {} bytes: the model file was read too", layer.1);
    assert_eq!(ferry.metric("ferry_lazy_layers_mounted", &[]).await, 1.0);
    let on_demand = ferry.metric("ferry_lazy_fetched_bytes_total", &[]).await;
    assert!(on_demand > 0.0 && on_demand <= fetched as f64, "on-demand bytes {on_demand} vs {fetched} from the origin");
    let table = crate::harness::run_ok(
        Command::new(FERRY_BIN).args(["status", "--admin-socket"]).arg(ferry.admin_socket()),
        Duration::from_secs(10),
    );
    assert!(table.contains("lazy       1 layers mounted"), "ferry status shows the lazy layer:\n{table}");

    // Reading the model through the container gives its bytes; the sum is the digest check.
    let sum = run(&containerd, reference, "lazy-2", &["/bin/busybox", "sha256sum", "/opt/model.bin"]);
    assert_eq!(sum.split_whitespace().next(), Some(crate::harness::sha256_hex(&model).as_str()));
    let cached = ferry.metric("ferry_lazy_cache_bytes", &[]).await;
    assert!(cached >= model.len() as f64, "the chunks read are kept on disk and counted: {cached} bytes");

    // Removing the image lets containerd's GC remove the snapshots, and the mount with them.
    containerd.remove_image(reference);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while fuse_mounts() > before_mounts || ferry.metric("ferry_lazy_cache_bytes", &[]).await > 0.0 {
        assert!(std::time::Instant::now() < deadline, "the FUSE mount or its counted cache outlived the image");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `(digest, size)` of each layer of `repo:tag`, read from the registry.
pub(crate) async fn registry_layers(registry: &Registry, repo: &str, tag: &str) -> Vec<(String, u64)> {
    let manifest = get_json(&manifest_url(&registry.url(), repo, tag)).await;
    manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| (l["digest"].as_str().expect("digest").to_string(), l["size"].as_u64().expect("size")))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gzip_image_is_downloaded_and_unpacked_and_pulls_again_as_present() {
    let registry = Registry::plain().await;
    let work = temp_dir("lazy-pull-gzip");
    let image = build_busybox(work.path(), "plain gzip");
    push(&image, &registry, "test/plain:latest");
    let (ferry, containerd) = node_and_containerd(&registry, work.path(), true).await;
    let reference = "registry.local/test/plain:latest";
    assert_eq!(ferry_pull(&ferry, &containerd, reference), vec!["unpacked"; image.layers.len()]);
    assert_eq!(run(&containerd, reference, "plain-1", &["/bin/busybox", "cat", "/etc/ferry-e2e"]).trim(), "plain gzip");
    assert_eq!(ferry_pull(&ferry, &containerd, reference), vec!["present"; image.layers.len()], "a second pull finds the snapshots");
    let not_lazy = ferry.metric("ferry_lazy_fallbacks_total", &[("reason", "not_lazy")]).await;
    assert_eq!(not_lazy, image.layers.len() as f64, "each unpacked layer is counted with its reason");
    assert_eq!(ferry.metric("ferry_lazy_layers_mounted", &[]).await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn ctr_remote_images_run_lazily() {
    crate::harness::require_binary("ctr-remote", "stargz-snapshotter");
    let registry = Registry::plain().await;
    let work = temp_dir("lazy-pull-ctr-remote");
    let image = build_busybox(work.path(), "written by ctr-remote");
    push(&image, &registry, "test/third:src");
    let (ferry, containerd) = node_and_containerd(&registry, work.path(), true).await;
    let host = registry.host_port();
    let source = format!("{host}/test/third:src");
    let ok = |out: crate::harness::CmdOutput, what: &str| assert!(out.success, "{what}: {}\n{}", out.stdout, out.stderr);
    ok(containerd.ctr(&["content", "fetch", "--plain-http", &source], Duration::from_secs(60)), "ctr content fetch");
    for (format, flag) in [("estargz", "--estargz"), ("zstdchunked", "--zstdchunked")] {
        let converted = format!("{host}/test/third:{format}");
        let mut convert = Command::new("ctr-remote");
        convert.arg("-a").arg(containerd.socket()).args(["image", "convert", "--oci", flag, &source, &converted]);
        ok(run_cmd(&mut convert, Duration::from_secs(120)), "ctr-remote image convert");
        ok(containerd.ctr(&["image", "push", "--plain-http", &converted, &converted], Duration::from_secs(60)), "ctr image push");
        let reference = format!("registry.local/test/third:{format}");
        let outcomes = ferry_pull(&ferry, &containerd, &reference);
        assert_eq!(outcomes, vec!["lazy"; image.layers.len()], "{format}");
        let out = run(&containerd, &reference, &format!("third-{format}"), &["/bin/busybox", "cat", "/etc/ferry-e2e"]);
        assert_eq!(out.trim(), "written by ctr-remote", "{format}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ferry_profile_records_what_a_command_reads_in_order_for_convert() {
    let work = temp_dir("lazy-profile");
    let model = random_bytes(11, 6 << 20);
    let other = random_bytes(12, 2 << 20);
    let files: &[(&str, &[u8])] = &[("opt/model.bin", &model), ("opt/other.bin", &other)];
    let registry = converted_busybox(work.path(), "profiled", files, "test/prof").await;
    let host = registry.host_port();
    let (ferry, containerd) = node_and_containerd(&registry, work.path(), false).await;
    ferry_pull(&ferry, &containerd, "registry.local/test/prof:chunked");

    let out_file = work.path().join("startup.txt");
    let out = run_cmd(
        Command::new(FERRY_BIN)
            .args(["profile", "registry.local/test/prof:chunked", "--registry-listen", &ferry.registry_addr, "-o"])
            .arg(&out_file)
            .arg("--address")
            .arg(containerd.socket())
            .args(["--", "/bin/busybox", "sh", "-c", "cat /etc/ferry-e2e; busybox tail -c 100 /opt/model.bin > /dev/null"]),
        Duration::from_secs(120),
    );
    assert!(out.success, "ferry profile: {}\n{}\n{}", out.stdout, out.stderr, ferry.log());
    let text = std::fs::read_to_string(&out_file).expect("the profile file");
    let lines: Vec<(&str, u64, u64)> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0], f[1].parse().expect("offset"), f[2].parse().expect("length"))
        })
        .collect();
    let names: Vec<&str> = lines.iter().map(|l| l.0).collect();
    assert_eq!(names.first(), Some(&"bin/busybox"), "the executable is read first: {text}\n{}", out.stderr);
    let pos = |n: &str| names.iter().position(|x| *x == n).unwrap_or_else(|| panic!("{n} is not in the profile:\n{text}"));
    assert!(pos("etc/ferry-e2e") < pos("opt/model.bin"), "first-access order: {text}");
    assert!(!names.contains(&"opt/other.bin"), "a file nobody read is not in the profile: {text}");
    let model_ranges: Vec<_> = lines.iter().filter(|l| l.0 == "opt/model.bin").collect();
    assert!(
        model_ranges.iter().all(|l| l.1 + l.2 == model.len() as u64 && l.2 < model.len() as u64 / 2),
        "only the model's tail chunk was read: {model_ranges:?}"
    );

    // The profile is what `ferry convert --prioritize` takes.
    let mut again = Command::new(FERRY_BIN);
    again.args(["convert", &format!("{host}/test/prof:src"), &format!("{host}/test/prof:tuned"), "--prioritize"]).arg(&out_file);
    let converted = run_cmd(&mut again, Duration::from_secs(120));
    assert!(converted.success, "ferry convert --prioritize: {}\n{}", converted.stdout, converted.stderr);
}

/// What a container running on a lazy layer sees when the node is killed and restarted: the
/// restarted node mounts the layer again for new containers, but the running container's overlay
/// still stacks the old FUSE mount, whose daemon is gone. It must get errors, never wrong bytes,
/// never a hang; a new container reads everything. The outcome is printed (the README quotes it).
#[tokio::test(flavor = "multi_thread")]
async fn a_node_restart_under_a_running_lazy_container() {
    let work = temp_dir("lazy-restart");
    let a = random_bytes(21, 2 << 20);
    let b = random_bytes(22, 2 << 20);
    let registry = converted_busybox(work.path(), "restart", &[("opt/a.bin", &a), ("opt/b.bin", &b)], "test/restart").await;
    let (mut ferry, containerd) = node_and_containerd(&registry, work.path(), false).await;
    let reference = "registry.local/test/restart:chunked";
    ferry_pull(&ferry, &containerd, reference);

    let script = "sha256sum /opt/a.bin; sleep 5; sha256sum /opt/a.bin; sha256sum /opt/b.bin; ls /opt; echo end";
    let mut long = Command::new("ctr");
    long.arg("--address").arg(containerd.socket()).args(["run", "--rm", "--snapshotter", "ferry", reference, "restart-long"]);
    long.args(["/bin/busybox", "sh", "-c", script]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let long = long.spawn().expect("spawn ctr run");
    std::thread::sleep(Duration::from_secs(2));
    ferry.restart().await;
    let restarted = std::time::Instant::now();
    let out = long.wait_with_output().expect("ctr run");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("the running container across the restart (ended {:?} after it):\n{stdout}{stderr}", restarted.elapsed());
    assert!(restarted.elapsed() < Duration::from_secs(30), "the running container hung");
    let sum_a = crate::harness::sha256_hex(&a);
    let sum_b = crate::harness::sha256_hex(&b);
    for line in stdout.lines().filter(|l| l.contains("/opt/")) {
        let sum = line.split_whitespace().next().unwrap_or_default();
        assert!(sum == sum_a || sum == sum_b || !sum.chars().all(|c| c.is_ascii_hexdigit()), "wrong bytes: {line}");
    }
    assert!(stdout.lines().next().is_some_and(|l| l.starts_with(&sum_a)), "read before the restart: {stdout}");

    // New containers get the remounted layer and read everything.
    let both = run(&containerd, reference, "restart-new", &["/bin/busybox", "sha256sum", "/opt/a.bin", "/opt/b.bin"]);
    assert!(both.contains(&sum_a) && both.contains(&sum_b), "after the restart: {both}\n{}", ferry.log());
}

/// Bad input gets a clear error and changes nothing in containerd: an unknown image, a digest
/// that does not match what the registry sends, a reference without a registry, and profiling
/// an image whose layers are not lazy.
#[tokio::test(flavor = "multi_thread")]
async fn bad_pulls_and_profiles_fail_clearly_and_leave_nothing() {
    let registry = Registry::plain().await;
    let work = temp_dir("lazy-bad");
    let image = build_busybox(work.path(), "bad input");
    push(&image, &registry, "test/bad:latest");
    let (ferry, containerd) = node_and_containerd(&registry, work.path(), false).await;
    let attempt = |args: &[&str]| {
        let mut cmd = Command::new(FERRY_BIN);
        cmd.arg(args[0]).args(["--registry-listen", &ferry.registry_addr]).arg("--address").arg(containerd.socket()).args(&args[1..]);
        let out = run_cmd(&mut cmd, Duration::from_secs(60));
        assert!(!out.success, "{args:?} succeeded: {}", out.stdout);
        out.stderr
    };
    let unknown = attempt(&["pull", "registry.local/test/none:latest"]);
    assert!(unknown.contains("registry.local/test/none:latest") && unknown.contains("404"), "{unknown}");
    let wrong = format!("registry.local/test/bad@sha256:{}", "0".repeat(64));
    let mismatch = attempt(&["pull", &wrong]);
    assert!(mismatch.contains("sha256:000000"), "{mismatch}");
    let no_host = attempt(&["pull", "test/bad:latest"]);
    assert!(no_host.contains("name the registry host"), "{no_host}");
    let not_lazy = attempt(&["profile", "registry.local/test/bad:latest", "--", "/bin/true"]);
    assert!(not_lazy.contains("ferry convert"), "{not_lazy}");

    let images = containerd.ctr(&["image", "ls", "-q"], Duration::from_secs(20)).stdout;
    assert!(images.trim().is_empty(), "failed pulls left images: {images}");
    let snapshots = containerd.ctr(&["snapshot", "--snapshotter", "ferry", "ls"], Duration::from_secs(20)).stdout;
    assert_eq!(snapshots.lines().count(), 1, "failed pulls left snapshots: {snapshots}");
}

/// A lazy layer whose TOC does not match its manifest's checksum is not mounted: `ferry pull`
/// downloads and unpacks it instead, the container still runs, and the fallback is counted.
#[tokio::test(flavor = "multi_thread")]
async fn a_layer_whose_toc_fails_verification_is_unpacked_instead() {
    let work = temp_dir("lazy-bad-toc");
    let registry = converted_busybox(work.path(), "bad toc", &[], "test/badtoc").await;
    let url = |tag: &str| manifest_url(&registry.url(), "test/badtoc", tag);
    let mut manifest = get_json(&url("chunked")).await;
    let annotations = manifest["layers"][0]["annotations"].as_object_mut().expect("annotations");
    let key = "io.github.containers.zstd-chunked.manifest-checksum";
    assert!(annotations.contains_key(key), "a zstd:chunked layer: {annotations:?}");
    annotations.insert(key.to_string(), format!("sha256:{}", "1".repeat(64)).into());
    let mt = "application/vnd.oci.image.manifest.v1+json";
    let put = registry.client().put(url("tampered")).header("content-type", mt).body(manifest.to_string()).send().await.expect("PUT");
    assert!(put.status().is_success(), "{}", put.status());

    let (ferry, containerd) = node_and_containerd(&registry, work.path(), false).await;
    let reference = "registry.local/test/badtoc:tampered";
    assert_eq!(ferry_pull(&ferry, &containerd, reference), ["unpacked"]);
    assert_eq!(run(&containerd, reference, "badtoc", &["/bin/busybox", "cat", "/etc/ferry-e2e"]).trim(), "bad toc");
    assert_eq!(ferry.metric("ferry_lazy_fallbacks_total", &[("reason", "bad_toc")]).await, 1.0);
    assert_eq!(ferry.metric("ferry_lazy_layers_mounted", &[]).await, 0.0);
}
